"""AppConfig validation and couplings (no Ray)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.config import (
    AppConfig,
    AutoscalingConfig,
    ModelConfig,
    ResourcesConfig,
    load_app_config,
)
from serve_app.deploy.app_args import ModelAppArgs


def test_unknown_keys_rejected() -> None:
    with pytest.raises(ValidationError) as e:
        AppConfig.model_validate({"models": [{"name": "m", "batch_size": 3}]})
    assert e.value.errors()[0]["type"] == "extra_forbidden"
    assert e.value.errors()[0]["loc"] == ("models", 0, "batch_size")


def test_batch_must_fit_ongoing_requests() -> None:
    with pytest.raises(ValidationError) as e:
        ModelConfig(
            name="m",
            batching={"max_batch_size": 16, "max_concurrent_batches": 2},
            max_ongoing_requests=31,
        )
    assert (
        "max_batch_size (16) x max_concurrent_batches (2) = 32 exceeds max_ongoing_requests (31)"
        in str(e.value)
    )
    ok = ModelConfig(
        name="m",
        batching={"max_batch_size": 16, "max_concurrent_batches": 2},
        max_ongoing_requests=32,
    )
    assert ok.max_ongoing_requests == 32


@pytest.mark.parametrize("name", ["../etc", "a/b", "A", "", "x" * 64, ".hidden", "a\\b"])
def test_bad_model_names(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid model name"):
        ModelConfig(name=name)


def test_duplicate_models_and_server_clash() -> None:
    with pytest.raises(ValidationError, match=r"duplicate model/pipeline names: \['a'\]"):
        AppConfig(models=[ModelConfig(name="a"), ModelConfig(name="a")])
    with pytest.raises(ValidationError, match="clashes with a model name"):
        AppConfig(models=[ModelConfig(name="oip")])


def test_autoscaling_bounds() -> None:
    with pytest.raises(ValidationError, match="min_replicas must be <= max_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="initial_replicas must lie within"):
        AutoscalingConfig(min_replicas=1, max_replicas=2, initial_replicas=5)
    a = AutoscalingConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=8)
    assert a.to_serve()["target_ongoing_requests"] == 8
    assert "initial_replicas" not in a.to_serve()


def test_fractional_gpus() -> None:
    assert ResourcesConfig(num_gpus=0.25).to_ray_actor_options() == {
        "num_cpus": 1.0,
        "num_gpus": 0.25,
    }
    assert ResourcesConfig(num_gpus=2).num_gpus == 2
    with pytest.raises(ValidationError, match="num_gpus above 1 must be a whole number"):
        ResourcesConfig(num_gpus=1.5)


def test_version_policy() -> None:
    assert ModelConfig(name="m", version=3).version == 3
    with pytest.raises(ValidationError, match="version must be 'latest' or an integer >= 1"):
        ModelConfig(name="m", version=0)


def test_model_args_default_threads_follow_cpus() -> None:
    app = AppConfig(models=[ModelConfig(name="m", resources={"num_cpus": 2})])
    assert ModelAppArgs.from_config(app, app.models[0]).torch_threads == 2
    app = AppConfig(models=[ModelConfig(name="m", resources={"num_cpus": 0})])
    assert ModelAppArgs.from_config(app, app.models[0]).torch_threads == 1


def test_committed_app_config_loads() -> None:
    app = load_app_config("configs/app.yaml")
    heads = ["ticket-topic", "ticket-urgency", "ticket-topic-large"]
    assert [m.name for m in app.models] == ["minilm", "mlp-head", *heads]
    assert [p.name for p in app.pipelines] == ["triage"]


def test_a_pipeline_router_autoscales_when_declared() -> None:
    from serve_app.deploy.serve_config import render_serve_config

    raw = load_app_config("configs/app.yaml").model_dump(mode="json", exclude_unset=True)
    raw["pipelines"][0]["autoscaling"] = {"min_replicas": 1, "max_replicas": 3,
                                          "target_ongoing_requests": 32}  # fmt: skip
    app = AppConfig.model_validate(raw)
    apps = {a["name"]: a for a in render_serve_config(app)["applications"]}
    (router,) = apps["triage"]["deployments"]
    assert "num_replicas" not in router
    assert router["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 32,
        "upscale_delay_s": 5.0, "downscale_delay_s": 60.0, "look_back_period_s": 10.0,
        "metrics_interval_s": 2.0,
    }  # fmt: skip
    # the router's args carry the graph only: its replicas validate them as PipelineConfig
    assert "autoscaling" not in apps["triage"]["args"]["pipeline"]
    raw["pipelines"][0]["num_replicas"] = 2
    with pytest.raises(ValidationError, match="set num_replicas or autoscaling for its router"):
        AppConfig.model_validate(raw)
