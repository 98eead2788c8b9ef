"""The Grafana dashboard (kuberay/components/monitoring/serve-app-dashboard.json):
generated, shipped by the monitoring component, well formed, and every query names a
metric serve_app exports or one Ray 2.60 defines (the live scrape in
tests/integration/test_metrics.py checks Ray's are really on the page)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import ray

from serve_app.server.metrics import EXPORTED, FAMILIES
from tests.k8s.conftest import overlay_with_components

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "kuberay" / "components" / "monitoring"
BUILDER = MONITORING / "build_dashboard.py"
DASHBOARD = MONITORING / "serve-app-dashboard.json"
METRIC = re.compile(r"\b(ray_[a-z0-9_]+)")


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_metrics() -> set[str]:
    """Every ``ray_*`` series name in the committed dashboard's queries."""
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    exprs.append(data["templating"]["list"][1]["definition"])
    return {m for e in exprs for m in METRIC.findall(e)}


def ray_defines(series: str) -> bool:
    """Whether Ray 2.60's source defines this exported series (``ray_`` + its name, minus
    the suffixes Prometheus adds)."""
    name = re.sub(r"_(total|bucket|count|sum)$", "", series.removeprefix("ray_"))
    root = Path(ray.__file__).parent
    files = [
        *root.glob("serve/_private/**/*.py"),
        root / "dashboard/modules/reporter/reporter_agent.py",
    ]
    # The ingress families are named per protocol: f"serve_num_{protocol_name}_requests".
    per_protocol = f'f"{name.replace("_http_", "_{protocol_name}_")}"'
    return any(
        f'"{name}"' in text or per_protocol in text
        for text in (f.read_text(encoding="utf-8") for f in files)
    )


def test_committed_dashboard_is_what_the_builder_writes() -> None:
    assert DASHBOARD.read_text() == builder().render()


def test_monitoring_component_ships_the_dashboard_to_grafana(tmp_path: Path) -> None:
    docs = overlay_with_components(tmp_path, "gpu", "monitoring")
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "grafana" in d["metadata"]["name"]]
    assert cm["metadata"]["name"] == "serve-app-grafana-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's selector
    assert cm["data"] == {"serve-app-dashboard.json": DASHBOARD.read_text()}


def test_panels_are_well_formed() -> None:
    data = json.loads(builder().render())
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)) == 19
    rows = [p for p in data["panels"] if p["type"] == "row"]
    assert [(r["title"], r["gridPos"]) for r in rows] == [
        ("Jobs", {"x": 0, "y": 56, "w": 24, "h": 1})
    ]
    for p in data["panels"]:
        if p["type"] == "row":
            continue
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
    assert [v["name"] for v in data["templating"]["list"]] == ["datasource", "model"]


def test_every_query_names_a_metric_we_export_or_ray_defines() -> None:
    used = dashboard_metrics()
    ours = {m for m in used if m.startswith("ray_serve_app_")}
    assert ours <= EXPORTED
    families = {re.sub(r"_(total|bucket|count|sum)$", "", m.removeprefix("ray_")) for m in ours}
    assert families == set(FAMILIES)  # every family we export has a panel
    theirs = used - ours
    assert theirs == {
        "ray_serve_deployment_replica_healthy", "ray_serve_autoscaling_target_replicas",
        "ray_serve_replica_processing_queries", "ray_serve_deployment_queued_queries",
        "ray_node_gram_used", "ray_serve_num_http_requests_total",
    }  # fmt: skip
    assert [m for m in sorted(theirs) if not ray_defines(m)] == []


def test_the_check_catches_a_misspelled_metric() -> None:
    assert not ray_defines("ray_serve_deployment_replica_healty")
    assert not ray_defines("ray_serve_num_http_request_total")
    assert "ray_serve_app_request_latency_seconds_bucket" not in EXPORTED


