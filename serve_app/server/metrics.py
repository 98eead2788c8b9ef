"""serve_app's own metrics, defined once with Ray's metrics API.

Each replica records into ``ray.serve.metrics`` objects, which add the ``application``,
``deployment`` and ``replica`` tags. Each Ray node's metrics agent exports them for
Prometheus with a ``ray_`` prefix (counters also get ``_total``), on the port KubeRay
declares as ``metrics`` (8080) or ``serve-app demo --metrics-port``.

:data:`EXPORTED` names every family as Prometheus sees it. The Grafana dashboard's test
checks each of its queries against that list and Ray's own families.

Ray 2.60 drops a gauge from the metrics page a few seconds after its last ``set`` (the
agent's gauge TTL), so the load facts, set once, are set again every
``GAUGE_REFRESH_S`` by a daemon thread of the replica.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

LATENCY_BOUNDARIES_MS: list[float] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000,
]  # fmt: skip
"""Request latency and queue wait buckets, in milliseconds."""
COMPUTE_BOUNDARIES_MS: list[float] = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
"""Batch compute buckets, in milliseconds."""
ROW_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
"""Rows per batch and per request."""

MODEL_TAGS = ("model", "version")
REQUEST_TAGS = (*MODEL_TAGS, "via")
"""Tags of the per-request families (requests, latency, rows): ``via`` says how the
request reached the replica, so a model's direct traffic is told apart from the calls
pipelines make to it (each of which the pipeline counts again under its own name)."""
VIA_HTTP = "http"
"""A client's HTTP request (to a model's route or, through the server, a tenant's)."""
VIA_GRPC = "grpc"
"""A client's gRPC ``ModelInfer``."""
VIA_JOB = "job"
"""A queued job answered by a job consumer through the target's ``answer_body``."""
VIA_CANARY = "canary"
"""A client's request forwarded by the stable version's replica to its canary."""
VIA_PIPELINE = "pipeline"
"""A pipeline's (or staged model's) call to one of its model nodes: not a client's
request of this model."""
NODE_TAGS = (*MODEL_TAGS, "node")
"""A pipeline node's series: ``model`` is the pipeline; nodes are fixed by its config, so
the cardinality is bounded."""
GAUGE_REFRESH_S = 1.0
"""How often a replica re-sets its gauges (Ray forgets one not set for ~2 s to ~20 s)."""
PREFIX = "serve_app_"

# name (as recorded) -> (kind, description). Exported as ray_<name>[_total].
FAMILIES: dict[str, tuple[str, str]] = {
    "serve_app_requests": (
        "counter", "Inference requests answered, by HTTP status and how they came (via: "
        "http, grpc, job, canary, or pipeline for a pipeline's call to this model)."),
    "serve_app_request_latency_ms": (
        "histogram", "Time from the request reaching the replica to its answer."),
    "serve_app_request_rows": ("histogram", "Rows (batch items) per inference request."),
    "serve_app_queue_wait_ms": (
        "histogram", "Time a request's rows waited for their batch to start."),
    "serve_app_batch_rows": ("histogram", "Rows per batch run through the model."),
    "serve_app_batch_compute_ms": ("histogram", "Forward time of one batch."),
    "serve_app_weights_verify_seconds": (
        "gauge", "Time to checksum the served version's files at load."),
    "serve_app_weights_load_seconds": ("gauge", "Time to load the weights onto the device."),
    "serve_app_weights_bytes": ("gauge", "Bytes of the served version's files."),
    "serve_app_model_info": (
        "gauge", "1 per replica, with the model's version, format, device and num_gpus."),
    "serve_app_device_memory_bytes": (
        "gauge", "Device memory the replica's torch allocator holds (CUDA only)."),
    "serve_app_pipeline_node_latency_ms": (
        "histogram", "A pipeline model node's call, from the router's call to its answer."),
    "serve_app_pipeline_node_calls": (
        "counter", "A pipeline's model node calls by outcome (ok, failed, timeout, ...)."),
    "serve_app_jobs": (
        "counter", "Job deliveries by outcome (succeeded, failed, retried, dead_lettered, "
        "unprocessable, skipped)."),
    "serve_app_job_latency_ms": (
        "histogram", "A job's time from submission to its stored answer."),
    "serve_app_job_queue_depth": (
        "gauge", "Messages waiting in a target's queues (jobs, failed, unprocessable)."),
    "serve_app_unrouted_requests": (
        "counter", "Requests for a model route that no model application took, answered by "
        "the server application: the model is not running (503) or unknown (404)."),
}  # fmt: skip
UNKNOWN_MODEL = "(unknown)"
"""``model`` tag of a request for a name that is neither a model nor a pipeline (the
name is the client's: unbounded, so not a tag)."""


