"""Does a cluster config's Serve demand fit its worker pods? ``serve-app render-k8s``
asks before it writes, as ``serve-app validate`` does for the local machine.

Every deployment of the rendered Serve config (models, pipeline routers, the server
application, job consumers: :mod:`serve_app.deploy.demand`) is compared with the
worker pod shape of the profile (``cluster.worker``):

- a replica that fits no worker pod (more CPU, GPU or memory than one pod gives Ray, or
  a custom resource no worker has) would stay pending forever: an error naming the
  deployment and the resource;
- the demand at full scale (every ``max_replicas``) beyond the rendered
  ``maxReplicas`` worker pods times their shape means autoscaling stops before every
  deployment reaches its maximum: a warning.

Pure functions of the config and the profile; nothing touches the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.config import AppConfig, load_app_config
from serve_app.deploy.demand import (
    DeploymentDemand,
    deployment_demands,
    format_resources,
    shortfall,
    total,
)
from serve_app.deploy.serve_config import render_serve_config
from serve_app.k8s.profiles import PROFILES, ClusterProfile

OBJECT_STORE_SHARE = 0.3
"""Share of a node's memory Ray 2.60 gives its object store by default
(``ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION``); Ray's schedulable ``memory``
resource is what is left, so a pod gives replicas at most 70 % of its memory."""
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?|[kmu])?$")
_UNITS = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
    "m": 1e-3, "u": 1e-6,
}  # fmt: skip
_SOURCES = {
    "CPU": "cluster.worker.cpus",
    "GPU": "cluster.worker.gpus",
    "memory": "cluster.worker.memory less Ray's object store, 30 %",
}
"""Where each resource of a worker pod is set, for the messages."""


def quantity_bytes(quantity: str) -> float:
    """Bytes of a Kubernetes memory quantity (``4Gi``, ``512M``, ``1073741824``).

    Raises:
        ValueError: not a quantity.
    """
    match = _QUANTITY.match(quantity.strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def worker_capacity(profile: ClusterProfile) -> dict[str, float]:
    """What one worker pod gives Ray's scheduler: its CPUs, GPUs, and its memory less
    the object store (an upper bound: Ray counts the memory free when it starts)."""
    memory_bytes = quantity_bytes(profile.worker_memory) * (1 - OBJECT_STORE_SHARE)
    out = {"CPU": float(profile.worker_cpus), "memory": memory_bytes}
    if profile.worker_gpus:
        out["GPU"] = float(profile.worker_gpus)
    return out


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB" if key == "memory" else f"{value:g}"


def replica_misfits(
    demands: list[DeploymentDemand], capacity: dict[str, float], profile: str
) -> list[str]:
    """One error line per deployment resource that one replica needs beyond a worker."""
    errors = []
    for d in demands:
        for key in shortfall(d.per_replica, capacity):
            have = capacity.get(key, 0.0)
            pod = (
                f"a {profile} worker pod gives Ray {key} {_amount(key, have)} ({_SOURCES[key]})"
                if have
                else f"no {profile} worker pod has {key}"
            )
            errors.append(
                f"error: {profile}: {d.app}/{d.deployment}: one replica needs {key} "
                f"{_amount(key, d.per_replica[key])}, {pod}: it would stay pending"
            )
    return errors


def full_scale_warning(
    demands: list[DeploymentDemand], capacity: dict[str, float], max_workers: int, profile: str
) -> list[str]:
    """A warning line when every deployment at ``max_replicas`` needs more than
    ``max_workers`` pods give (summed; bin-packing can only need more)."""
    pods = {k: v * max_workers for k, v in capacity.items()}
    full = total(demands, "full")
    short = shortfall(full, pods)
    if not short:
        return []
    return [
        f"warning: {profile}: at full scale (every max_replicas) the deployments need "
        f"{format_resources(full)}, more than {max_workers} worker pod"
        f"{'' if max_workers == 1 else 's'} (maxReplicas) of {format_resources(capacity)} "
        f"give ({format_resources(short)} short): "
        "autoscaling stops before every deployment reaches max_replicas"
    ]


@dataclass
class FitReport:
    """What ``render-k8s`` says about one profile's demand against its worker pods."""

    profile: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_fit(app: AppConfig, profile: ClusterProfile) -> FitReport:
    """The demand of ``app``'s Serve config against the worker pods of ``profile``
    (with ``app.cluster.worker``'s shape when it sets one).

    Raises:
        ValueError: ``cluster.worker.memory`` is not a Kubernetes quantity.
    """
    from serve_app.k8s.render import worker_max_replicas

    profile = profile.for_app(app)
    demands = deployment_demands(render_serve_config(app))
    capacity = worker_capacity(profile)
    report = FitReport(profile.name, replica_misfits(demands, capacity, profile.name))
    if not report.errors:  # the pod count packs replicas, so it needs each to fit
        max_workers = worker_max_replicas(app, profile)
        report.warnings = full_scale_warning(demands, capacity, max_workers, profile.name)
    return report


def fit_reports(root: str | Path = ".") -> list[FitReport]:
    """:func:`check_fit` of every cluster profile's AppConfig under ``root``."""
    return [check_fit(load_app_config(Path(root) / p.app_config), p) for p in PROFILES]
