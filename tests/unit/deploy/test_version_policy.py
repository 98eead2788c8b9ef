"""Versions side by side (``version_policy``): config checks, the applications rendered,
``latest_n`` resolved at deploy time, and the cluster's refusal of ``latest_n`` (no Ray;
served for real: tests/integration/test_rollout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from serve_app.config import AppConfig, HttpConfig
from serve_app.deploy.app_args import CanaryArgs
from serve_app.deploy.rollout import end_canary
from serve_app.deploy.serve_config import render_serve_config
from serve_app.deploy.versions import pin_latest_versions
from serve_app.errors import DeployError
from serve_app.k8s.profiles import ClusterProfile
from serve_app.k8s.render import check_cluster_app, worker_max_replicas
from serve_app.repository import publish
from serve_app.repository.manifest import Architecture
from serve_app.server.canary import CanaryForwarder

ARCH = Architecture(name="mlp", kwargs={"in_features": 4, "hidden": [], "out_features": 4})


def app_config(root: Path | str, **model: Any) -> AppConfig:
    return AppConfig.model_validate(
        {"repository": {"root": str(root)}, "models": [{"name": "head", **model}]}
    )


def routes(config: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """App name -> (route prefix, version) of every model application."""
    return {
        a["name"]: (a["route_prefix"], a["args"]["version"])
        for a in config["applications"]
        if a["args"]["kind"] == "model"
    }


def server_args(config: dict[str, Any]) -> dict[str, Any]:
    return next(a["args"] for a in config["applications"] if a["args"]["kind"] == "server")


def side_versions(config: dict[str, Any]) -> dict[str, list[str]]:
    """The server's user_config: the other versions' applications, per model."""
    server = next(a for a in config["applications"] if a["args"]["kind"] == "server")
    return dict(server["deployments"][0]["user_config"]["side_versions"])


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ({}, "exactly one of latest_n or specific"),
        ({"latest_n": 2, "specific": [1]}, "exactly one of latest_n or specific"),
        ({"specific": [2, 2]}, "distinct versions >= 1"),
        ({"specific": [0, 1]}, "distinct versions >= 1"),
        ({"latest_n": 0}, "greater than or equal to 1"),
    ],
)
def test_a_policy_is_one_of_latest_n_or_distinct_versions(
    policy: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        app_config("/r", version_policy=policy)


def test_a_policy_excludes_a_pinned_version() -> None:
    with pytest.raises(ValidationError, match="set either version .2. or version_policy"):
        app_config("/r", version=2, version_policy={"latest_n": 2})


def test_specific_versions_render_one_application_each_newest_on_the_models_route() -> None:
    config = render_serve_config(app_config("/r", version_policy={"specific": [3, 1, 2]}))
    assert routes(config) == {
        "head": ("/v2/models/head", 3),
        "head.v2": ("/v2/models/head/versions/2", 2),
        "head.v1": ("/v2/models/head/versions/1", 1),
    }
    served = {a["name"]: a["args"]["served_versions"] for a in config["applications"][1:]}
    assert served == {"head": [1, 2, 3], "head.v2": [1, 2, 3], "head.v1": [1, 2, 3]}
    assert server_args(config)["models"] == ["head"]  # listed once
    assert side_versions(config) == {"head": ["head.v2", "head.v1"]}


def publish_versions(root: Path, tmp_path: Path, n: int) -> None:
    weights = tmp_path / "w.safetensors"
    save_file({"net.0.weight": torch.zeros(4, 4), "net.0.bias": torch.zeros(4)}, str(weights))
    for _ in range(n):
        publish(weights, root, "head", architecture=ARCH)


def test_latest_n_is_resolved_when_deployed(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    publish_versions(root, tmp_path, 4)
    rendered = render_serve_config(app_config(root, version_policy={"latest_n": 3}))
    assert routes(rendered)["head.latest-2"] == ("/v2/models/head/versions/latest-2", "latest")
    pinned = pin_latest_versions(rendered)
    assert routes(pinned) == {
        "head": ("/v2/models/head", 4),
        "head.latest-1": ("/v2/models/head/versions/3", 3),
        "head.latest-2": ("/v2/models/head/versions/2", 2),
    }
    assert all(a["args"]["served_versions"] == [2, 3, 4] for a in pinned["applications"][1:])
    assert routes(rendered)["head"] == ("/v2/models/head", "latest")  # the render is kept


def test_latest_n_with_fewer_versions_published_serves_those(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    publish_versions(root, tmp_path, 1)
    pinned = pin_latest_versions(
        render_serve_config(app_config(root, version_policy={"latest_n": 3}))
    )
    assert routes(pinned) == {"head": ("/v2/models/head", 1)}
    assert side_versions(pinned) == {"head": []}


def test_a_cluster_config_takes_specific_versions_and_counts_their_replicas() -> None:
    def cluster_app(policy: dict[str, Any]) -> AppConfig:
        return AppConfig.model_validate(
            {
                "repository": {"root": "/mnt/models"},
                "http": {"host": "0.0.0.0", "admin_host": None},
                "models": [{"name": "head", "num_replicas": 2, "version_policy": policy,
                            "resources": {"num_cpus": 1}}],
                "cluster": {"worker": {"cpus": 2, "memory": "8Gi"}},
            }
        )  # fmt: skip

    app = cluster_app({"specific": [1, 2, 3]})
    profile = ClusterProfile("dev", "unused.yaml", 2, "4Gi", 0, 30).for_app(app)
    check_cluster_app(app, profile)
    assert worker_max_replicas(app, profile) == 3  # 3 versions x 2 replicas, 2 per pod
    with pytest.raises(ValueError, match="latest_n is resolved when a config is deployed"):
        check_cluster_app(cluster_app({"latest_n": 2}), profile)


def test_a_canary_needs_a_pinned_stable_version_of_another_number() -> None:
    with pytest.raises(ValidationError, match="needs the stable version pinned"):
        app_config("/r", canary={"version": 3, "percent": 10})
    with pytest.raises(ValidationError, match="needs the stable version pinned"):
        app_config("/r", version=3, canary={"version": 3, "percent": 10})
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        app_config("/r", version=2, canary={"version": 3, "percent": 101})


def test_a_canary_renders_its_own_application_and_the_stable_one_forwards_a_share() -> None:
    config = render_serve_config(app_config("/r", version=2, canary={"version": 3, "percent": 25}))
    assert routes(config) == {
        "head": ("/v2/models/head", 2),
        "head.canary": ("/v2/models/head/versions/3", 3),
    }
    stable, canary = config["applications"][1:]
    # The stable version's canary settings are in its user_config: no restart to change.
    user_config = stable["deployments"][0]["user_config"]
    assert user_config["canary"] == {"app": "head.canary", "version": 3, "percent": 25.0}
    assert user_config["served_versions"] == canary["args"]["served_versions"] == [2, 3]
    assert stable["args"] == {**canary["args"], "version": 2, "served_versions": None}
    assert "canary" not in canary["deployments"][0]["user_config"]
    assert side_versions(config) == {"head": ["head.canary"]}


def test_promote_and_rollback_edit_only_the_models_canary() -> None:
    raw = {"models": [{"name": "head", "version": 2, "canary": {"version": 3, "percent": 5}},
                      {"name": "other"}]}  # fmt: skip
    assert end_canary(raw, "head", promote=True)["models"] == [
        {"name": "head", "version": 3}, {"name": "other"}
    ]  # fmt: skip
    assert end_canary(raw, "head", promote=False)["models"][0] == {"name": "head", "version": 2}
    assert raw["models"][0]["canary"] == {"version": 3, "percent": 5}  # the input is kept
    with pytest.raises(DeployError, match="model 'other' has no canary"):
        end_canary(raw, "other", promote=True)
    with pytest.raises(DeployError, match=r"no model 'x' in the config \(models: \['head'"):
        end_canary(raw, "x", promote=False)


def test_the_canary_share_follows_the_draws() -> None:
    draws = iter([0.0, 0.249, 0.25, 0.9])
    forwarder = CanaryForwarder(
        CanaryArgs(app="head.canary", version=3, percent=25), HttpConfig(),
        stable=object(),  # due() never asks the stable version
        handle_factory=lambda app: None, draw=lambda: next(draws),
    )  # fmt: skip
    assert [forwarder.due() for _ in range(4)] == [True, True, False, False]
