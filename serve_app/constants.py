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
    # Serve names the resources an unplaceable replica needs only after a replica waited
    # this long and the last such warning is this old (defaults 30 s and 30 s); a single
    # machine has no autoscaler to wait for, so say it soon.
    "RAY_SERVE_SLOW_STARTUP_WARNING_S": "5",
    "RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S": "5",
}
"""Set (if unset) before a local Ray starts: nothing leaves 127.0.0.1."""

SERVE_RAY_ENV = {
    # Run user code on the replica's own event loop. Ray's default runs it on a second
    # loop in another thread, which costs two cross-thread hand-offs per request (body in,
    # response out). loadtest/bench/profile_serving.py at c=64 on 2 cores: the replicas'
    # event-loop CPU fell from 0.94-1.33 to 0.79 ms per request
    # (loadtest/results/profile/). Our replicas never block their loop: forwards and
    # large tokenizations run in worker threads.
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # The Serve controller's loop every 0.5 s instead of 0.1 s: each pass asks the GCS
    # for every node's resources, which is most of an idle cluster's control-plane CPU.
    # loadtest/bench/idle_ab.py, one-model config, 3 interleaved rounds on 2 cores
    # (loadtest/results/idle-ab/): idle 0.126 vs 0.154 cores (controller 0.019 vs 0.042,
    # GCS 0.009 vs 0.018), cold start 14.6 vs 16.3 s. Reactions (a deploy's next step,
    # an autoscaling decision) come up to 0.4 s later.
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
}
"""Ray settings of every serve_app cluster, local and RayService: read once when a
replica process starts, so they are process environment, not Serve config."""
