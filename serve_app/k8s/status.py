"""Typed view of a KubeRay v1.7 RayService ``status``.

Only the fields KubeRay documents as current are read: ``conditions`` (``Ready``,
``UpgradeInProgress``), ``activeServiceStatus`` / ``pendingServiceStatus``,
``numServeEndpoints`` and ``observedGeneration``. The deprecated ``serviceStatus`` is
never read. Models ignore unknown fields: the server, not this project, owns the shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

READY = "Ready"
UPGRADE_IN_PROGRESS = "UpgradeInProgress"
APP_RUNNING = "RUNNING"
APP_DEPLOY_FAILED = "DEPLOY_FAILED"
# KubeRay never leaves InitializingTimeout (delete and recreate the RayService).
# ValidationFailed is not terminal here: the condition stays until endpoints appear, even
# after a fixed spec validates, so it cannot tell a stale failure from a current one.
TERMINAL_READY_REASONS = ("InitializingTimeout",)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Condition(_Model):
    """One ``metav1.Condition`` of the RayService."""

    type: str = Field(description="Condition type, e.g. Ready or UpgradeInProgress.")
    status: str = Field(description="'True', 'False' or 'Unknown' (strings, as in the API).")
    reason: str = Field("", description="CamelCase reason, e.g. NonZeroServeEndpoints.")
    message: str = Field("", description="Human-readable detail written by KubeRay.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="Generation the condition was set for."
    )
    last_transition_time: datetime | None = Field(
        None, alias="lastTransitionTime", description="When status last changed."
    )

    @property
    def is_true(self) -> bool:
        """Whether ``status`` is ``"True"``."""
        return self.status == "True"


class DeploymentStatus(_Model):
    """Status of one Serve deployment inside an application."""

    status: str = Field("", description="Serve deployment status, e.g. HEALTHY, UPDATING.")
    message: str = Field("", description="Serve's message for the deployment.")


class ApplicationStatus(_Model):
    """Status of one Serve application as KubeRay copies it from the dashboard."""

    status: str = Field("", description="Serve app status, e.g. RUNNING, DEPLOYING.")
    message: str = Field("", description="Serve's message for the application.")
    deployments: dict[str, DeploymentStatus] = Field(
        default_factory=dict,
        alias="serveDeploymentStatuses",
        description="Deployment name -> status.",
    )


class ClusterServiceStatus(_Model):
    """``activeServiceStatus`` or ``pendingServiceStatus``: one RayCluster and its apps."""

    ray_cluster_name: str = Field(alias="rayClusterName", description="RayCluster name.")
    applications: dict[str, ApplicationStatus] = Field(
        default_factory=dict,
        alias="applicationStatuses",
        description="Application name -> status (empty while KubeRay does not poll it).",
    )
    ray_cluster_state: str = Field("", description="rayClusterStatus.state, e.g. 'ready'.")
    ready_worker_replicas: int = Field(0, description="rayClusterStatus.readyWorkerReplicas.")
    target_capacity: int | None = Field(
        None, alias="targetCapacity", description="Incremental upgrade target capacity (%)."
    )
    traffic_routed_percent: int | None = Field(
        None, alias="trafficRoutedPercent", description="Incremental upgrade traffic share (%)."
    )

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> ClusterServiceStatus | None:
        """Parse one service status; ``None`` when it names no RayCluster.

        KubeRay serializes an empty struct (``{"rayClusterStatus": {"desiredCPU": "0",
        ...}}``) when there is no such cluster, so the cluster name decides.
        """
        if not raw or not raw.get("rayClusterName"):
            return None
        cluster = raw.get("rayClusterStatus") or {}
        return cls.model_validate(
            {
                **raw,
                "ray_cluster_state": cluster.get("state", ""),
                "ready_worker_replicas": cluster.get("readyWorkerReplicas", 0),
            }
        )

    def apps_summary(self) -> str:
        """``name[app=STATUS,...]`` for one progress line."""
        apps = ",".join(f"{n}={a.status}" for n, a in sorted(self.applications.items()))
        return f"{self.ray_cluster_name}[{apps}]"


class RayServiceStatus(_Model):
    """Status of one RayService, plus the metadata needed to judge it."""

    name: str = Field(description="metadata.name.")
    namespace: str = Field(description="metadata.namespace.")
    generation: int = Field(0, description="metadata.generation: spec version.")
    observed_generation: int = Field(0, description="Generation KubeRay last reconciled.")
    conditions: tuple[Condition, ...] = Field((), description="status.conditions.")
    active: ClusterServiceStatus | None = Field(None, description="Serving RayCluster.")
    pending: ClusterServiceStatus | None = Field(None, description="RayCluster being prepared.")
    num_serve_endpoints: int = Field(0, description="Ready Serve endpoints (pods).")
    last_update_time: datetime | None = Field(None, description="status.lastUpdateTime.")

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> RayServiceStatus:
        """Build from a RayService object as the API returns it.

        Args:
            obj: The full object (``metadata`` and ``status``; ``status`` may be absent
                before KubeRay first reconciles it).

        Returns:
            The parsed status.
        """
        meta = obj.get("metadata") or {}
        raw = obj.get("status") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            generation=meta.get("generation", 0),
            observed_generation=raw.get("observedGeneration", 0),
            conditions=tuple(Condition.model_validate(c) for c in raw.get("conditions") or ()),
            active=ClusterServiceStatus.parse(raw.get("activeServiceStatus")),
            pending=ClusterServiceStatus.parse(raw.get("pendingServiceStatus")),
            num_serve_endpoints=raw.get("numServeEndpoints", 0),
            last_update_time=raw.get("lastUpdateTime"),
        )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, or ``None`` when KubeRay has not set it."""
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> Condition | None:
        """The ``Ready`` condition."""
        return self.condition(READY)

    @property
    def upgrade(self) -> Condition | None:
        """The ``UpgradeInProgress`` condition."""
        return self.condition(UPGRADE_IN_PROGRESS)

    @property
    def upgrade_in_progress(self) -> bool:
        """``UpgradeInProgress`` is True: a pending RayCluster is being prepared."""
        return self.upgrade is not None and self.upgrade.is_true

    @property
    def is_observed(self) -> bool:
        """KubeRay has reconciled the latest spec (``observedGeneration >= generation``)."""
        return self.observed_generation >= self.generation > 0

    @property
    def is_ready(self) -> bool:
        """Serving the latest spec: what ``wait_ready`` waits for.

        ``Ready`` is True, the status reflects the current generation, no upgrade is in
        flight and every application of the active cluster is ``RUNNING``. ``Ready``
        alone stays True on the old cluster during a zero-downtime upgrade.
        """
        return (
            self.ready is not None
            and self.ready.is_true
            and self.is_observed
            and not self.upgrade_in_progress
            and self.active is not None
            and all(a.status == APP_RUNNING for a in self.active.applications.values())
        )

    @property
    def terminal_failure(self) -> str | None:
        """Why waiting longer cannot help for this generation, or ``None``."""
        ready = self.ready
        if ready is not None and not ready.is_true and ready.reason in TERMINAL_READY_REASONS:
            return f"{ready.reason}: {ready.message}"
        if not self.is_observed:
            return None
        # The cluster that will serve this generation: the pending one while it exists.
        target = self.pending or self.active
        if target is not None:
            failed = sorted(
                f"{n}: {a.message}" if a.message else n
                for n, a in target.applications.items()
                if a.status == APP_DEPLOY_FAILED
            )
            if failed:
                return f"{APP_DEPLOY_FAILED} on {target.ray_cluster_name}: " + "; ".join(failed)
        return None

    def summary(self) -> str:
        """One line describing the state; equal lines mean no visible change."""

        def cond(c: Condition | None) -> str:
            return "Unknown (not set)" if c is None else f"{c.status} ({c.reason})"

        parts = [
            f"Ready={cond(self.ready)}",
            f"UpgradeInProgress={cond(self.upgrade)}",
            f"endpoints={self.num_serve_endpoints}",
            f"generation={self.observed_generation}/{self.generation}",
            f"active={self.active.apps_summary() if self.active else '-'}",
        ]
        if self.pending is not None:
            parts.append(f"pending={self.pending.apps_summary()}")
        return " ".join(parts)