def exported_name(name: str) -> list[str]:
    """The Prometheus series names one family appears under."""
    kind = FAMILIES[name][0]
    base = f"ray_{name}"
    if kind == "counter":
        return [f"{base}_total"]
    if kind == "histogram":
        return [f"{base}_bucket", f"{base}_count", f"{base}_sum"]
    return [base]


EXPORTED: frozenset[str] = frozenset(s for n in FAMILIES for s in exported_name(n))
"""Every series name serve_app exports."""


class ModelMetricsSink(Protocol):
    """What a model replica reports. :class:`RayModelMetrics` in a replica; tests pass a
    recorder."""

    def observe_request(
        self, status: int, latency_s: float, rows: int | None, via: str = VIA_HTTP
    ) -> None:
        """One answered inference request (``rows``: None when it was never decoded;
        ``via``: how it came, one of the ``VIA_*`` values)."""

    def observe_batch(self, rows: int, queue_waits_s: Iterable[float], compute_s: float) -> None:
        """One batch: its rows, each request's wait for it, and its forward time."""

    def set_loaded(self, info: dict[str, str], load_s: dict[str, float], nbytes: int) -> None:
        """The loaded version: info tags, verify/load seconds, file bytes."""

    def set_device_memory(self, nbytes: int) -> None:
        """Device memory in use."""


class RayModelMetrics:
    """:class:`ModelMetricsSink` over ``ray.serve.metrics`` (one set per replica).

    Args:
        model: Model (or pipeline) name, the ``model`` tag.
        version: Served version, the ``version`` tag.
    """

    def __init__(self, model: str, version: str, refresh_s: float = GAUGE_REFRESH_S) -> None:
        from ray.serve import metrics as ray_metrics

        # Ray annotates tag_keys as tuple[str] (one key); any tuple of keys works.
        Counter: Any = ray_metrics.Counter
        Gauge: Any = ray_metrics.Gauge
        Histogram: Any = ray_metrics.Histogram
        tags = {"model": model, "version": version}

        def desc(name: str) -> str:
            return FAMILIES[name][1]

        def hist(name: str, bounds: list[float], keys: tuple[str, ...] = MODEL_TAGS) -> Any:
            h = Histogram(name, description=desc(name), boundaries=bounds, tag_keys=keys)
            h.set_default_tags(dict(tags))  # Ray adds its tags to the dict it gets
            return h

        def gauge(name: str, extra: tuple[str, ...] = ()) -> Any:
            g = Gauge(name, description=desc(name), tag_keys=MODEL_TAGS + extra)
            g.set_default_tags(dict(tags))
            return g

        self._requests = Counter(
            "serve_app_requests", description=desc("serve_app_requests"),
            tag_keys=(*REQUEST_TAGS, "status"),
        )  # fmt: skip
        self._requests.set_default_tags(dict(tags))
        self._latency = hist("serve_app_request_latency_ms", LATENCY_BOUNDARIES_MS, REQUEST_TAGS)
        self._request_rows = hist("serve_app_request_rows", ROW_BOUNDARIES, REQUEST_TAGS)
        self._queue_wait = hist("serve_app_queue_wait_ms", LATENCY_BOUNDARIES_MS)
        self._batch_rows = hist("serve_app_batch_rows", ROW_BOUNDARIES)
        self._compute = hist("serve_app_batch_compute_ms", COMPUTE_BOUNDARIES_MS)
        self._verify_s = gauge("serve_app_weights_verify_seconds")
        self._load_s = gauge("serve_app_weights_load_seconds")
        self._bytes = gauge("serve_app_weights_bytes")
        self._info = gauge("serve_app_model_info", ("format", "device", "num_gpus"))
        self._device_memory = gauge("serve_app_device_memory_bytes", ("device",))
        self._device = ""
        # Last value of each gauge series: (gauge, value, tags), re-set by the thread.
        self._gauge_values: dict[str, tuple[Any, float, dict[str, str] | None]] = {}
        self._lock = threading.Lock()
        self._refresh_s = refresh_s
        self._refresher: threading.Thread | None = None

    def _set(self, key: str, gauge: Any, value: float, tags: dict[str, str] | None = None) -> None:
        gauge.set(value, tags=tags)
        with self._lock:
            self._gauge_values[key] = (gauge, value, tags)
            if self._refresher is None:
                self._refresher = threading.Thread(
                    target=self._refresh_loop, name="metrics-refresh", daemon=True
                )
                self._refresher.start()

    def _refresh_loop(self) -> None:
        while True:  # a daemon thread: it ends with the replica
            time.sleep(self._refresh_s)
            with self._lock:
                values = list(self._gauge_values.values())
            for gauge, value, tags in values:
                gauge.set(value, tags=tags)

    def observe_request(
        self, status: int, latency_s: float, rows: int | None, via: str = VIA_HTTP
    ) -> None:
        """See :class:`ModelMetricsSink`."""
        self._requests.inc(1, tags={"status": str(status), "via": via})
        self._latency.observe(latency_s * 1000.0, tags={"via": via})
        if rows is not None:
            self._request_rows.observe(rows, tags={"via": via})

    def observe_batch(self, rows: int, queue_waits_s: Iterable[float], compute_s: float) -> None:
        """See :class:`ModelMetricsSink`."""
        self._batch_rows.observe(rows)
        for wait_s in queue_waits_s:
            self._queue_wait.observe(wait_s * 1000.0)
        self._compute.observe(compute_s * 1000.0)

    def set_loaded(self, info: dict[str, str], load_s: dict[str, float], nbytes: int) -> None:
        """See :class:`ModelMetricsSink`."""
        self._device = info.get("device", "")
        self._set("info", self._info, 1, info)
        self._set("verify_s", self._verify_s, load_s.get("verify_s", 0.0))
        self._set("load_s", self._load_s, load_s.get("load_s", 0.0))
        self._set("bytes", self._bytes, nbytes)

    def set_device_memory(self, nbytes: int) -> None:
        """See :class:`ModelMetricsSink`."""
        self._set("device_memory", self._device_memory, nbytes, {"device": self._device})


