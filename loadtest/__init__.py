"""Load tests and scripted experiments against serve_app (run as ``python -m loadtest.<name>``)."""
