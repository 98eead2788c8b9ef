"""``serve-app deploy --promote/--rollback`` keeps someone else's change: it refuses to
deploy over a config Serve runs that is not the one it started from (before each of its
two PUTs), and rewrites the AppConfig file atomically, keeping its mode. No Ray: a
stand-in of Serve's REST API that records configs the way Serve does (its schema)."""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app import cli
from serve_app.constants import LOCAL_RAY_ENV
from serve_app.deploy.guard import config_drift, normalized_apps, write_atomically
from serve_app.deploy.rollout import render_for_deploy, rollout_ending_canary
from serve_app.errors import DeployError


class StandInServe:
    """Serve's REST API: runs ``config``; a PUT replaces it. ``meanwhile`` runs before
    the second read that follows a PUT (after the command saw its step rolled out)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.apps: dict[str, dict[str, Any]] = {}
        self.run(config)
        self.sent: list[dict[str, Any]] = []
        self.meanwhile: Callable[[StandInServe], None] | None = None
        self._reads_since_put = 0

    def run(self, config: dict[str, Any]) -> None:
        self.apps = normalized_apps(config)

    def applications(self) -> dict[str, Any]:
        self._reads_since_put += 1
        if self.sent and self._reads_since_put == 2 and self.meanwhile is not None:
            self.meanwhile(self)
            self.meanwhile = None
        return {
            "applications": {
                name: {
                    "status": "RUNNING",
                    "message": "",
                    "deployments": {},
                    "deployed_app_config": copy.deepcopy(app),
                }  # fmt: skip
                for name, app in self.apps.items()
            }
        }

    def deploy(self, config: dict[str, Any]) -> None:
        self.sent.append(copy.deepcopy(config))
        self.run(config)
        self._reads_since_put = 0


def raw_config(root: Path, **head: Any) -> dict[str, Any]:
    return {
        "repository": {"root": str(root)},
        "models": [{"name": "head", **head}, {"name": "other", "version": 1}],
    }


def rendered(raw: dict[str, Any]) -> dict[str, Any]:
    from serve_app.config import AppConfig

    return render_for_deploy(AppConfig.model_validate(raw))


CANARY = {"version": 3, "percent": 25}


def percent_of(serve: StandInServe) -> float:
    (deployment,) = serve.apps["head"]["deployments"]
    return float(deployment["user_config"]["canary"]["percent"])


def test_promotion_deploys_twice_when_serve_runs_what_it_started_from(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, version=2, canary=CANARY)
    before = rendered(raw)
    after = rendered({**raw, "models": [{"name": "head", "version": 3}, raw["models"][1]]})
    serve = StandInServe(before)
    rollout_ending_canary(serve, before, after, verify=False, wait_s=5, say=lambda _: None)
    assert [sorted(a["name"] for a in c["applications"]) for c in serve.sent] == [
        sorted(a["name"] for a in before["applications"]),
        sorted(a["name"] for a in after["applications"]),
    ]
    assert "head.canary" not in serve.apps


def test_a_config_changed_on_serve_is_refused_naming_the_difference(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, version=2, canary=CANARY)
    before = rendered(raw)
    after = rendered({**raw, "models": [{"name": "head", "version": 3}, raw["models"][1]]})
    serve = StandInServe(
        rendered(raw_config(tmp_path, version=2, canary={**CANARY, "percent": 50}))
    )
    with pytest.raises(DeployError) as e:
        rollout_ending_canary(
            serve, before, after, verify=False, wait_s=5, say=lambda _: None, source="app.yaml"
        )
    assert str(e.value) == (
        "not deployed: the config Serve runs is not the one app.yaml gives (another deploy "
        "changed it, or a version was published since the last deploy): application "
        "'head': deployments[ModelDeployment].user_config.canary.percent: Serve runs 50.0, "
        "the command started from 25.0. Nothing was changed. To keep what Serve runs, put "
        "it in app.yaml and retry; to replace it, run `serve-app deploy --config app.yaml` "
        "first, then retry."
    )
    assert (serve.sent, percent_of(serve)) == ([], 50.0)


def test_a_change_between_the_two_steps_stops_the_second(tmp_path: Path) -> None:
    raw = raw_config(tmp_path, version=2, canary=CANARY)
    before = rendered(raw)
    after = rendered({**raw, "models": [{"name": "head", "version": 3}, raw["models"][1]]})
    serve = StandInServe(before)

    def another_deploy(s: StandInServe) -> None:  # someone deploys "other" v2 meanwhile
        s.apps["other"]["args"]["version"] = 2

    serve.meanwhile = another_deploy
    with pytest.raises(DeployError) as e:
        rollout_ending_canary(serve, before, after, verify=False, wait_s=5, say=lambda _: None)
    assert str(e.value).startswith(
        "not deployed: the config Serve runs is not the one the first step of this command "
        "gives (another deploy changed it, or a version was published since the last "
        "deploy): application 'other': args.version: Serve runs 2, the command started "
        "from 1. Nothing was changed."
    )
    assert len(serve.sent) == 1 and "head.canary" in serve.apps


def test_drift_names_applications_added_or_missing_and_ignores_deleting_ones(
    tmp_path: Path,
) -> None:
    config = rendered(raw_config(tmp_path, version=2))
    serve = StandInServe(config)
    apps = serve.applications()
    apps["applications"]["extra"] = {"status": "RUNNING", "deployed_app_config": {}}
    apps["applications"]["gone.canary"] = {"status": "DELETING", "deployed_app_config": None}
    del apps["applications"]["other"]
    assert config_drift(config, apps) == [
        "application 'extra' runs on Serve but is not in the config",
        "application 'other' does not run on Serve",
    ]


def test_a_relative_root_deployed_by_the_demo_is_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = rendered(raw_config(Path("repo"), version=2))  # absolute roots
    demo = copy.deepcopy(config)
    for app in demo["applications"]:
        if "repository" in app["args"]:
            app["args"]["repository"]["root"] = "./repo"
    assert config_drift(config, StandInServe(demo).applications()) == []


# --- the file ------------------------------------------------------------------------


def test_the_file_is_replaced_atomically_keeping_its_mode_and_link(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text("old: 1\n")
    target.chmod(0o640)
    link = tmp_path / "app.yaml"
    link.symlink_to(target)
    write_atomically(link, "new: 2\n", expected_before="old: 1\n")
    assert (link.is_symlink(), target.read_text()) == (True, "new: 2\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml", "real.yaml"]


def test_a_failed_replace_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("old: 1\n")

    def refuse(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, "new: 2\n")
    assert (path.read_text(), [p.name for p in tmp_path.iterdir()]) == ("old: 1\n", ["app.yaml"])


def test_a_file_edited_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("edited: by someone\n")
    with pytest.raises(DeployError) as e:
        write_atomically(path, "new: 2\n", expected_before="old: 1\n")
    assert str(e.value) == (
        f"{path} changed while deploying (edited by someone else?): not rewritten. Serve "
        f"runs the new config; make {path} say so by hand:\nnew: 2\n"
    )
    assert path.read_text() == "edited: by someone\n"


# --- the command ---------------------------------------------------------------------


def run_cli(
    config_path: Path, serve: StandInServe, monkeypatch: pytest.MonkeyPatch, *args: str
) -> int:
    for key, value in LOCAL_RAY_ENV.items():  # main sets them; restored after the test
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("serve_app.deploy.rollout.ServeRestApi", lambda *_: serve)
    argv = ["deploy", "--config", str(config_path), "--no-verify", "--wait-s", "5", *args]
    return cli.main(argv)


def test_the_command_refuses_exits_nonzero_and_keeps_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    text = yaml.safe_dump(raw_config(tmp_path / "repo", version=2, canary=CANARY))
    path.write_text(text)
    path.chmod(0o600)
    changed = raw_config(tmp_path / "repo", version=2, canary={"version": 3, "percent": 50})
    serve = StandInServe(rendered(changed))
    assert run_cli(path, serve, monkeypatch, "--promote", "head") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: not deployed: the config Serve runs is not the one "
        f"{path} gives (another deploy changed it, or a version was published since the "
        "last deploy): application 'head': deployments[ModelDeployment].user_config."
        "canary.percent: Serve runs 50.0, the command started from 25.0."
    )
    assert (path.read_text(), serve.sent) == (text, [])


def test_the_command_promotes_and_rewrites_the_file_with_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    raw = raw_config(tmp_path / "repo", version=2, canary=CANARY)
    path.write_text(yaml.safe_dump(raw))
    path.chmod(0o640)
    serve = StandInServe(rendered(raw))
    assert run_cli(path, serve, monkeypatch, "--promote", "head") == 0
    assert f"updated {path} (YAML comments are not kept)" in capsys.readouterr().out
    assert yaml.safe_load(path.read_text())["models"][0] == {"name": "head", "version": 3}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert (len(serve.sent), serve.apps["head"]["args"]["version"]) == (2, 3)


def test_serve_records_the_configs_logging_config_in_each_application(tmp_path: Path) -> None:
    # Serve's controller (apply_config, Ray 2.60) gives the config's logging_config to
    # every application without one; its deployed_app_config then carries it.
    config = rendered(raw_config(tmp_path, version=2))
    assert config["logging_config"] == {
        "encoding": "TEXT", "log_level": "INFO", "enable_access_log": False,
    }  # fmt: skip
    apps = normalized_apps(config)
    assert {n: a["logging_config"] for n, a in apps.items()} == {
        n: config["logging_config"] for n in ("oip", "head", "other")
    }
    assert "max_constructor_retry_count" not in apps["head"]["deployments"][0]  # dropped
