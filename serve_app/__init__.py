"""serve_app: autoscaling multi-model inference on Ray Serve with weights on a mounted volume."""

__version__ = "0.1.0"
