"""``serve-app deploy``'s logic against a stand-in of Serve's REST API (no Ray): the
pre-deploy check, what it sends, and how it waits (the real API: test_rollout in
tests/integration)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from serve_app.config import AppConfig
from serve_app.deploy.rollout import deployed_versions, preflight, rollout, wait_rolled
from serve_app.deploy.serve_config import render_serve_config
from serve_app.deploy.versions import pin_latest_versions
from serve_app.errors import DeployError
from serve_app.repository import publish
from serve_app.repository.manifest import Architecture

ARCH = Architecture(name="mlp", kwargs={"in_features": 4, "hidden": [], "out_features": 4})


class FakeServe:
    """Serve's REST API as a sequence of states: each ``applications()`` call advances
    one step through ``script`` (a list of {app: status}); a deploy records the config."""

    def __init__(self, running: dict[str, Any] | None, script: list[dict[str, str]]) -> None:
        self.deployed = running
        self.script = script
        self.calls = 0
        self.sent: list[dict[str, Any]] = []

    def applications(self) -> dict[str, Any]:
        config = self.deployed
        apps: dict[str, Any] = {}
        if config is not None:
            step = self.script[min(self.calls, len(self.script) - 1)] if self.sent else {}
            for app in config["applications"]:
                status = step.get(app["name"], "RUNNING")
                apps[app["name"]] = {
                    "status": status,
                    "message": "rolling update failed" if status == "DEPLOY_FAILED" else "",
                    "deployed_app_config": copy.deepcopy(app),
                    "deployments": {"ModelDeployment": {"message": "IntegrityError: bad file"}}
                    if status == "DEPLOY_FAILED"
                    else {},
                }
        if self.sent:
            self.calls += 1
        return {"applications": apps}

    def deploy(self, config: dict[str, Any]) -> None:
        self.sent.append(config)
        self.deployed = copy.deepcopy(config)


def repository(tmp_path: Path, versions: int) -> tuple[Path, dict[str, Any]]:
    weights = tmp_path / "w.safetensors"
    save_file({"net.0.weight": torch.zeros(4, 4), "net.0.bias": torch.zeros(4)}, str(weights))
    root = tmp_path / "repo"
    for _ in range(versions):
        publish(weights, root, "head", architecture=ARCH)
    app = AppConfig.model_validate(
        {"repository": {"root": str(root)}, "models": [{"name": "head"}]}
    )
    return root, pin_latest_versions(render_serve_config(app))


def test_preflight_names_a_corrupt_file_and_passes_good_versions(tmp_path: Path) -> None:
    root, config = repository(tmp_path, 2)
    assert preflight(config) == []
    weights = root / "head" / "2" / "w.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)
    (error,) = preflight(config)
    assert error.startswith("head: model 'head' version 2: sha256 mismatch for ")
    assert str(weights) in error
    assert preflight(config, hashes=False) == []  # same size: only the hash tells


def test_rollout_reports_old_and_new_versions_and_waits_for_running(tmp_path: Path) -> None:
    _, v2 = repository(tmp_path, 2)
    v1 = copy.deepcopy(v2)
    v1["applications"][1]["args"]["version"] = 1
    serve = FakeServe(v1, [{"head": "DEPLOYING"}, {"head": "DEPLOYING"}, {}])
    said: list[str] = []
    changes = rollout(
        serve,
        v2,
        verify=False,
        wait_s=5,
        say=said.append,
    )
    assert changes == {"head": (1, 2)}
    assert said[0] == "head: version 1 -> 2"
    assert serve.sent == [v2]
    assert deployed_versions(serve.applications()) == {"head": 2}
    assert any("DEPLOYING" in s for s in said) and "RUNNING" in said[-1]


def test_rollout_refuses_before_deploying_when_a_version_is_corrupt(tmp_path: Path) -> None:
    root, config = repository(tmp_path, 1)
    (root / "head" / "1" / "w.safetensors").unlink()
    serve = FakeServe(None, [{}])
    with pytest.raises(DeployError, match="not deployed, the running versions keep serving: "
                       "head: model 'head' version 1: file missing: "):  # fmt: skip
        rollout(serve, config, wait_s=5, say=lambda _: None)
    assert serve.sent == []


def test_wait_fails_with_serves_reasons_and_ignores_the_previous_config(tmp_path: Path) -> None:
    _, config = repository(tmp_path, 1)
    serve = FakeServe(config, [{"head": "DEPLOY_FAILED"}])
    newer = copy.deepcopy(config)
    newer["applications"][1]["args"]["version"] = 7
    # Before the deploy lands, Serve still reports the old config RUNNING: not rolled.
    with pytest.raises(DeployError, match="not rolled out after 0 s"):
        wait_rolled(serve, newer, timeout_s=0, poll_s=0)
    serve.deploy(newer)
    with pytest.raises(DeployError, match="'head' DEPLOY_FAILED: rolling update failed "
                       r"\| IntegrityError: bad file"):  # fmt: skip
        wait_rolled(serve, newer, timeout_s=5, poll_s=0)
