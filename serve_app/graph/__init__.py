"""Inference graphs: declaration (``spec``), structure and type checks, execution."""