def test_jobs_row_queries_the_job_families_and_the_consumer_applications() -> None:
    data = json.loads(DASHBOARD.read_text())
    start = next(i for i, p in enumerate(data["panels"]) if p["title"] == "Jobs")
    queues, outcomes, latency, consumers = (
        [t["expr"] for t in p["targets"]] for p in data["panels"][start + 1 :]
    )
    assert queues == ['max by (model, queue) (ray_serve_app_job_queue_depth{model=~"$model"})']
    assert outcomes == [
        "sum by (model, outcome) "
        '(rate(ray_serve_app_jobs_total{model=~"$model"}[$__rate_interval]))'
    ]
    assert latency == [
        f"histogram_quantile({q}, sum by (model, le) "
        '(rate(ray_serve_app_job_latency_ms_bucket{model=~"$model"}[$__rate_interval])))'
        for q in (0.5, 0.99)
    ]
    apps = '{application=~"jobs-($model)"}'
    assert consumers == [
        f"sum by (application) (ray_serve_deployment_replica_healthy{apps})",
        f"max by (application) (ray_serve_autoscaling_target_replicas{apps})",
    ]


def panel_exprs(title_start: str) -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    (p,) = [p for p in data["panels"] if p["title"].startswith(title_start)]
    return [t["expr"] for t in p["targets"]]


def grafana_match(selector_regex: str, model: str, value: str) -> bool:
    """Whether PromQL's ``=~`` (anchored) matches ``value`` with ``$model`` = ``model``."""
    return re.fullmatch(selector_regex.replace("$model", model), value) is not None


def test_a_models_panels_include_its_canary_and_side_version_applications() -> None:
    (healthy, _) = panel_exprs("Replicas: healthy")
    regex = re.search(r'application=~"([^"]+)"', healthy)
    assert regex is not None
    for app in ("minilm", "minilm.canary", "minilm.v1", "minilm.latest-2"):
        assert grafana_match(regex.group(1), "minilm", app), app
    for app in ("minilm-pp", "jobs-minilm", "minilm.canaryx", "other"):
        assert not grafana_match(regex.group(1), "minilm", app), app
    # serve_app's own series: the model's name, its versions apart.
    assert panel_exprs("Requests answered by serve_app") == [
        "sum by (model, version, status) "
        '(rate(ray_serve_app_requests_total{model=~"$model",via!="pipeline"}[$__rate_interval]))',
        "sum by (model, version, status) "
        '(rate(ray_serve_app_requests_total{model=~"$model",via="pipeline"}[$__rate_interval]))',
    ]


def test_a_models_request_panels_leave_out_the_calls_pipelines_make_to_it() -> None:
    """A pipeline's call to a model is counted under the pipeline and, ``via="pipeline"``,
    under the model: the model's rate, errors, latency and rows show its own traffic."""
    family = r"ray_serve_app_(?:requests_total|request_latency_ms_bucket|request_rows_bucket)"
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    selectors = [m.group(1) for e in exprs for m in re.finditer(family + r"\{([^}]*)\}", e)]
    # rate: own + from pipelines; error ratio: 2; latency: p50/p95/p99; rows: p95
    assert len(selectors) == 8
    assert sorted(set(selectors)) == [
        'model=~"$model",via!="pipeline"',
        'model=~"$model",via!="pipeline",status!~"2.."',
        'model=~"$model",via="pipeline"',
    ]


def test_overload_answers_from_outside_our_code_have_panels() -> None:
    app = 'application=~"($model)([.](canary|v[0-9]+|latest-[0-9]+))?"'
    assert panel_exprs("Answers at the ingress") == [
        "sum by (application, status_code) "
        f"(rate(ray_serve_num_http_requests_total{{{app}}}[$__rate_interval]))"
    ]
    assert panel_exprs("Model routes answered by the server app") == [
        "sum by (model, status) (rate(ray_serve_app_unrouted_requests_total"
        '{model=~"$model|[(]unknown[)]"}[$__rate_interval]))'
    ]


def test_the_model_selector_lists_pipelines_too() -> None:
    data = json.loads(DASHBOARD.read_text())
    selector = data["templating"]["list"][1]
    assert selector["definition"] == (
        'label_values({__name__=~"ray_serve_app_model_info|ray_serve_app_requests_total"}, model)'
    )
    assert selector["query"]["query"] == selector["definition"]
