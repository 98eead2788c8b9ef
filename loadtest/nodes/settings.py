"""What the node-autoscaling experiment varies, and the AppConfig it deploys."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.config import AppConfig

APP = "mlp-head"
DEPLOYMENT = "ModelDeployment"
WORKER_TYPE = "gpu-worker"


@dataclass(frozen=True)
class Settings:
    """Everything the experiment varies; written into the results."""

    load_s: float = 30.0
    concurrency: int = 16
    max_requests: int = 50_000
    request_timeout_s: float = 20.0
    stop_after_new_replica_s: float | None = None
    sample_interval_s: float = 0.5
    head_cpus: int = 0
    worker_cpus: int = 1
    worker_gpus: int = 1
    max_workers: int = 2
    idle_timeout_minutes: float = 0.1
    autoscaler_v2: bool = True
    replica_cpus: float = 0.5
    replica_gpus: float = 0.5
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 0.5
    downscale_delay_s: float = 3.0
    metrics_interval_s: float = 0.5
    look_back_period_s: float = 1.0
    deploy_timeout_s: float = 180.0
    settle_timeout_s: float = 90.0


def make_app_config(s: Settings, repository_root: str, http_port: int) -> AppConfig:
    """The AppConfig of the run: only ``mlp-head``, autoscaled, half a GPU per replica.

    Serve's Python proxy, because HAProxy's stats ports are fixed and would collide with
    another Ray on the machine; the access log on, because it names each request's replica.
    """
    autoscaling = {
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "target_ongoing_requests": s.target_ongoing_requests,
        "upscale_delay_s": s.upscale_delay_s,
        "downscale_delay_s": s.downscale_delay_s,
        "metrics_interval_s": s.metrics_interval_s,
        "look_back_period_s": s.look_back_period_s,
    }
    return AppConfig.model_validate(
        {
            "repository": {"root": repository_root},
            "http": {
                "host": "127.0.0.1",
                "port": http_port,
                "request_timeout_s": 30,
                "ingress": "proxy",
                "access_log": True,
            },
            "models": [
                {
                    "name": APP,
                    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.002},
                    "max_ongoing_requests": 16,
                    "graceful_shutdown_timeout_s": 2,
                    "resources": {
                        "num_cpus": s.replica_cpus,
                        "num_gpus": s.replica_gpus,
                        "torch_threads": 1,
                    },
                    "autoscaling": autoscaling,
                }
            ],
        }
    )


def short_id(node_id: str | None) -> str | None:
    """Fake node ids end in a counter: head 00000, workers 00001, 00002..."""
    return None if not node_id else node_id[-5:]