class RayNodeMetrics:
    """Per-node latency and outcomes of one pipeline's router (``GraphExecutor``'s
    ``observe_node``), over ``ray.serve.metrics``.

    Args:
        pipeline: Pipeline name, the ``model`` tag.
        version: Its version, the ``version`` tag.
    """

    def __init__(self, pipeline: str, version: str) -> None:
        from ray.serve import metrics as ray_metrics

        Counter: Any = ray_metrics.Counter
        Histogram: Any = ray_metrics.Histogram
        tags = {"model": pipeline, "version": version}
        name = "serve_app_pipeline_node_latency_ms"
        self._latency = Histogram(
            name, description=FAMILIES[name][1], boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=NODE_TAGS,
        )  # fmt: skip
        self._latency.set_default_tags(dict(tags))
        name = "serve_app_pipeline_node_calls"
        self._calls = Counter(name, description=FAMILIES[name][1], tag_keys=(*NODE_TAGS, "outcome"))
        self._calls.set_default_tags(dict(tags))

    def observe_node(self, node: str, outcome: str, seconds: float) -> None:
        """One model node call that ended with ``outcome`` after ``seconds``."""
        self._calls.inc(1, tags={"node": node, "outcome": outcome})
        self._latency.observe(seconds * 1000.0, tags={"node": node})


class RayUnroutedMetrics:
    """``serve_app_unrouted_requests`` of the server application, over
    ``ray.serve.metrics``: tagged ``model`` (a served name or ``UNKNOWN_MODEL``) and
    ``status``."""

    def __init__(self) -> None:
        from ray.serve import metrics as ray_metrics

        name = "serve_app_unrouted_requests"
        counter: Any = ray_metrics.Counter
        self._requests = counter(name, description=FAMILIES[name][1], tag_keys=("model", "status"))

    def observe(self, model: str, status: int) -> None:
        """One request for ``model``'s route answered ``status`` by the server."""
        self._requests.inc(1, tags={"model": model, "status": str(status)})


def device_memory_bytes(device: str) -> int | None:
    """Bytes torch's allocator holds on a CUDA ``device``; None for CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.memory_allocated(torch.device(device)))
