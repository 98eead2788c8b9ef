"""What a change of the generated RayService does to a running cluster (KubeRay v1.7.0).

``serve-app render-k8s`` compares the generated patch it is about to write with the one
on disk and sorts every difference into one of four kinds, so nobody learns from a GPU
bill or a silent no-op what a one-line config change meant:

- ``in-place``: KubeRay sends the new ``serveConfigV2`` to the running cluster and Serve
  applies it without restarting replicas (Ray's ``LightWeight``/``NeedsReconfigure``/
  ``NeedsActorReconfigure`` deployment options, routes, new or removed applications).
- ``rolling``: also in place, but Serve replaces the deployment's replicas one at a time
  (``HeavyWeight`` options: ``ray_actor_options``, application ``args``...).
- ``not-applied``: accepted and stored, but the running cluster never sees it. KubeRay's
  spec hash skips worker ``replicas``/``minReplicas``/``maxReplicas`` (and tolerations,
  scheduling gates), and Serve keeps the ``http_options``, ``proxy_location`` and
  ``grpc_options`` it started with (Ray 2.60 ``serve_head.validate_http_options`` only
  logs a warning). They take effect with the next new cluster.
- ``new-cluster``: any other ``rayClusterConfig`` change. With ``upgradeStrategy:
  NewCluster`` KubeRay builds a second RayCluster from scratch, at full size, and moves
  traffic when its applications are RUNNING (``kuberay/UPGRADES.md``).

Pure functions over the JSON 6902 operations of ``rayservice.generated.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

ChangeKind = Literal["in-place", "rolling", "not-applied", "new-cluster"]
ORDER: tuple[ChangeKind, ...] = ("in-place", "rolling", "not-applied", "new-cluster")

# Ray 2.60 ``DeploymentConfig`` fields whose change needs no replica restart (their
# ``update_type`` is LightWeight, NeedsReconfigure or NeedsActorReconfigure). A unit test
# compares this with Ray's own table, so a Ray upgrade that moves one fails loudly.
LIGHT_DEPLOYMENT_OPTIONS = frozenset({
    "num_replicas", "max_ongoing_requests", "max_queued_requests", "backpressure_config",
    "user_config", "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s",
    "health_check_period_s", "health_check_timeout_s", "autoscaling_config",
    "request_router_config", "logging_config", "max_constructor_retry_count",
    "rolling_update_percentage", "max_surge_percent",
})  # fmt: skip
# Serve start-up options: fixed for the life of a Serve instance.
SERVE_STARTUP_OPTIONS = ("http_options", "proxy_location", "grpc_options")
# rayClusterConfig paths KubeRay v1.7's cluster hash ignores (``generateHashWithoutReplicas
# AndWorkersToDelete`` plus tolerations and scheduling gates since v1.6).
_UNHASHED = re.compile(
    r"^/spec/rayClusterConfig/workerGroupSpecs/\d+/"
    r"(replicas|minReplicas|maxReplicas|scaleStrategy(/.*)?"
    r"|template/spec/(tolerations|schedulingGates)(/.*)?)$"
)


@dataclass(frozen=True)
class Change:
    """One difference between two renders and what it does to a running RayService."""

    kind: ChangeKind
    """in-place, rolling, not-applied or new-cluster (see the module docstring)."""
    where: str
    """What changed: a patch path, or ``serveConfigV2 <app>/<deployment> <option>``."""
    detail: str
    """The old and new value, shortened, and why it has this kind."""


def _short(value: Any, limit: int = 60) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, str) and "\n" in value:
        return f"<text, {value.count(chr(10))} lines>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(before: Any, after: Any) -> str:
    """``old -> new`` for scalars; the changed leaves for mappings and lists."""
    if isinstance(before, dict | list) and isinstance(after, dict | list):
        return _diff_keys(before, after)
    return f"{_short(before)} -> {_short(after)}"


_ABSENT = object()


def _by_path(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Patch path -> value; repeated ``.../-`` appends become a list under one path."""
    out: dict[str, Any] = {}
    for op in ops:
        path = op["path"]
        if path.endswith("/-"):
            out.setdefault(path, []).append(op.get("value"))
        else:
            out[path] = op.get("value")
    return out


def classify_patch_change(
    old_ops: list[dict[str, Any]], new_ops: list[dict[str, Any]]
) -> list[Change]:
    """Every difference between two generated RayService patches, classified.

    Args:
        old_ops: The JSON 6902 operations on disk (what the cluster runs, if applied).
        new_ops: The operations about to be written.

    Returns:
        The changes, in path order; empty when the two patches are equal.
    """
    old, new = _by_path(old_ops), _by_path(new_ops)
    changes: list[Change] = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path, _ABSENT), new.get(path, _ABSENT)
        if before == after:
            continue
        if path == "/spec/serveConfigV2":
            changes += classify_serve_config_change(_load(before), _load(after))
            continue
        detail = _describe(before, after)
        if _UNHASHED.match(path):
            changes.append(Change(
                "not-applied", path,
                f"{detail}; KubeRay v1.7 keeps the running RayCluster's value (not part of "
                "its spec hash): patch the RayCluster too, or ship it with a new cluster",
            ))  # fmt: skip
        elif path.startswith("/spec/rayClusterConfig"):
            changes.append(Change(
                "new-cluster", path,
                f"{detail}; a new RayCluster is built and takes over (room for two)",
            ))  # fmt: skip
        else:
            changes.append(Change("in-place", path, f"{detail}; a RayService setting"))
    return changes


