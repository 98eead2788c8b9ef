"""Environment variables serve_app reads, each read once, here and nowhere else."""

from __future__ import annotations

import os

DEFAULT_APP_CONFIG = os.environ.get("SERVE_APP_CONFIG", "configs/app.yaml")
"""The AppConfig file the CLI renders from."""

DEFAULT_SERVE_CONFIG = os.environ.get("SERVE_APP_SERVE_CONFIG", "configs/local.yaml")
"""The Serve config file the demo serves."""

LOCAL_RAY_ENV = {
    # Keep Ray's internal gRPC on loopback on Linux (otherwise it uses the routable IP).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Set (if unset) before a local Ray starts: nothing leaves 127.0.0.1."""
