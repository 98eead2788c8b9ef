"""Writes serve-app-dashboard.json (Grafana 10+ JSON model) next to this file.

Run ``python kuberay/components/monitoring/build_dashboard.py`` (or ``make render``)
after changing a panel; a test fails when the committed JSON differs from what this
script writes, and checks that every query names a metric serve_app exports or one the
live Ray node exported in the integration session. The monitoring component ships the
JSON as a ConfigMap for Grafana's dashboard sidecar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("serve-app-dashboard.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model=~"$model"'
DIRECT = f'{SEL},via!="pipeline"'
"""A model's own traffic in the per-request families (requests, latency, rows): clients'
HTTP and gRPC requests, jobs and canary forwards, without the calls pipelines make to it
(``via="pipeline"``), which the pipeline counts again under its own name."""
APP = 'application=~"($model)([.](canary|v[0-9]+|latest-[0-9]+))?"'
"""A model's applications: its own, its canary (``<name>.canary``) and its older served
versions (``<name>.v<k>``, ``<name>.latest-<i>``; serve_app/deploy/version_policy.py).
serve_app's own series carry the model's name with a ``version`` tag instead."""
MODELS = "ray_serve_app_model_info|ray_serve_app_requests_total"
"""Where the model selector finds names: models set ``model_info`` at load; pipelines
(no weights) appear with their first request."""


def panel(
    pid: int,
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    x: int,
    y: int,
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def row(pid: int, title: str, y: int) -> dict[str, Any]:
    """A row header (no query) above the panels that follow it."""
    return {
        "id": pid,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def rate(series: str, by: str = "model", sel: str = SEL) -> str:
    """``sum by (<by>) (rate(<series>{<sel>}[$__rate_interval]))``."""
    return f"sum by ({by}) (rate({series}{{{sel}}}[$__rate_interval]))"


def quantile(q: float, family: str, by: str = "model", sel: str = SEL) -> str:
    """``histogram_quantile`` of a histogram family, per ``by``."""
    return f"histogram_quantile({q}, {rate(family + '_bucket', by + ', le', sel)})"


def quantiles(family: str, by: str = "model", sel: str = SEL) -> list[tuple[str, str]]:
    """p50, p95 and p99 targets of a histogram family."""
    return [
        (quantile(q, family, by, sel), f"{{{{{by}}}}} p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
    ]


def jobs_panels(y: int) -> list[dict[str, Any]]:
    """The "Jobs" row: queues, outcomes, latency and consumers of each job target.

    The queue depths come from the server application, which reads every queue; during a
    NewCluster upgrade both clusters read the same queues, hence ``max``, not ``sum``.
    Consumers are the applications ``jobs-<target>``."""
    consumers = 'application=~"jobs-($model)"'
    return [
        row(13, "Jobs", y - 1),
        panel(14, "Job queue depth by target and queue (jobs, failed, unprocessable)", [
            (f"max by (model, queue) (ray_serve_app_job_queue_depth{{{SEL}}})",
             "{{model}} {{queue}}"),
        ], "none", 0, y),
        panel(15, "Job outcomes", [
            (rate("ray_serve_app_jobs_total", "model, outcome"), "{{model}} {{outcome}}"),
        ], "ops", 12, y),
        panel(16, "Job latency, submission to stored answer (p50/p99)", [
            (quantile(q, "ray_serve_app_job_latency_ms"), f"{{{{model}}}} p{int(q * 100)}")
            for q in (0.5, 0.99)
        ], "ms", 0, y + 8),
        panel(17, "Job consumers: healthy vs autoscaling target", [
            (f"sum by (application) (ray_serve_deployment_replica_healthy{{{consumers}}})",
             "{{application}} healthy"),
            (f"max by (application) (ray_serve_autoscaling_target_replicas{{{consumers}}})",
             "{{application}} target"),
        ], "none", 12, y + 8),
    ]  # fmt: skip


def dashboard() -> dict[str, Any]:
    """The Grafana JSON model."""
    requests = "ray_serve_app_requests_total"
    errors_sel = f'{DIRECT},status!~"2.."'
    by_status = "model, version, status"
    gpu_used = "sum by (instance, GpuIndex) (ray_node_gram_used) * 1024 * 1024"
    info_by = "model, version, format, device, num_gpus"
    panels = [
        panel(1, "Requests answered by serve_app, by model, version and status "
                 "(a model's own traffic; the calls pipelines make to it apart)", [
            (rate(requests, by_status, DIRECT), "{{model}} v{{version}} {{status}}"),
            (rate(requests, by_status, f'{SEL},via="pipeline"'),
             "{{model}} v{{version}} {{status}} from pipelines"),
        ], "reqps", 0, 0),
        panel(2, "Error ratio (non-2xx, a model's own traffic)", [
            (f"{rate(requests, sel=errors_sel)} / {rate(requests, sel=DIRECT)}", "{{model}}"),
        ], "percentunit", 12, 0),
        panel(3, "Latency at the replica (p50/p95/p99, a model's own traffic)",
              quantiles("ray_serve_app_request_latency_ms", sel=DIRECT), "ms", 0, 8),
        panel(4, "Queue wait before a batch vs batch compute (p95)", [
            (quantile(0.95, "ray_serve_app_queue_wait_ms"), "{{model}} queue wait"),
            (quantile(0.95, "ray_serve_app_batch_compute_ms"), "{{model}} compute"),
        ], "ms", 12, 8),
        panel(5, "Rows per batch (p50/p95/p99) and per request (p95)", [
            *quantiles("ray_serve_app_batch_rows"),
            (quantile(0.95, "ray_serve_app_request_rows", sel=DIRECT),
             "{{model}} per request p95"),
        ], "none", 0, 16),
        panel(6, "Batches per second",
              [(rate("ray_serve_app_batch_rows_count"), "{{model}}")], "ops", 12, 16),
        panel(7, "Replicas: healthy vs autoscaling target", [
            (f"sum by (application) (ray_serve_deployment_replica_healthy{{{APP}}})",
             "{{application}} healthy"),
            (f"max by (application) (ray_serve_autoscaling_target_replicas{{{APP}}})",
             "{{application}} target"),
        ], "none", 0, 24),
        panel(8, "Ongoing and queued requests", [
            (f"sum by (application) (ray_serve_replica_processing_queries{{{APP}}})",
             "{{application}} processing"),
            (f"sum by (application) (ray_serve_deployment_queued_queries{{{APP}}})",
             "{{application}} queued at handles"),
        ], "none", 12, 24),
        panel(9, "GPU memory", [
            (f"sum by (model, device) (ray_serve_app_device_memory_bytes{{{SEL}}})",
             "{{model}} torch allocator on {{device}}"),
            (gpu_used, "node {{instance}} GPU {{GpuIndex}} used"),
        ], "bytes", 0, 32),
        panel(10, "Served versions and load time", [
            (f"max by ({info_by}) (ray_serve_app_model_info{{{SEL}}})",
             "{{model}} v{{version}} {{format}} {{device}} gpus={{num_gpus}}"),
            (f"max by (model, version) (ray_serve_app_weights_verify_seconds{{{SEL}}})",
             "{{model}} v{{version}} verify s"),
            (f"max by (model, version) (ray_serve_app_weights_load_seconds{{{SEL}}})",
             "{{model}} v{{version}} load s"),
            (f"max by (model, version) (ray_serve_app_weights_bytes{{{SEL}}})",
             "{{model}} v{{version}} bytes"),
        ], "none", 12, 32, kind="table"),
        panel(11, "Pipeline nodes: latency from the router's call to the answer (p95)", [
            (quantile(0.95, "ray_serve_app_pipeline_node_latency_ms", "model, node"),
             "{{model}} {{node}} p95"),
        ], "ms", 0, 40),
        panel(12, "Pipeline node calls that did not answer (failed, degraded, timeout)", [
            (rate("ray_serve_app_pipeline_node_calls_total", "model, node, outcome",
                  f'{SEL},outcome!="ok"'), "{{model}} {{node}} {{outcome}}"),
        ], "ops", 12, 40),
        panel(18, "Answers at the ingress by application and status (Serve's count: also "
                  "back-pressure 503, timeout 408, client disconnect 499, HAProxy's own)", [
            (rate("ray_serve_num_http_requests_total", "application, status_code", APP),
             "{{application}} {{status_code}}"),
        ], "reqps", 0, 48),
        panel(19, "Model routes answered by the server app (not running 503, unknown 404)", [
            (rate("ray_serve_app_unrouted_requests_total", "model, status",
                  'model=~"$model|[(]unknown[)]"'), "{{model}} {{status}}"),
        ], "reqps", 12, 48),
        *jobs_panels(57),
    ]  # fmt: skip
    return {
        "uid": "serve-app",
        "title": "serve_app: models and replicas",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "timezone": "utc",
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "tags": ["serve_app", "ray", "serve"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "model",
                    "type": "query",
                    "datasource": DS,
                    "label": "Model",
                    "query": {
                        "query": f'label_values({{__name__=~"{MODELS}"}}, model)',
                        "refId": "model",
                    },
                    "definition": f'label_values({{__name__=~"{MODELS}"}}, model)',
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "refresh": 2,
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The dashboard JSON as committed."""
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
