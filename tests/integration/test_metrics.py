"""serve_app's own metrics, scraped from the session Ray node's real metrics port and
parsed with prometheus-client: every family is exported, and the numbers move with
traffic (requests by status, rows, batches, queue waits, compute, load facts)."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.server.metrics import EXPORTED, exported_name
from tests.integration.conftest import METRICS_PORT, OVERLOADED, TENANTS

pytestmark = pytest.mark.integration
SESSION_APPS = ["minilm", "triage", TENANTS, OVERLOADED]
NODE_SERIES = {
    s
    for family in ("serve_app_pipeline_node_latency_ms", "serve_app_pipeline_node_calls")
    for s in exported_name(family)
}
UNROUTED_SERIES = set(exported_name("serve_app_unrouted_requests"))
"""Comes with the first request the server app answers for a model route."""
JOB_SERIES = {
    s for family in ("serve_app_jobs", "serve_app_job_latency_ms") for s in exported_name(family)
}
"""Come with a consumer's first job: tests/integration/test_jobs.py checks them (this
module's applications run no consumer, so alone it would never see them)."""

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape() -> Samples:
    """``series name -> [(labels, value)]`` of every ``ray_serve_app_*`` sample."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_serve_app_"):
                out[sample.name].append((sample.labels, sample.value))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels`` (all replicas)."""
    return sum(v for lab, v in samples.get(name, []) if labels.items() <= lab.items())


def bucket(samples: Samples, family: str, le: str, **labels: str) -> float:
    """Cumulative count of ``family``'s bucket ``le`` over matching series."""
    return sum(
        v for lab, v in samples.get(f"{family}_bucket", [])
        if lab.get("le") == le and labels.items() <= lab.items()
    )  # fmt: skip


