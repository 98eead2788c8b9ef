"""What a Serve config asks of the cluster: CPU, GPU, memory and custom resources of
every replica, at start and at full scale, compared with what a machine has.

At start Serve runs ``num_replicas``, or an autoscaling deployment's ``initial_replicas``
(else ``min_replicas``); at full scale ``max_replicas``. A replica without ``num_cpus``
gets Serve's default, 1 CPU (``ReplicaConfig``); with ``placement_group_bundles`` it
reserves their sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

SERVE_DEFAULT_NUM_CPUS = 1.0
"""Serve's ``num_cpus`` for a replica whose ``ray_actor_options`` set none."""
AUTO_MIN_REPLICAS, AUTO_MAX_REPLICAS = 1, 100
"""Serve's bounds for ``num_replicas: auto`` without an ``autoscaling_config``."""

Scale = Literal["start", "full"]


@dataclass(frozen=True)
class DeploymentDemand:
    """One deployment's resources per replica and its replica counts."""

    app: str
    deployment: str
    per_replica: dict[str, float]
    start_replicas: int
    max_replicas: int

    def replicas(self, scale: Scale) -> int:
        """Replicas at start (num/initial/min) or at full scale (max)."""
        return self.start_replicas if scale == "start" else self.max_replicas


def replica_resources(deployment: dict[str, Any]) -> dict[str, float]:
    """Resources one replica reserves: ``CPU``, ``GPU``, ``memory`` (bytes) and custom
    ones, zero-valued omitted."""
    bundles = deployment.get("placement_group_bundles")
    if bundles:
        out: dict[str, float] = {}
        for bundle in bundles:
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + float(value)
        return {k: v for k, v in out.items() if v}
    options = deployment.get("ray_actor_options") or {}
    cpus = options.get("num_cpus")
    out = {
        "CPU": SERVE_DEFAULT_NUM_CPUS if cpus is None else float(cpus),
        "GPU": float(options.get("num_gpus") or 0),
        "memory": float(options.get("memory") or 0),
    }
    out |= {k: float(v) for k, v in (options.get("resources") or {}).items()}
    return {k: v for k, v in out.items() if v}


def replica_counts(deployment: dict[str, Any]) -> tuple[int, int]:
    """(replicas at start, replicas at full scale) of a deployment."""
    auto = deployment.get("autoscaling_config")
    num = deployment.get("num_replicas", 1 if auto is None else None)
    if isinstance(num, int):
        return num, num
    auto = auto or {}
    low = int(auto.get("min_replicas", AUTO_MIN_REPLICAS if num == "auto" else 1))
    high = int(auto.get("max_replicas", AUTO_MAX_REPLICAS if num == "auto" else 1))
    start = auto.get("initial_replicas")
    return (low if start is None else int(start)), high


def deployment_demands(serve_config: dict[str, Any]) -> list[DeploymentDemand]:
    """Every deployment of a Serve config (``render_serve_config``'s dict)."""
    out = []
    for app in serve_config.get("applications", []):
        for d in app.get("deployments", []):
            start, high = replica_counts(d)
            out.append(DeploymentDemand(app["name"], d["name"], replica_resources(d), start, high))
    return out


def total(demands: Iterable[DeploymentDemand], scale: Scale) -> dict[str, float]:
    """Summed resources of ``demands`` at ``scale``."""
    out: dict[str, float] = {}
    for d in demands:
        for key, value in d.per_replica.items():
            out[key] = out.get(key, 0.0) + value * d.replicas(scale)
    return out


def format_resources(resources: dict[str, float]) -> str:
    """``CPU 3, GPU 0.5, memory 2.0 GiB`` (CPU always shown)."""
    parts = []
    for key in ["CPU", "GPU", "memory", *sorted(set(resources) - {"CPU", "GPU", "memory"})]:
        value = resources.get(key, 0.0)
        if key == "memory":
            if value:
                parts.append(f"memory {value / 2**30:.1f} GiB")
        elif value or key == "CPU":
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


def shortfall(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    """The resources of ``need`` that ``have`` lacks, with what is missing."""
    return {k: v - have.get(k, 0.0) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}


def compare(
    demands: list[DeploymentDemand], capacity: dict[str, float], where: str
) -> tuple[list[str], bool]:
    """Lines that compare the demand at start and at full scale with ``capacity``, and
    whether the start fits (``where`` names the capacity, e.g. "this machine")."""
    start, full = total(demands, "start"), total(demands, "full")
    lines = [
        f"resources at start (num_replicas, or initial/min_replicas): {format_resources(start)}",
        f"resources at full scale (max_replicas): {format_resources(full)}",
        f"{where}: {format_resources(capacity)}",
    ]
    missing = shortfall(start, capacity)
    if missing:
        lines.append(
            f"error: the start needs more than {where} has ({format_resources(missing)} "
            "short); replicas would stay pending:"
        )
        lines += [
            f"  {d.app}/{d.deployment}: {d.start_replicas} x {format_resources(d.per_replica)}"
            for d in demands
            if d.start_replicas and any(k in d.per_replica for k in missing)
        ]
    elif shortfall(full, capacity):
        lines.append(
            f"warning: at full scale the config needs more than {where} has "
            f"({format_resources(shortfall(full, capacity))} short): autoscaling stops earlier"
        )
    return lines, not missing
