"""``serve-app deploy``: roll a running local Serve (``serve-app demo``, ``ray start``) to
the AppConfig on disk, the way ``serve deploy`` does, plus what a model rollout needs:

1. render the config and pin every ``version: latest`` to the highest published version
   (so a newly published version is a config change, hence a rolling update);
2. verify every version about to be deployed (sizes and sha256) *before* touching the
   cluster: a corrupt or partial new version is refused, the old one keeps serving;
3. ``PUT /api/serve/applications/`` on the dashboard, with the Ray token;
4. wait until Serve reports the new config RUNNING, or fail with Serve's reason.

On a KubeRay cluster the RayService owns the config (KubeRay re-submits
``serveConfigV2``): roll out there with ``kuberay/scripts/rollout-model-version.sh``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from serve_app.config import AppConfig
from serve_app.deploy.guard import check_unchanged
from serve_app.deploy.progress import concise
from serve_app.errors import DeployError, RepositoryError
from serve_app.repository.loader import ModelRepository

APPLICATIONS_PATH = "/api/serve/applications/"


class ServeApi(Protocol):
    """The two calls of Serve's REST API a rollout needs (injected: tests stand in)."""

    def applications(self) -> dict[str, Any]:
        """``GET /api/serve/applications/`` (``ServeInstanceDetails`` as a dict)."""

    def deploy(self, config: dict[str, Any]) -> None:
        """``PUT /api/serve/applications/`` with a full Serve config."""


@dataclass
class ServeRestApi:
    """Serve's REST API on a dashboard, with Ray's token as a bearer token.

    Args:
        address: Dashboard URL, e.g. ``http://127.0.0.1:8265``.
        token: The cluster's auth token (``~/.ray/auth_token`` locally), or None.
        timeout_s: Per-call timeout.
    """

    address: str
    token: str | None
    timeout_s: float = 30.0

    def _call(self, method: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            self.address.rstrip("/") + APPLICATIONS_PATH, data=body, method=method
        )
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:  # noqa: S310
                return bytes(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:2000]
            hint = " (the Ray token is missing or wrong)" if e.code in (401, 403) else ""
            raise DeployError(
                f"{method} {request.full_url}: HTTP {e.code}{hint}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DeployError(
                f"{method} {request.full_url}: {reason} (is Ray running with the "
                "dashboard on that address?)"
            ) from None

    def applications(self) -> dict[str, Any]:
        """The applications Serve reports."""
        return dict(json.loads(self._call("GET")))

    def deploy(self, config: dict[str, Any]) -> None:
        """Submit ``config`` (every application; ones left out are deleted)."""
        self._call("PUT", json.dumps(config).encode())


def model_versions(config: dict[str, Any]) -> dict[str, tuple[str, str, Literal["latest"] | int]]:
    """Each model application of a Serve config: (repository root, folder, version)."""
    out: dict[str, tuple[str, str, Literal["latest"] | int]] = {}
    for app in config.get("applications", []):
        args = app.get("args", {})
        if args.get("kind") == "model":
            folder = args.get("folder") or args["name"]
            out[app["name"]] = (args["repository"]["root"], folder, args.get("version", "latest"))
    return out


def preflight(config: dict[str, Any], hashes: bool = True) -> list[str]:
    """Verify every model version ``config`` deploys; returns one error per bad one
    (each names model, version and file), empty when all verify."""
    errors = []
    for app, (root, folder, version) in model_versions(config).items():
        try:
            ModelRepository(root).verify(folder, version, hashes=hashes)
        except RepositoryError as e:
            errors.append(f"{app}: {e}")
    return errors


def deployed_versions(applications: dict[str, Any]) -> dict[str, Any]:
    """The version each model application was last deployed with (from Serve's own
    record of its config); None where Serve has no model config for it."""
    out = {}
    for name, app in applications.get("applications", {}).items():
        args = ((app.get("deployed_app_config") or {}).get("args")) or {}
        if args.get("kind") == "model":
            out[name] = args.get("version")
    return out


def _rolled(app: dict[str, Any] | None, expected_args: dict[str, Any]) -> bool:
    return bool(app) and ((app or {}).get("deployed_app_config") or {}).get("args") == expected_args


