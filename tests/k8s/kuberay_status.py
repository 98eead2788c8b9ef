"""KubeRay v1.7 RayService statuses, as the operator writes them, for the stand-in server.

Shapes from ``rayservice_types.go`` / ``raycluster_types.go``; condition reasons and
messages from ``rayservice_controller.go`` ``calculateConditions``.
"""

from __future__ import annotations

import copy
from typing import Any

T0 = "2026-01-05T10:00:00Z"
RAYSERVICE_FINALIZER = "ray.io/rayservice-finalizer"
"""Added by the RayService controller on its first reconcile (checked: see below)."""

# KubeRay v1.7 status builders (shapes from rayservice_types.go / raycluster_types.go;
# condition reasons and messages from rayservice_controller.go calculateConditions).
# fmt: off
INITIALIZING = ("False", "Initializing", "RayService is initializing")
READY = ("True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0")
NO_PENDING = ("False", "NoPendingCluster", "Active Ray cluster exists and no pending Ray cluster")
BOTH_EXIST = ("True", "BothActivePendingClustersExist",
              "Both active and pending Ray clusters exist")
_DEPLOYMENT_STATUS = {"RUNNING": "HEALTHY", "DEPLOY_FAILED": "UNHEALTHY"}  # else UPDATING


def condition(type_: str, status: str, reason: str, message: str, generation: int,
              at: str = T0) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": at}


def empty_service_status() -> dict[str, Any]:
    """How KubeRay serializes an empty RayServiceStatus (Go structs are never omitted)."""
    zero = {"desiredCPU": "0", "desiredGPU": "0", "desiredMemory": "0", "desiredTPU": "0"}
    return {"rayClusterStatus": {**zero, "head": {}}}


def cluster_status(cluster: str, state: str | None = "ready", workers: int = 1) -> dict[str, Any]:
    """``rayClusterStatus`` of a RayCluster (``state=None``: still provisioning)."""
    n_ready = workers if state == "ready" else 0
    head_ready = ("True", "HeadPodRunningAndReady") if state else ("False", "HeadPodNotFound")
    out: dict[str, Any] = {
        "desiredCPU": "4", "desiredGPU": "0", "desiredMemory": "8Gi", "desiredTPU": "0",
        "desiredWorkerReplicas": workers, "minWorkerReplicas": 1, "maxWorkerReplicas": 4,
        "readyWorkerReplicas": n_ready, "availableWorkerReplicas": n_ready,
        "endpoints": {"client": "10001", "dashboard": "8265", "gcs-server": "6379",
                      "metrics": "8080", "serve": "8000"},
        "head": {"podName": f"{cluster}-head-x2kq9", "podIP": "10.0.0.12",
                 "serviceName": f"{cluster}-head-svc", "serviceIP": "10.0.0.12"},
        "observedGeneration": 1, "lastUpdateTime": T0,
        "conditions": [condition("HeadPodReady", *head_ready, "", 1)],
    }
    if state:
        out.update(state=state, stateTransitionTimes={state: T0})
    return out


def service_status(cluster: str, apps: dict[str, str] | None,
                   state: str | None = "ready",
                   deployment: str | None = None) -> dict[str, Any]:
    """activeServiceStatus/pendingServiceStatus; ``apps``: app name -> Serve app status
    (``None``: KubeRay does not poll this cluster's apps). One deployment per app, whose
    status follows the app's unless ``deployment`` says otherwise."""
    out: dict[str, Any] = {"rayClusterName": cluster,
                           "rayClusterStatus": cluster_status(cluster, state)}
    if apps is not None:
        out["applicationStatuses"] = {app: {
            "status": st,
            **({"message": f"Deploying app '{app}' failed."} if st == "DEPLOY_FAILED" else {}),
            "serveDeploymentStatuses": {
                f"{app.title()}Model": {
                    "status": deployment or _DEPLOYMENT_STATUS.get(st, "UPDATING")}},
        } for app, st in apps.items()}
    return out


def rayservice_status(generation: int, *, ready: tuple[str, str, str],
                      upgrade: tuple[str, str, str], endpoints: int,
                      active: dict[str, Any] | None, pending: dict[str, Any] | None,
                      serve_status: str | None = None) -> dict[str, Any]:
    """A whole status; ``ready``/``upgrade`` are (status, reason, message)."""
    return {
        "conditions": [condition("Ready", *ready, generation),
                       condition("UpgradeInProgress", *upgrade, generation)],
        "activeServiceStatus": active or empty_service_status(),
        "pendingServiceStatus": pending or empty_service_status(),
        "numServeEndpoints": endpoints, "observedGeneration": generation, "lastUpdateTime": T0,
        # Deprecated; tests make it disagree with Ready to prove it is never read.
        "serviceStatus": serve_status or ("Running" if ready[0] == "True" else "NotRunning"),
    }


def initializing(generation: int, cluster: str, apps: dict[str, str] | None = None,
                 state: str | None = None) -> dict[str, Any]:
    """First rollout: the only cluster is still the pending one, nothing serves."""
    return rayservice_status(generation, ready=INITIALIZING, upgrade=INITIALIZING, endpoints=0,
                             active=None, pending=service_status(cluster, apps, state))


def ready(generation: int, cluster: str, apps: dict[str, str],
          endpoints: int = 2, deployment: str | None = None) -> dict[str, Any]:
    """Serving from ``cluster``, no pending cluster. KubeRay's Ready only counts serve
    endpoints: it stays True while an in-place Serve update redeploys the apps."""
    return rayservice_status(generation, ready=READY, upgrade=NO_PENDING, endpoints=endpoints,
                             active=service_status(cluster, apps, deployment=deployment),
                             pending=None)


def validation_failed(prior: dict[str, Any] | None, message: str,
                      at: str = T0) -> dict[str, Any]:
    """KubeRay v1.7 rejected the spec (``validateRayService``): Ready turns False with
    reason ValidationFailed and the message; ``observedGeneration`` (of the status and of
    the condition) stays where it was, and nothing else moves."""
    st = copy.deepcopy(prior) if prior else {
        "activeServiceStatus": empty_service_status(),
        "pendingServiceStatus": empty_service_status()}
    observed = st.get("observedGeneration", 0)
    others = [c for c in st.get("conditions", []) if c["type"] != "Ready"]
    st["conditions"] = [condition("Ready", "False", "ValidationFailed", message, observed, at),
                        *others]
    st["lastUpdateTime"] = at
    return st


def rolling_back(generation: int, cluster: str, apps: dict[str, str]) -> dict[str, Any]:
    """v1.7 rollback: the spec went back to the active cluster's while an upgrade ran."""
    st = ready(generation, cluster, apps)
    st["conditions"].append(condition("RollbackInProgress", "True", "DesiredClusterSpecChanged",
                                      "Rolling back to the active cluster", generation))
    return st


def upgrading(generation: int, active: str, pending: str, pending_apps: dict[str, str] | None,
              endpoints: int = 2) -> dict[str, Any]:
    """NewCluster upgrade: the old cluster serves; KubeRay stops polling its apps."""
    return rayservice_status(generation, ready=READY, upgrade=BOTH_EXIST, endpoints=endpoints,
                             active=service_status(active, None),
                             pending=service_status(pending, pending_apps))
# fmt: on