def _load(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    data = yaml.safe_load(text)
    return data if isinstance(data, dict) else {}


def _changed(
    old: dict[str, Any], new: dict[str, Any], skip: set[str]
) -> Iterator[tuple[str, Any, Any]]:
    """``(key, before, after)`` for each key whose value differs (``_ABSENT`` if none)."""
    for key in sorted((old.keys() | new.keys()) - skip):
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if before != after:
            yield key, before, after


def classify_serve_config_change(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Differences between two Serve configs (``serveConfigV2``), classified."""
    changes: list[Change] = []
    for key, before, after in _changed(old, new, {"applications"}):
        where = f"serveConfigV2 {key}"
        detail = _describe(before, after)
        if key in SERVE_STARTUP_OPTIONS:
            changes.append(Change(
                "not-applied", where,
                f"{detail}; Serve keeps the options it started with until a new cluster",
            ))  # fmt: skip
        else:
            changes.append(Change("in-place", where, detail))
    old_apps = {a.get("name", "default"): a for a in old.get("applications") or []}
    new_apps = {a.get("name", "default"): a for a in new.get("applications") or []}
    for name in sorted(old_apps.keys() | new_apps.keys()):
        a, b = old_apps.get(name), new_apps.get(name)
        if a == b:
            continue
        if a is None or b is None:
            what = "deployed" if a is None else "deleted"
            changes.append(Change("in-place", f"serveConfigV2 {name}", f"application {what}"))
            continue
        changes += _app_changes(name, a, b)
    return changes


def _app_changes(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    for key, before, after in _changed(old, new, {"deployments", "name"}):
        where = f"serveConfigV2 {name} {key}"
        if key == "route_prefix":
            changes.append(Change("in-place", where, f"{_short(before)} -> {_short(after)}"))
        else:  # import_path, args, runtime_env: the application is rebuilt
            changes.append(Change(
                "rolling", where,
                f"{_diff_keys(before, after)}; the application is rebuilt and its "
                "deployments' replicas replaced one at a time",
            ))  # fmt: skip
    old_deps = {d["name"]: d for d in old.get("deployments") or []}
    new_deps = {d["name"]: d for d in new.get("deployments") or []}
    for dep in sorted(old_deps.keys() | new_deps.keys()):
        for key, before, after in _changed(old_deps.get(dep, {}), new_deps.get(dep, {}), {"name"}):
            where = f"serveConfigV2 {name}/{dep} {key}"
            detail = _describe(before, after)
            if key in LIGHT_DEPLOYMENT_OPTIONS:
                changes.append(Change("in-place", where, f"{detail}; no replica restart"))
            else:
                changes.append(Change(
                    "rolling", where, f"{detail}; replicas replaced one at a time"))  # fmt: skip
    return changes


def _diff_keys(before: Any, after: Any) -> str:
    """``args: models.0.version 1 -> 2`` style summary of a nested change."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(a.keys() | b.keys()):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{path}.{k}" if path else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}.{i}" if path else str(i))
        elif a != b:
            diffs.append(f"{path or '(value)'} {_short(a, 30)} -> {_short(b, 30)}")

    walk(before, after, "")
    shown = ", ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
    return shown


def verdict(changes: list[Change]) -> str:
    """One line: what applying all ``changes`` does to a running RayService."""
    if not changes:
        return "no change"
    kinds = {c.kind for c in changes}
    if "new-cluster" in kinds:
        text = (
            "NEW CLUSTER: KubeRay builds a second RayCluster at full size (room for two, GPUs "
            "included) and moves all traffic to it at min_replicas once its apps are RUNNING"
            " (the new cluster takes every change listed)"
        )
    elif "rolling" in kinds:
        text = "in place, with replicas replaced one at a time (no new cluster)"
    elif "in-place" in kinds:
        text = "in place, no replica restart"
    else:
        text = "nothing reaches the running cluster"
    if "not-applied" in kinds and "new-cluster" not in kinds:
        text += "; NOT APPLIED to the running cluster: " + ", ".join(
            c.where for c in changes if c.kind == "not-applied"
        )
    return text


def format_changes(overlay: str, changes: list[Change]) -> str:
    """The report ``render-k8s`` prints for one overlay."""
    lines = [f"{overlay}: {verdict(changes)}"]
    for c in sorted(changes, key=lambda c: (ORDER.index(c.kind), c.where)):
        lines.append(f"  {c.kind:<11} {c.where}: {c.detail}")
    return "\n".join(lines)


def pending_changes(root: str | Path = ".") -> dict[str, list[Change]]:
    """Overlay folder -> changes between its generated RayService patch on disk and the
    one ``render-k8s`` would write now (an overlay without one is a first render: skipped)."""
    from serve_app.k8s.render import render_k8s_files

    root = Path(root)
    out: dict[str, list[Change]] = {}
    for path, text in render_k8s_files(root).items():
        if path.name != "rayservice.generated.yaml":
            continue
        target = root / path
        if not target.exists():
            continue
        old_ops = yaml.safe_load(target.read_text(encoding="utf-8")) or []
        out[str(path.parent)] = classify_patch_change(old_ops, yaml.safe_load(text) or [])
    return out
