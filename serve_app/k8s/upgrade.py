"""A cluster upgrade that does not drop capacity: hold ``min_replicas`` across it.

With ``upgradeStrategy: NewCluster`` KubeRay v1.7 builds the new RayCluster from the
spec as written and switches all traffic to it once its applications are RUNNING, so
each autoscaling deployment starts there at ``min_replicas`` and takes the full load
while its autoscaler catches up (``upscale_delay_s``, then new pods). The safe order,
three applies, each waited for:

1. **raise**: the live spec with ``min_replicas`` raised to the held counts. Nothing
   but ``serveConfigV2`` changes, so Serve scales the running cluster up in place.
2. **upgrade**: the new spec, still holding. The new cluster starts at the held counts
   and takes traffic at that capacity.
3. **release**: the new spec as written. ``min_replicas`` drops back in place and the
   autoscaler scales down after ``downscale_delay_s``.

The cost is the held capacity on both clusters for the length of the upgrade.

KubeRay v1.7 bounds only a first deploy (``ray.io/initializing-timeout``): a new cluster
whose workers never start (weights that never arrive, an image that does not pull) stays
pending, holding its nodes, until the spec changes. Each wait here is bounded, and a
step that runs out with a pending cluster raises :class:`UpgradeStalled` naming the
saved spec from before the upgrade: applying it aborts (KubeRay drops the pending
cluster for a new one built from that spec, which is what already runs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import yaml

from serve_app.k8s.errors import (
    InvalidManifest,
    RayServiceFailed,
    RayServiceWaitTimeout,
    UpgradeStalled,
)

if TYPE_CHECKING:
    from serve_app.k8s.client import RayServiceClient
    from serve_app.k8s.status import RayServiceStatus

StepFn = Callable[[str, int], None]
"""Called as ``(step name, generation)`` after each apply, before its wait."""
SaveFn = Callable[[dict[str, Any]], str]
"""Stores the manifest of the spec running before the upgrade; returns where."""


def hold_min_replicas(manifest: dict[str, Any], holds: dict[str, int]) -> dict[str, Any]:
    """A copy of a RayService manifest whose applications keep at least ``holds`` replicas.

    Args:
        manifest: A ``ray.io/v1`` RayService with a ``serveConfigV2`` string.
        holds: Application name -> replica count. Every autoscaling deployment of that
            application gets ``min_replicas`` (and ``max_replicas``, if lower) raised to it.

    Returns:
        The new manifest; ``serveConfigV2`` is re-serialized as YAML.

    Raises:
        InvalidManifest: No serveConfigV2, an application missing, or one whose
            deployments do not autoscale (a fixed ``num_replicas`` needs no hold).
    """
    out = copy.deepcopy(manifest)
    text = (out.get("spec") or {}).get("serveConfigV2")
    if not isinstance(text, str):
        raise InvalidManifest("the RayService has no spec.serveConfigV2 string")
    config = yaml.safe_load(text)
    apps = {a.get("name", "default"): a for a in config.get("applications") or []}
    for app_name, count in sorted(holds.items()):
        if count < 1:
            raise InvalidManifest(f"hold {app_name}={count}: hold at least one replica")
        app = apps.get(app_name)
        if app is None:
            raise InvalidManifest(
                f"no application {app_name!r} in serveConfigV2 (have: {', '.join(sorted(apps))})"
            )
        scaled = [d for d in app.get("deployments") or [] if d.get("autoscaling_config")]
        if not scaled:
            raise InvalidManifest(
                f"application {app_name!r} has no autoscaling deployment: a fixed "
                "num_replicas starts at full size on the new cluster anyway"
            )
        for d in scaled:
            auto = d["autoscaling_config"]
            auto["min_replicas"] = max(int(auto.get("min_replicas", 1)), count)
            auto["max_replicas"] = max(int(auto.get("max_replicas", 1)), auto["min_replicas"])
            if auto.get("initial_replicas") is not None:
                auto["initial_replicas"] = max(int(auto["initial_replicas"]), count)
    out["spec"]["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
    return out


def live_spec_manifest(manifest: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``manifest``'s identity with the live object's ``spec`` (what runs now)."""
    meta = manifest["metadata"]
    return {
        "apiVersion": manifest["apiVersion"],
        "kind": manifest["kind"],
        "metadata": {k: v for k, v in meta.items() if k in ("name", "namespace", "labels")},
        "spec": copy.deepcopy(live["spec"]),
    }


