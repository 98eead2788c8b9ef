"""Multiplexed families in the config, without Ray: the rules that keep tenant names
unambiguous, the rendered Serve config and the HAProxy tenant-header balance."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import AppConfig
from serve_app.config.tenants import family_of
from serve_app.deploy.app_args import APP_ARGS, MultiplexAppArgs, ServerAppArgs
from serve_app.deploy.serve_config import render_serve_config

FAMILY = {"name": "heads", "multiplex": {"tenant_prefix": "tenant-", "max_models_per_replica": 2}}


def config(*models: dict[str, Any], pipelines: list[dict[str, Any]] | None = None) -> AppConfig:
    return AppConfig.model_validate({"models": list(models), "pipelines": pipelines or []})


def error_line(e: pytest.ExceptionInfo[ValidationError]) -> str:
    return e.value.errors()[0]["msg"]


# --- config -------------------------------------------------------------------------


def test_a_model_named_like_a_tenant_is_refused() -> None:
    with pytest.raises(ValidationError) as e:
        config(FAMILY, {"name": "tenant-x"})
    assert error_line(e) == (
        "Value error, 'tenant-x' starts with the tenant prefix 'tenant-' of the multiplexed "
        "family 'heads': its route would shadow that tenant"
    )


def test_overlapping_prefixes_are_refused() -> None:
    with pytest.raises(ValidationError) as e:
        config(FAMILY, {"name": "more", "multiplex": {"tenant_prefix": "tenant-a"}})
    assert error_line(e) == (
        "Value error, multiplexed families 'heads' and 'more' have overlapping tenant "
        "prefixes 'tenant-' and 'tenant-a': a tenant name would belong to both"
    )


def test_a_family_has_no_stages_and_no_own_prefix() -> None:
    with pytest.raises(ValidationError) as e:
        config({"name": "tenant-all", "multiplex": {"tenant_prefix": "tenant-"}})
    assert "the family's name must not start with its tenant_prefix 'tenant-'" in error_line(e)
    with pytest.raises(ValidationError) as e:
        config(FAMILY | {"repository_name": "x"})
    assert "cannot also have stages or a repository_name" in error_line(e)


def test_a_pipeline_cannot_call_a_family() -> None:
    pipeline = {
        "name": "p",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 384]}],
        "nodes": [{"name": "n", "model": "heads", "inputs": {"input": "request.input"}}],
        "outputs": {"y": "n.output"},
    }
    with pytest.raises(ValidationError) as e:
        config(FAMILY, pipelines=[pipeline])
    assert error_line(e) == (
        "Value error, pipeline 'p' node 'n': model 'heads' is a multiplexed family; "
        "pipelines call single models"
    )


def test_family_of_needs_more_than_the_prefix() -> None:
    prefixes = {"heads": "tenant-"}
    assert family_of("tenant-0001", prefixes) == "heads"
    assert family_of("tenant-", prefixes) is None
    assert family_of("minilm", prefixes) is None


def test_rendered_family_is_one_multiplexed_deployment_and_the_server_knows_it() -> None:
    app = config(FAMILY | {"num_replicas": 2, "resources": {"num_cpus": 0.5}}, {"name": "m"})
    rendered = render_serve_config(app)
    server, family = rendered["applications"][0], rendered["applications"][1]
    assert (family["name"], family["route_prefix"]) == ("heads", "/v2/models/heads")
    args = APP_ARGS.validate_python(family["args"])
    assert isinstance(args, MultiplexAppArgs)
    assert (args.tenant_prefix, args.max_models_per_replica) == ("tenant-", 2)
    [deployment] = family["deployments"]
    assert deployment["name"] == "MultiplexedDeployment"
    assert "user_config" not in deployment
    assert deployment["num_replicas"] == 2
    assert ServerAppArgs.model_validate(server["args"]).families == {"heads": "tenant-"}


def test_haproxy_can_balance_on_the_tenant_header() -> None:
    from serve_app.config import HttpConfig
    from serve_app.k8s.render import ray_container_env
    from serve_app.local.ingress import haproxy_env

    assert haproxy_env(None) == {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    hashed = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": "hdr(serve_multiplexed_model_id)",
    }
    assert haproxy_env(None, balance="tenant-header") == hashed
    http = HttpConfig(admin_host=None, haproxy_balance="tenant-header")
    same_loop = {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    }
    wrapper = {  # the image's HAProxy wrapper (errors in our JSON shape)
        "RAY_SERVE_HAPROXY_BINARY_PATH": "/home/ray/.serve-app/haproxy.sh",
        "SERVE_APP_RETRY_AFTER_S": str(http.retry_after_s),
    }
    assert ray_container_env(http) == same_loop | hashed | wrapper
    assert ray_container_env(HttpConfig(admin_host=None)) == same_loop | wrapper | {
        "RAY_SERVE_ENABLE_HA_PROXY": "1"
    }
