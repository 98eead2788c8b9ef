"""The Serve config rendered from AppConfig: schema, drift, where options go (no Ray
cluster; Ray's schema module is imported only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve.schema import ServeDeploySchema

from serve_app.config import load_app_config
from serve_app.deploy.app_args import APP_ARGS
from serve_app.deploy.render import render_local
from serve_app.deploy.serve_config import render_serve_config

ROOT = Path(__file__).resolve().parents[3]


def test_local_yaml_has_not_drifted() -> None:
    app = load_app_config(ROOT / "configs/app.yaml")
    expected = render_local(app, "configs/app.yaml", "configs/local.yaml")
    assert (ROOT / "configs/local.yaml").read_text() == expected, (
        "configs/local.yaml is out of date: run `serve-app render`"
    )


def test_rendered_config_validates_against_ray_schema() -> None:
    app = load_app_config(ROOT / "configs/app.yaml")
    config = render_serve_config(app)
    schema = ServeDeploySchema.model_validate(config)
    names = [a.name for a in schema.applications]
    # the triage heads are fused into minilm (standalone: false): no application of their own
    assert names == ["oip", "minilm", "mlp-head", "triage", "jobs-minilm", "jobs-triage"]
    # The job consumers' applications have no HTTP route.
    assert [a.route_prefix for a in schema.applications] == ["/"] + [
        None if n.startswith("jobs-") else f"/v2/models/{n}" for n in names[1:]
    ]
    args = [APP_ARGS.validate_python(a["args"]) for a in config["applications"]]
    assert [a.kind for a in args] == [
        "server",
        "model",
        "model",
        "pipeline",
        "consumer",
        "consumer",
    ]
    fused = [(f.node, f.host, f.model, f.folder) for f in args[1].fused]  # type: ignore[union-attr]
    assert fused == [
        ("topic", "embed", "ticket-topic", "ticket-topic"),
        ("urgency", "embed", "ticket-urgency", "ticket-urgency"),
        ("second-opinion", "embed", "ticket-topic-large", "ticket-topic-large"),
    ]
    assert args[2].fused == []  # type: ignore[union-attr]
    targets = args[3].models  # type: ignore[union-attr]
    assert {m: t.app for m, t in targets.items()} == {
        "minilm": "minilm",
        "ticket-topic": None,
        "ticket-urgency": None,
        "ticket-topic-large": None,
    }
    assert args[0].models == ["minilm", "mlp-head"]  # type: ignore[union-attr]
    assert args[0].pipelines == {"triage": ["minilm"]}  # type: ignore[union-attr]


def test_batching_lives_in_user_config_not_args() -> None:
    """Batching changes must reconfigure replicas in place: they may not sit in the app
    args (an args change rebuilds the application)."""
    app = load_app_config(ROOT / "configs/app.yaml")
    minilm = render_serve_config(app)["applications"][1]
    assert "batching" not in minilm["args"]
    dep = minilm["deployments"][0]
    assert dep["user_config"] == app.model("minilm").batching.model_dump()
    assert dep["max_ongoing_requests"] == 64
    assert dep["max_constructor_retry_count"] == 3
    assert dep["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert dep["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert (dep["num_replicas"], minilm["args"]["torch_threads"]) == (1, 1)


def test_demo_drain_budget_covers_graceful_shutdown_and_the_haproxy_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from serve_app.local.demo import drain_budget_s

    monkeypatch.delenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", raising=False)
    config = {"applications": [
        {"deployments": [{"name": "a", "graceful_shutdown_timeout_s": 12}]},
        {"deployments": [{"name": "b"}]},  # Serve's default, 20 s
    ]}  # fmt: skip
    assert drain_budget_s(config, "proxy") == 20 + 5
    # Behind HAProxy: Ray's 30 s reachable window, then the graceful wait, in sequence.
    assert drain_budget_s(config, "haproxy") == 30 + 20 + 5
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    assert drain_budget_s(config, "haproxy") == 2 + 20 + 5
    assert drain_budget_s({"applications": []}, "proxy") == 25
