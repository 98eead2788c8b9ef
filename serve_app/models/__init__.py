"""Model adapters: turn verified repository files into something that runs a batch."""

from serve_app.models.base import ModelAdapter, TensorSpec
from serve_app.models.registry import load_adapter

__all__ = ["ModelAdapter", "TensorSpec", "load_adapter"]
