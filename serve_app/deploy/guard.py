"""What keeps ``serve-app deploy --promote/--rollback`` from losing someone else's change.

Serve's REST API replaces the whole config on every ``PUT`` and has no version to
compare and swap. So before each ``PUT`` the command compares what Serve runs (each
application's deployed config, as ``GET /api/serve/applications/`` reports it) with
what the command started from, and refuses when they differ, naming each difference.
The AppConfig file is then rewritten atomically (a temporary file in its folder, then
``os.replace``), keeping its mode, and only if nobody edited it meanwhile.

A window remains between the ``GET`` and the ``PUT`` (milliseconds; Serve offers no
conditional ``PUT``); the long one (verifying weights, waiting for a rollout step) is
covered.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from serve_app.errors import DeployError

MAX_DIFFERENCES = 8
"""Differences named per refusal (the rest are counted)."""
_ABSENT = "(absent)"


def normalized_apps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each application of a Serve config as Serve records it, the way the controller
    does it in ``apply_config`` (Ray 2.60): through its schema (unknown fields dropped),
    the config's ``logging_config`` given to applications without one, then dumped
    without unset fields; the REST API reports that as ``deployed_app_config``."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    out = {}
    for app in schema.applications:
        if app.logging_config is None and schema.logging_config:
            app.logging_config = schema.logging_config
        out[app.name] = app.model_dump(mode="json", exclude_unset=True)
    return out


def _comparable(value: Any) -> Any:
    """Lists of named items (deployments) as dicts by name, so differences name them;
    repository roots resolved (``serve-app demo`` deploys some relative, this command
    absolute: the same folder)."""
    if isinstance(value, dict):
        out = {k: _comparable(v) for k, v in value.items()}
        root = out.get("root")
        if "hash_workers" in out and isinstance(root, str):  # a RepositoryConfig
            out["root"] = str(Path(root).resolve())
        return out
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "name" in v for v in value):
            return {f"[{v['name']}]": _comparable(v) for v in value}
        return [_comparable(v) for v in value]
    return value


def _show(value: Any) -> str:
    text = value if value is _ABSENT else json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _differences(runs: Any, expected: Any, path: str) -> list[str]:
    if isinstance(runs, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(runs) | set(expected)):
            sep = "" if key.startswith("[") or not path else "."
            out += _differences(
                runs.get(key, _ABSENT), expected.get(key, _ABSENT), f"{path}{sep}{key}"
            )
        return out
    if runs == expected:
        return []
    return [f"{path}: Serve runs {_show(runs)}, the command started from {_show(expected)}"]


def config_drift(expected: dict[str, Any], applications: dict[str, Any]) -> list[str]:
    """Each difference between the Serve config ``expected`` and what Serve runs
    (``applications``: the REST API's ``GET /api/serve/applications/``); empty when
    Serve runs exactly ``expected``. Applications being deleted are left out."""
    running = {
        name: app
        for name, app in (applications.get("applications") or {}).items()
        if app.get("status") != "DELETING"
    }
    wanted = normalized_apps(expected)
    out = []
    for name in sorted(set(running) | set(wanted)):
        if name not in running:
            out.append(f"application {name!r} does not run on Serve")
            continue
        if name not in wanted:
            out.append(f"application {name!r} runs on Serve but is not in the config")
            continue
        deployed = running[name].get("deployed_app_config")
        if deployed is None:
            out.append(f"application {name!r}: Serve has no record of its config")
            continue
        diffs = _differences(_comparable(deployed), _comparable(wanted[name]), "")
        out += [f"application {name!r}: {d}" for d in diffs]
    return out


def check_unchanged(expected: dict[str, Any], applications: dict[str, Any], source: str) -> None:
    """Refuse to deploy over a config that is not ``expected`` (what the command read
    from ``source`` or deployed itself).

    Raises:
        DeployError: Serve runs something else; names the differences and what to do.
    """
    drift = config_drift(expected, applications)
    if not drift:
        return
    shown = drift[:MAX_DIFFERENCES]
    if len(drift) > len(shown):
        shown.append(f"... and {len(drift) - len(shown)} more")
    raise DeployError(
        f"not deployed: the config Serve runs is not the one {source} gives (another "
        "deploy changed it, or a version was published since the last deploy): "
        + "; ".join(shown)
        + f". Nothing was changed. To keep what Serve runs, put it in {source} and retry; "
        f"to replace it, run `serve-app deploy --config {source}` first, then retry."
    )


def write_atomically(path: Path, text: str, expected_before: str | None = None) -> None:
    """Replace the file at ``path`` (a link: its target) with ``text`` in one step,
    keeping its mode: a reader sees the old file or the new one, never a part.

    Args:
        path: The file.
        text: Its new content.
        expected_before: What the file held when it was read; when it holds something
            else now, nothing is written.

    Raises:
        DeployError: the file changed since it was read (someone edited it).
    """
    target = path.resolve()
    if expected_before is not None and target.read_text() != expected_before:
        raise DeployError(
            f"{path} changed while deploying (edited by someone else?): not rewritten. "
            f"Serve runs the new config; make {path} say so by hand:\n{text}"
        )
    mode = target.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
