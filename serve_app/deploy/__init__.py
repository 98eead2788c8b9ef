"""Deploying applications and following them until they serve.

``progress``: what Serve reports about applications, reduced to plain values, and a wait
that follows progress (replica states moving) instead of the clock. It imports nothing of
``serve_app`` and no Ray at import time, so every layer (the CLI, the demo, benchmarks,
tests) may use it.
"""