def wait_rolled(
    api: ServeApi,
    config: dict[str, Any],
    timeout_s: float,
    on_progress: Callable[[dict[str, str]], None] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Wait until Serve runs ``config``: every application has it as its deployed
    config and is RUNNING.

    Raises:
        DeployError: an application turned DEPLOY_FAILED or UNHEALTHY (with Serve's
            messages), or the timeout passed.
    """
    expected = {a["name"]: a.get("args", {}) for a in config["applications"]}
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    while True:
        apps = api.applications().get("applications", {})
        states = {}
        for name, args in expected.items():
            app = apps.get(name)
            if not _rolled(app, args):
                states[name] = "PENDING"
                continue
            states[name] = str(app["status"])  # type: ignore[index]
            if states[name] in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployError(f"application {name!r} {states[name]}: {reasons(app)}")
        if states != last and on_progress is not None:
            on_progress(states)
        last = states
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise DeployError(f"not rolled out after {timeout_s:.0f} s: {states}")
        time.sleep(poll_s)


def reasons(app: Any) -> str:
    """An application's message and its deployments' messages, joined."""
    messages = [app.get("message", "")] + [
        d.get("message", "") for d in app.get("deployments", {}).values()
    ]
    return " | ".join(concise(m) for m in messages if m)


def end_canary(raw: dict[str, Any], model: str, promote: bool) -> dict[str, Any]:
    """A copy of the AppConfig dict ``raw`` with ``model``'s canary promoted (its version
    becomes the model's) or rolled back (removed).

    Raises:
        DeployError: no such model, or it has no canary.
    """
    import copy

    out = copy.deepcopy(raw)
    found = [m for m in out.get("models", []) if m.get("name") == model]
    if not found:
        names = [m.get("name") for m in out.get("models", [])]
        raise DeployError(f"no model {model!r} in the config (models: {names})")
    entry = found[0]
    canary = entry.pop("canary", None)
    if canary is None:
        raise DeployError(f"model {model!r} has no canary to promote or roll back")
    if promote:
        entry["version"] = canary["version"]
    return out


def rollout_ending_canary(
    api: ServeApi,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    verify: bool = True,
    wait_s: float = 600.0,
    say: Callable[[str], None] = print,
    source: str = "the config",
) -> dict[str, tuple[Any, Any]]:
    """Deploy ``after`` (a canary promoted or rolled back) in two steps, so that no
    stable replica forwards to a canary application that is already gone (its request
    would wait for Serve's request timeout): first the new stable version beside the
    canary applications of ``before``, then, once it runs, without them. Each step is
    refused unless Serve still runs what precedes it (``before``, then the first step).

    Raises:
        DeployError: Serve runs something else than ``before`` (named, nothing
            deployed), or as ``rollout``.
    """
    import copy

    from serve_app.deploy.version_policy import CANARY_SUFFIX

    names = {a["name"] for a in after["applications"]}
    canaries = [
        a
        for a in before["applications"]
        if a["name"].endswith(CANARY_SUFFIX) and a["name"] not in names
    ]
    step = copy.deepcopy(after)
    step["applications"] += copy.deepcopy(canaries)
    changes = rollout(api, step, verify=verify, wait_s=wait_s, say=say, expect=(before, source))
    if canaries:
        say("removing " + ", ".join(a["name"] for a in canaries))
        first_step = (step, "the first step of this command")
        rollout(api, after, verify=False, wait_s=wait_s, say=say, expect=first_step)
    return changes


def render_for_deploy(app_config: str | Path | AppConfig) -> dict[str, Any]:
    """The Serve config of an AppConfig (or its file) as ``serve-app demo`` deploys it:
    absolute repository roots and every ``latest`` pinned."""
    from serve_app.config import load_app_config
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.deploy.versions import pin_latest_versions

    app = app_config if isinstance(app_config, AppConfig) else load_app_config(app_config)
    config = render_serve_config(app)
    for app in config["applications"]:
        repo = app.get("args", {}).get("repository")
        if repo:
            repo["root"] = str(Path(repo["root"]).resolve())
    return pin_latest_versions(config)


def rollout(
    api: ServeApi,
    config: dict[str, Any],
    *,
    verify: bool = True,
    wait_s: float = 600.0,
    say: Callable[[str], None] = print,
    expect: tuple[dict[str, Any], str] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Deploy ``config`` (pinned) on a running Serve and wait; returns each model
    application's (old, new) version.

    Args:
        api: Serve's REST API.
        config: The Serve config to deploy.
        verify: Verify every version's files first.
        wait_s: How long to wait for Serve to run it.
        say: Where progress lines go.
        expect: ``(config, where it came from)``: deploy only if Serve runs exactly that
            config (checked with the read that precedes the ``PUT``).

    Raises:
        DeployError: a version failed verification (nothing was deployed), Serve does
            not run ``expect`` (nothing was deployed), the API refused, or Serve failed
            the rollout.
    """
    if verify:
        errors = preflight(config)
        if errors:
            raise DeployError(
                "not deployed, the running versions keep serving: " + "; ".join(errors)
            )
    applications = api.applications()
    if expect is not None:
        check_unchanged(expect[0], applications, expect[1])
    before = deployed_versions(applications)
    changes = {
        name: (before.get(name), version)
        for name, (_, _, version) in model_versions(config).items()
    }
    for name, (old, new) in changes.items():
        if old != new:
            say(f"{name}: version {old if old is not None else '(new)'} -> {new}")
    api.deploy(config)
    wait_rolled(api, config, wait_s, on_progress=lambda s: say(f"rolling out: {s}"))
    return changes