def safe_cluster_upgrade(
    client: RayServiceClient,
    manifest: dict[str, Any],
    holds: dict[str, int],
    timeout_s: float,
    *,
    poll_interval_s: float = 5.0,
    on_step: StepFn | None = None,
    force_conflicts: bool = False,
    save_previous: SaveFn | None = None,
) -> RayServiceStatus:
    """Raise, upgrade, release (module docstring), waiting for each to be served.

    Args:
        client: The RayService client.
        manifest: The new RayService (as rendered from the overlay).
        holds: Application name -> replicas to keep through the upgrade.
        timeout_s: Budget of each of the three waits.
        poll_interval_s: Seconds between status reads.
        on_step: Progress callback after each apply.
        force_conflicts: Take over fields another field manager set (each apply).
        save_previous: Called once, before the first apply, with the running spec as a
            manifest; what it returns is named in :class:`UpgradeStalled`.

    Returns:
        The status once the released spec is served.

    Raises:
        InvalidManifest: See :func:`hold_min_replicas`.
        RayServiceNotFound: The RayService does not exist yet (a first deploy has no
            capacity to protect: apply it directly).
        UpgradeStalled: A step ran out of time (or failed) while a pending cluster
            existed beside the serving one; names the pending cluster and how to abort.
        RayServiceFailed, RayServiceWaitTimeout: A step did not become ready; the
            cluster is left in that step's state, which still serves.
    """
    name = manifest["metadata"]["name"]
    ns = manifest["metadata"].get("namespace")
    hold_min_replicas(manifest, holds)  # fail before touching the cluster
    live = client.get(name, namespace=ns)
    previous = live_spec_manifest(manifest, live)
    previous["metadata"]["namespace"] = live["metadata"]["namespace"]
    previous_path = save_previous(previous) if save_previous is not None else None
    steps = [
        ("raise", hold_min_replicas(live_spec_manifest(manifest, live), holds)),
        ("upgrade", hold_min_replicas(manifest, holds)),
        ("release", manifest),
    ]
    status: RayServiceStatus | None = None
    for step, doc in steps:
        result = client.apply(doc, force_conflicts=force_conflicts)
        if on_step is not None:
            on_step(step, result.generation)
        try:
            status = client.wait_ready(name, timeout_s, poll_interval_s, namespace=ns)
        except (RayServiceWaitTimeout, RayServiceFailed) as e:
            last = e.last_status
            if last is None or last.pending is None or last.active is None:
                raise
            cause = (
                f"{last.not_ready_reason} after {timeout_s:g} s"
                if isinstance(e, RayServiceWaitTimeout)
                else str(e)
            )
            raise UpgradeStalled(
                stalled_message(step, last, previous_path, cause),
                name,
                last,
                previous_path,
            ) from e
    assert status is not None
    return status


def stalled_message(step: str, st: RayServiceStatus, previous_path: str | None, cause: str) -> str:
    """What a stalled step says: the two clusters, why it stopped, how to abort."""
    assert st.pending is not None and st.active is not None
    pending = st.pending.ray_cluster_name
    abort = (
        f"serve-app k8s apply -f {previous_path}"
        if previous_path
        else "apply the spec from before the upgrade"
    )
    return (
        f"rayservice {st.namespace}/{st.name}: step {step} stalled: pending cluster {pending} "
        f"(state {st.pending.ray_cluster_state or '-'}, {st.pending.ready_worker_replicas} "
        f"ready workers) not serving ({cause}); the active cluster "
        f"{st.active.ray_cluster_name} still serves. KubeRay v1.7 keeps {pending} and its "
        f"nodes until the spec changes. Why it waits: kubectl get pods -l "
        f"ray.io/cluster={pending}; kubectl logs -l ray.io/cluster={pending} -c "
        f"wait-for-models. Abort: {abort} (KubeRay builds a cluster from it, deletes "
        f"{pending} and switches back; kuberay/UPGRADES.md, 'Aborting a stalled upgrade')"
    )


def parse_holds(values: list[str]) -> dict[str, int]:
    """``["minilm=4", ...]`` -> ``{"minilm": 4}``."""
    holds: dict[str, int] = {}
    for value in values:
        app, sep, count = value.partition("=")
        if not sep or not app or not count.isdigit():
            raise InvalidManifest(f"--hold {value!r}: expected APP=REPLICAS, e.g. minilm=4")
        holds[app] = int(count)
    return holds
