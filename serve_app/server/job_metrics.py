"""Metrics of inference jobs: outcomes and latency (recorded by consumers) and the
queues' depths (read by the server application, which runs when no consumer does)."""

from __future__ import annotations

from typing import Any

from serve_app.server.metrics import FAMILIES

JOB_LATENCY_BOUNDARIES_MS: list[float] = [
    10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000, 900000,
]  # fmt: skip
"""Submission-to-answer buckets: a job may wait minutes in a backlog."""


class RayJobMetrics:
    """A consumer's outcomes and job latencies for one target (``model`` tag)."""

    def __init__(self, target: str) -> None:
        from ray.serve import metrics as ray_metrics

        Counter: Any = ray_metrics.Counter
        Histogram: Any = ray_metrics.Histogram
        tags = {"model": target}
        name = "serve_app_jobs"
        self._jobs = Counter(name, description=FAMILIES[name][1], tag_keys=("model", "outcome"))
        self._jobs.set_default_tags(dict(tags))
        name = "serve_app_job_latency_ms"
        self._latency = Histogram(
            name,
            description=FAMILIES[name][1],
            boundaries=JOB_LATENCY_BOUNDARIES_MS,
            tag_keys=("model",),
        )
        self._latency.set_default_tags(dict(tags))

    def observe(self, outcome: str, latency_s: float | None = None) -> None:
        """One delivery ended with ``outcome``; ``latency_s`` when an answer was stored."""
        self._jobs.inc(1, tags={"outcome": outcome})
        if latency_s is not None:
            self._latency.observe(max(0.0, latency_s) * 1000.0)


class RayQueueMetrics:
    """The queues' depths, by target and queue kind (``jobs``, ``failed``,
    ``unprocessable``)."""

    def __init__(self) -> None:
        from ray.serve import metrics as ray_metrics

        Gauge: Any = ray_metrics.Gauge
        name = "serve_app_job_queue_depth"
        self._depth = Gauge(name, description=FAMILIES[name][1], tag_keys=("model", "queue"))

    def set_depth(self, target: str, queue: str, depth: int) -> None:
        """Messages waiting in ``target``'s ``queue``."""
        self._depth.set(depth, tags={"model": target, "queue": queue})