def wait_until(predicate, timeout_s: float = 30.0) -> Samples:
    """Scrape until ``predicate(samples)`` holds (Ray reports every 0.5 s here)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape()
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def settled(value, timeout_s: float = 30.0) -> Samples:
    """A scrape after which ``value(samples)`` stopped moving for 1.5 s: requests of the
    tests before this one are reported late (every 0.5 s), and would count as ours."""
    deadline = time.monotonic() + timeout_s
    samples = scrape()
    while time.monotonic() < deadline:
        time.sleep(1.5)
        again = scrape()
        if value(again) == value(samples) and again:
            return again
        samples = again
    return samples


def body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                        "data": texts}]}  # fmt: skip


def test_model_metrics_are_exported_and_move_with_traffic(client: httpx.Client) -> None:
    model = {"model": "minilm", "version": "2"}
    before = settled(lambda s: total(s, "ray_serve_app_requests_total", **model))
    # A gauge set once at load is still on the page minutes later (re-set every second).
    assert total(before, "ray_serve_app_model_info", **model) == 1
    ok0 = total(before, "ray_serve_app_requests_total", status="200", **model)
    bad0 = total(before, "ray_serve_app_requests_total", status="400", **model)
    # Ray 2.60 reports a histogram's _sum from bucket midpoints, so counts and buckets
    # are what a test (or a dashboard) can rely on.
    rows0 = bucket(before, "ray_serve_app_request_rows", "2.0", **model)
    batches0 = total(before, "ray_serve_app_batch_rows_count", **model)
    waits0 = total(before, "ray_serve_app_queue_wait_ms_count", **model)
    computes0 = total(before, "ray_serve_app_batch_compute_ms_count", **model)

    for i in range(5):
        r = client.post("/v2/models/minilm/infer", json=body([f"ticket {i}", "printer on fire"]))
        assert r.status_code == 200
    wrong = {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert client.post("/v2/models/minilm/infer", json=wrong).status_code == 400

    after = wait_until(
        lambda s: (
            total(s, "ray_serve_app_requests_total", status="200", **model) >= ok0 + 5
            and total(s, "ray_serve_app_requests_total", status="400", **model) >= bad0 + 1
        )
    )
    assert total(after, "ray_serve_app_requests_total", status="200", **model) == ok0 + 5
    assert total(after, "ray_serve_app_requests_total", status="400", **model) == bad0 + 1
    assert bucket(after, "ray_serve_app_request_rows", "2.0", **model) == rows0 + 5
    batches = total(after, "ray_serve_app_batch_rows_count", **model) - batches0
    assert 1 <= batches <= 5  # sequential requests: a batch each, unless other tests overlap
    assert total(after, "ray_serve_app_batch_compute_ms_count", **model) == computes0 + batches
    assert total(after, "ray_serve_app_queue_wait_ms_count", **model) == waits0 + 5
    latency = total(after, "ray_serve_app_request_latency_ms_sum", **model)
    assert latency > 0
    # One histogram bucket series per boundary plus +Inf, cumulative.
    buckets = [v for lab, v in after["ray_serve_app_request_latency_ms_bucket"]
               if model.items() <= lab.items() and lab["le"] == "+Inf"]  # fmt: skip
    assert sum(buckets) == total(after, "ray_serve_app_request_latency_ms_count", **model)

    (info,) = [lab for lab, v in after["ray_serve_app_model_info"] if lab["model"] == "minilm"]
    assert (info["version"], info["format"], info["device"], info["num_gpus"]) == (
        "2", "onnx", "cpu", "0")  # fmt: skip
    assert {"application", "deployment", "replica"} <= info.keys()  # Serve's own tags
    assert total(after, "ray_serve_app_weights_bytes", **model) > 80_000_000  # MiniLM as ONNX
    assert total(after, "ray_serve_app_weights_verify_seconds", **model) > 0
    # Every family but device memory (CUDA only) is on the page; the pipeline node
    # families come with the first pipeline request (the next test checks them).
    missing = {n for n in EXPORTED if n not in after} - NODE_SERIES - UNROUTED_SERIES - JOB_SERIES
    assert missing == {"ray_serve_app_device_memory_bytes"}


def test_pipeline_requests_are_counted_under_its_name(client: httpx.Client) -> None:
    tags = {"model": "triage"}
    # triage's embed node is a call to minilm: counted under minilm too, via="pipeline".
    embed = {"model": "minilm", "status": "200", "via": "pipeline"}
    before = scrape()
    ok0 = total(before, "ray_serve_app_requests_total", status="200", via="http", **tags)
    embed0 = total(before, "ray_serve_app_requests_total", **embed)
    direct0 = total(before, "ray_serve_app_requests_total", model="minilm", via="http")
    r = client.post("/v2/models/triage/infer", json=body(["my laptop will not boot"]))
    assert r.status_code == 200
    after = wait_until(
        lambda s: (
            total(s, "ray_serve_app_requests_total", status="200", **tags) > ok0
            and total(s, "ray_serve_app_requests_total", **embed) > embed0
        )
    )
    assert total(after, "ray_serve_app_requests_total", status="200", via="http", **tags) == (
        ok0 + 1
    )
    assert total(after, "ray_serve_app_requests_total", **embed) == embed0 + 1
    assert total(after, "ray_serve_app_requests_total", model="minilm", via="http") == direct0
    # Each model node that ran is counted and timed under its node label.
    nodes = ("embed", "topic", "urgency")
    calls = "ray_serve_app_pipeline_node_calls_total"
    latency = "ray_serve_app_pipeline_node_latency_ms_count"
    before = {n: total(after, calls, node=n, outcome="ok", **tags) for n in nodes}
    r = client.post("/v2/models/triage/infer", json=body(["my laptop will not boot"]))
    assert r.status_code == 200
    after = wait_until(
        lambda s: all(total(s, calls, node=n, outcome="ok", **tags) > before[n] for n in nodes)
    )
    for n in nodes:
        assert total(after, calls, node=n, outcome="ok", **tags) == before[n] + 1
        assert total(after, latency, node=n, **tags) == total(after, calls, node=n, **tags)


def test_model_routes_the_server_app_answers_are_counted(client: httpx.Client) -> None:
    """No model application takes an unknown name: the server app's 404 is counted under
    ``(unknown)`` (the name is the client's, not a tag)."""
    tags = {"model": "(unknown)", "status": "404"}
    before = total(scrape(), "ray_serve_app_unrouted_requests_total", **tags)
    r = client.post("/v2/models/no-such-model/infer", json=body(["hello"]))
    assert (r.status_code, r.json()["error"].split(";")[0]) == (
        404,
        "unknown model 'no-such-model'",
    )
    after = wait_until(lambda s: total(s, "ray_serve_app_unrouted_requests_total", **tags) > before)
    assert total(after, "ray_serve_app_unrouted_requests_total", **tags) == before + 1


def test_dashboard_queries_name_series_the_live_node_exports(client: httpx.Client) -> None:
    """Every Ray series the Grafana dashboard reads is on the live metrics page (GPU
    series only where there is a GPU)."""
    from tests.k8s.test_dashboard import dashboard_metrics

    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    gpu_only = {"ray_node_gram_used", "ray_serve_app_device_memory_bytes"}
    # Job series come with a consumer's first job (test_jobs checks them).
    assert sorted(dashboard_metrics() - gpu_only - JOB_SERIES - names) == []


def test_a_client_that_hangs_up_mid_forward_is_counted_as_499(serve_app_url: str) -> None:
    # OVERLOADED runs eager MiniLM one row per forward: 64 long texts take seconds, and
    # the client gives up after 1 s. Serve cancels the replica's request (its ingress
    # counts a 499); the replica counts it too, with the model's tags.
    tags = {"model": OVERLOADED, "status": "499", "via": "http"}
    gone0 = total(scrape(), "ray_serve_app_requests_total", **tags)
    texts = [" ".join(["printer on fire again"] * 60)] * 64
    with httpx.Client(base_url=serve_app_url, timeout=1.0) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(f"/v2/models/{OVERLOADED}/infer", json=body(texts))
    after = wait_until(lambda s: total(s, "ray_serve_app_requests_total", **tags) > gone0)
    assert total(after, "ray_serve_app_requests_total", **tags) == gone0 + 1
