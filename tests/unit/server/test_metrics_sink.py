"""RayModelMetrics over stand-ins of Ray's metric classes: what it records, and that it
keeps re-setting its gauges (Ray forgets a gauge that is not set for a few seconds)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from serve_app.server import metrics


class Recorded:
    calls: list[tuple[str, str, float, dict[str, str]]] = []

    def __init__(self, name: str, description: str = "", **kw: Any) -> None:
        self.name, self.defaults = name, {}

    def set_default_tags(self, tags: dict[str, str]) -> None:
        self.defaults = tags

    def _record(self, kind: str, value: float, tags: dict[str, str] | None) -> None:
        Recorded.calls.append((kind, self.name, value, {**self.defaults, **(tags or {})}))

    def inc(self, value: float = 1, tags: dict[str, str] | None = None) -> None:
        self._record("inc", value, tags)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record("observe", value, tags)

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self._record("set", value, tags)


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> metrics.RayModelMetrics:
    from ray.serve import metrics as ray_metrics

    for name in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(ray_metrics, name, Recorded)
    Recorded.calls = []
    return metrics.RayModelMetrics("minilm", "2", refresh_s=0.02)


def test_requests_and_batches_are_recorded_in_ms(sink: metrics.RayModelMetrics) -> None:
    sink.observe_request(200, 0.0125, 3)
    sink.observe_request(413, 0.001, None, metrics.VIA_PIPELINE)
    sink.observe_batch(5, [0.002, 0.004], 0.010)
    tags = {"model": "minilm", "version": "2"}
    http, pipeline = {**tags, "via": "http"}, {**tags, "via": "pipeline"}
    assert Recorded.calls == [
        ("inc", "serve_app_requests", 1, {**http, "status": "200"}),
        ("observe", "serve_app_request_latency_ms", 12.5, http),
        ("observe", "serve_app_request_rows", 3, http),
        ("inc", "serve_app_requests", 1, {**pipeline, "status": "413"}),
        ("observe", "serve_app_request_latency_ms", 1.0, pipeline),
        ("observe", "serve_app_batch_rows", 5, tags),
        ("observe", "serve_app_queue_wait_ms", 2.0, tags),
        ("observe", "serve_app_queue_wait_ms", 4.0, tags),
        ("observe", "serve_app_batch_compute_ms", 10.0, tags),
    ]


def test_gauges_are_set_again_until_the_replica_ends(sink: metrics.RayModelMetrics) -> None:
    info = {"format": "onnx", "device": "cpu", "num_gpus": "0"}
    sink.set_loaded(info, {"verify_s": 0.5, "load_s": 1.5}, 90_000_000)
    time.sleep(0.2)
    sets = [(n, v) for kind, n, v, _ in Recorded.calls if kind == "set"]
    for name, value in [("serve_app_model_info", 1), ("serve_app_weights_verify_seconds", 0.5),
                        ("serve_app_weights_load_seconds", 1.5),
                        ("serve_app_weights_bytes", 90_000_000)]:  # fmt: skip
        assert sets.count((name, value)) >= 3, name  # once, then every 0.02 s
    (info_tags,) = {tuple(sorted(t.items())) for k, n, _, t in Recorded.calls
                    if n == "serve_app_model_info"}  # fmt: skip
    assert dict(info_tags) == {"model": "minilm", "version": "2", **info}


def test_every_family_has_its_exported_names() -> None:
    assert metrics.exported_name("serve_app_requests") == ["ray_serve_app_requests_total"]
    assert metrics.exported_name("serve_app_batch_rows") == [
        "ray_serve_app_batch_rows_bucket", "ray_serve_app_batch_rows_count",
        "ray_serve_app_batch_rows_sum"]  # fmt: skip
    assert len(metrics.EXPORTED) == 4 + 7 * 3 + 6  # counters, histograms, gauges
