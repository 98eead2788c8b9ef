"""``jobs`` in the config, without Ray: which targets may take jobs, and the Serve config
rendered for them (one consumer application per target, the queue policy by import
path, queue settings in the targets' args, no broker URL anywhere)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig
from serve_app.deploy.app_args import APP_ARGS, ConsumerAppArgs, PipelineAppArgs
from serve_app.deploy.serve_config import render_serve_config
from serve_app.server.job_autoscaling import QueueDepthPolicy

FAMILY = {"name": "heads", "multiplex": {"tenant_prefix": "tenant-", "max_models_per_replica": 2}}
PIPELINE = {
    "name": "chain",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "nodes": [
        {"name": "first", "kind": "model", "model": "m", "inputs": {"input": "request.x"}},
        {"name": "second", "kind": "model", "model": "other", "inputs": {"input": "first.output"}},
    ],
    "outputs": {"y": "second.output"},
}
FUSED_PIPELINE = {
    "name": "fused",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "nodes": [
        {"name": "body", "kind": "model", "model": "m", "inputs": {"input": "request.x"}},
        {
            "name": "head",
            "kind": "model",
            "model": "inner",
            "inputs": {"input": "body.output"},
            "placement": "fused",
        },
    ],
    "outputs": {"y": "head.output"},
}
QUEUE = {
    "broker_url_env": "SERVE_APP_BROKER_URL",
    "results_url_env": None,
    "prefix": "serve-app",
    "result_ttl_s": 86400,
    "redelivery_after_s": 300,
}


def config(jobs: dict[str, Any] | None, *models: dict[str, Any], **more: Any) -> AppConfig:
    raw: dict[str, Any] = {
        "models": [{"name": "m"}, {"name": "other"}, *models],
        "pipelines": [PIPELINE],
        **more,
    }
    if jobs is not None:
        raw["jobs"] = jobs
    return AppConfig.model_validate(raw)


def refusal(jobs: dict[str, Any], *models: dict[str, Any], **more: Any) -> str:
    with pytest.raises(ValidationError) as e:
        config(jobs, *models, **more)
    return e.value.errors()[0]["msg"]


def apps_of(app: AppConfig) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in render_serve_config(app)["applications"]}


# --- which targets --------------------------------------------------------------------


def test_an_unknown_target_is_refused_naming_the_choices() -> None:
    assert refusal({"targets": ["nope"]}) == (
        "Value error, jobs target 'nope' is not a model or pipeline of this config "
        "(models and pipelines: ['chain', 'm', 'other'])"
    )


def test_a_multiplexed_family_is_refused() -> None:
    assert refusal({"targets": ["heads"]}, FAMILY) == (
        "Value error, jobs target 'heads' is a multiplexed family; it has no route to call"
    )


def test_a_model_that_is_not_standalone_is_refused() -> None:
    inner = {"name": "inner", "standalone": False}
    config(None, inner, pipelines=[PIPELINE, FUSED_PIPELINE])  # valid without jobs
    msg = refusal({"targets": ["inner"]}, inner, pipelines=[PIPELINE, FUSED_PIPELINE])
    assert msg == "Value error, jobs target 'inner' is standalone: false; it has no route to call"


def test_duplicate_targets_are_refused() -> None:
    assert refusal({"targets": ["m", "chain", "m"]}) == (
        "Value error, duplicate job targets: ['m']"
    )


def test_a_consumer_app_name_that_clashes_is_refused() -> None:
    assert refusal({"targets": ["m"]}, {"name": "jobs-m"}) == (
        "Value error, jobs target 'm': its consumers' application jobs-m clashes with a "
        "model or pipeline of that name"
    )


@pytest.mark.parametrize(
    ("jobs", "loc"),
    [
        ({"targets": ["m"], "broker_url": "redis://:pw@h/0"}, ("jobs", "broker_url")),
        ({"targets": ["m"], "consumers": {"replicas": 2}}, ("jobs", "consumers", "replicas")),
    ],
)
def test_unknown_keys_are_refused(jobs: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as e:
        config(jobs)
    assert (e.value.errors()[0]["type"], e.value.errors()[0]["loc"]) == ("extra_forbidden", loc)


@pytest.mark.parametrize(
    ("jobs", "msg"),
    [
        ({"targets": []}, "List should have at least 1 item after validation, not 0"),
        ({"targets": ["M"]}, "Value error, invalid model name 'M'"),
        (
            {"targets": ["m"], "consumers": {"min_replicas": 3, "max_replicas": 2}},
            "Value error, min_replicas must be <= max_replicas",
        ),
    ],
)
def test_bad_jobs_values_are_refused(jobs: dict[str, Any], msg: str) -> None:
    assert refusal(jobs).startswith(msg)


# --- what is rendered -----------------------------------------------------------------


def test_each_target_gets_a_consumer_application_without_a_route() -> None:
    app = config({"targets": ["m", "chain"], "max_retries": 5, "job_timeout_s": 30})
    apps = apps_of(app)
    assert list(apps) == ["oip", "m", "other", "chain", "jobs-m", "jobs-chain"]
    for target, ingress in (("m", "ModelDeployment"), ("chain", "PipelineRouter")):
        consumers = apps[f"jobs-{target}"]
        assert consumers["route_prefix"] is None
        assert consumers["import_path"] == "serve_app.app:build_app"
        args = APP_ARGS.validate_python(consumers["args"])
        assert isinstance(args, ConsumerAppArgs)
        assert (args.app, args.deployment, args.max_retries, args.job_timeout_s) == (
            target,
            ingress,
            5,
            30.0,
        )
        assert args.queue.model_dump() == {"target": target, **QUEUE}


def test_consumers_scale_on_their_queue_from_zero() -> None:
    jobs = {
        "targets": ["m"],
        "broker_url_env": "MY_BROKER",
        "queue_prefix": "q",
        "consumer_concurrency": 8,
        "consumers": {"max_replicas": 3, "target_jobs_per_consumer": 4, "poll_interval_s": 1},
    }
    (deployment,) = apps_of(config(jobs))["jobs-m"]["deployments"]
    assert (deployment["name"], deployment["max_ongoing_requests"]) == ("JobConsumer", 8)
    assert deployment["ray_actor_options"]["num_cpus"] == 0
    scaling = deployment["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (0, 3)
    assert scaling["target_ongoing_requests"] == 4
    policy = scaling["policy"]
    assert policy["policy_function"] == "serve_app.server.job_autoscaling:QueueDepthPolicy"
    kwargs = policy["policy_kwargs"]
    assert (kwargs["broker_url_env"], kwargs["queue_name"], kwargs["poll_interval_s"]) == (
        "MY_BROKER",
        "q.m",
        1.0,
    )
    QueueDepthPolicy(**kwargs)  # the kwargs fit the policy's signature (MY_BROKER unset)


@pytest.mark.parametrize("poll_interval_s", [0.5, 1, 2, 10])
def test_consumers_report_held_jobs_within_the_look_back_window(poll_interval_s: float) -> None:
    """Ray's default report interval (10 s) exceeds the window the policy averages over:
    a consumer's held jobs then read as none and it was scaled down mid-job. Ray's own
    check (a FutureWarning today, an error later) must pass."""
    import warnings

    from ray.serve.config import AutoscalingConfig

    jobs = {"targets": ["m"], "consumers": {"poll_interval_s": poll_interval_s}}
    (deployment,) = apps_of(config(jobs))["jobs-m"]["deployments"]
    scaling = deployment["autoscaling_config"]
    assert scaling["metrics_interval_s"] <= 2.0
    assert scaling["look_back_period_s"] > scaling["metrics_interval_s"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the field's future env var
        AutoscalingConfig(**scaling)


def test_no_broker_url_or_password_is_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_APP_BROKER_URL", "redis://:hunter2-secret@10.0.0.7:6379/0")
    rendered = json.dumps(render_serve_config(config({"targets": ["m", "chain"]})))
    assert "SERVE_APP_BROKER_URL" in rendered
    assert "redis://" not in rendered
    assert "hunter2-secret" not in rendered


def test_the_targets_args_carry_their_queue_and_only_theirs() -> None:
    apps = apps_of(config({"targets": ["m", "chain"]}))
    assert apps["m"]["args"]["jobs"] == {"target": "m", **QUEUE}
    assert apps["other"]["args"]["jobs"] is None
    assert apps["chain"]["args"]["jobs"] == {"target": "chain", **QUEUE}
    assert [q["target"] for q in apps["oip"]["args"]["jobs"]] == ["m", "chain"]
    no_jobs = apps_of(config(None))
    assert no_jobs["m"]["args"]["jobs"] is None
    assert no_jobs["oip"]["args"]["jobs"] == []
    assert not [name for name in no_jobs if name.startswith("jobs-")]


@pytest.mark.parametrize(
    ("model", "main", "sides"),
    [
        ({"name": "v", "version_policy": {"specific": [1, 2, 3]}}, "v", ["v.v2", "v.v1"]),
        ({"name": "v", "version_policy": {"latest_n": 2}}, "v", ["v.latest-1"]),
        ({"name": "v", "version": 1, "canary": {"version": 2, "percent": 10}}, "v", ["v.canary"]),
    ],
    ids=["specific", "latest_n", "canary"],
)
def test_other_versions_of_a_target_take_no_jobs(
    model: dict[str, Any], main: str, sides: list[str]
) -> None:
    apps = apps_of(config({"targets": ["v"]}, model))
    assert apps[main]["args"]["jobs"] == {"target": "v", **QUEUE}
    assert {name: apps[name]["args"]["jobs"] for name in sides} == dict.fromkeys(sides)
    assert apps["jobs-v"]["args"]["app"] == main


def test_a_staged_targets_router_takes_its_jobs_not_its_stages() -> None:
    staged = {"name": "big", "stages": [{"layers": [0, 3]}, {"layers": [3, 6]}]}
    apps = apps_of(config({"targets": ["big"]}, staged))
    assert apps["big"]["args"]["model"]["jobs"] == {"target": "big", **QUEUE}
    args = APP_ARGS.validate_python(apps["big"]["args"])
    assert [args.stage_args(i).jobs for i in range(2)] == [None, None]  # type: ignore[union-attr]
    assert apps["jobs-big"]["args"]["deployment"] == "PipelineRouter"


def test_a_host_routers_model_takes_no_jobs_inside_the_router() -> None:
    host = {**FUSED_PIPELINE, "name": "hosted", "router": "host"}
    app = config({"targets": ["m", "hosted"]}, {"name": "inner", "standalone": False},
                 pipelines=[PIPELINE, host])  # fmt: skip
    args = PipelineAppArgs.from_config(app, app.pipeline("hosted"))
    assert args.jobs is not None and args.jobs.target == "hosted"
    assert args.host is not None and args.host.jobs is None


def test_the_rendered_config_validates_against_rays_schema() -> None:
    rendered = render_serve_config(config({"targets": ["m", "chain"]}))
    schema = ServeDeploySchema.model_validate(rendered)
    consumers = {a.name: a for a in schema.applications if a.name.startswith("jobs-")}
    assert list(consumers) == ["jobs-m", "jobs-chain"]
    assert [a.route_prefix for a in consumers.values()] == [None, None]
