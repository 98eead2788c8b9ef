"""Typed view of a KubeRay v1.7 RayService ``status``.

Only the fields KubeRay documents as current are read: ``conditions`` (``Ready``,
``UpgradeInProgress``), ``activeServiceStatus`` / ``pendingServiceStatus``,
``numServeEndpoints`` and ``observedGeneration``. The deprecated ``serviceStatus`` is
never read. Models ignore unknown fields: the server, not this project, owns the shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

READY = "Ready"
UPGRADE_IN_PROGRESS = "UpgradeInProgress"
ROLLBACK_IN_PROGRESS = "RollbackInProgress"
APP_RUNNING = "RUNNING"
APP_DEPLOY_FAILED = "DEPLOY_FAILED"
DEPLOYMENT_HEALTHY = "HEALTHY"
DEPLOYMENT_SERVING = frozenset({DEPLOYMENT_HEALTHY, "UPSCALING", "DOWNSCALING"})
"""Deployment statuses that serve the current config: an autoscaling deployment under
load reports UPSCALING or DOWNSCALING while its replicas run (Serve 2.60's
``DeploymentStatus``)."""
# KubeRay never leaves InitializingTimeout (delete and recreate the RayService).
TERMINAL_READY_REASONS = ("InitializingTimeout",)
VALIDATION_FAILED = "ValidationFailed"
"""KubeRay v1.7 rejected the spec or metadata. It records this without moving
``status.observedGeneration`` and does not retry until the spec changes; after a fix the
condition stays until endpoints appear, so only ``observedGeneration < generation`` says
the failure is about the current spec (see ``validation_failure``)."""


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
    expected_apps: frozenset[str] | None = Field(
        None,
        description="Application names of spec.serveConfigV2 (None: the spec names none, "
        "or it does not parse); readiness needs each of them RUNNING.",
    )

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
            expected_apps=_serve_config_apps((obj.get("spec") or {}).get("serveConfigV2")),
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
    def rollback_in_progress(self) -> bool:
        """``RollbackInProgress`` is True (v1.7): KubeRay is returning to the old spec."""
        c = self.condition(ROLLBACK_IN_PROGRESS)
        return c is not None and c.is_true

    @property
    def is_observed(self) -> bool:
        """KubeRay has reconciled the latest spec (``observedGeneration >= generation``)."""
        return self.observed_generation >= self.generation > 0

    @property
    def is_ready(self) -> bool:
        """Serving the latest spec: what ``wait_ready`` waits for (``not_ready_reason``)."""
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why the RayService does not serve its latest spec yet, or ``None`` when it does.

        KubeRay's ``Ready`` only says that a serve endpoint exists: it stays True on the
        old cluster during an upgrade and while an in-place Serve update is still
        deploying. So this also needs the current generation observed, no upgrade or
        rollback in flight, and on the active cluster every application that
        ``serveConfigV2`` names (at least one) ``RUNNING`` with every deployment
        ``HEALTHY``, ``UPSCALING`` or ``DOWNSCALING`` (autoscaling under load).
        """
        ready = self.ready
        if ready is None or not ready.is_true:
            return f"Ready is {ready.status if ready else 'not set'}" + (
                f" ({ready.reason})" if ready and ready.reason else ""
            )
        if not self.is_observed:
            return f"KubeRay has not reconciled generation {self.generation} yet"
        if self.upgrade_in_progress:
            return "an upgrade is in progress (pending cluster)"
        if self.rollback_in_progress:
            return "a rollback is in progress"
        if self.active is None:
            return "no active cluster"
        apps = self.active.applications
        if not apps:
            return "the active cluster reports no application yet"
        missing = sorted((self.expected_apps or frozenset()) - apps.keys())
        if missing:
            return f"application {', '.join(missing)} not reported by the active cluster"
        for name, app in sorted(apps.items()):
            if app.status != APP_RUNNING:
                return f"application {name} is {app.status or 'UNKNOWN'}"
            for dep_name, dep in sorted(app.deployments.items()):
                if dep.status not in DEPLOYMENT_SERVING:
                    return f"deployment {name}/{dep_name} is {dep.status or 'UNKNOWN'}"
        return None

    def validation_failure(self) -> str | None:
        """KubeRay's message when it rejected the current spec, else ``None``.

        Only meaningful once KubeRay had time to see the current generation: right after
        an apply, a ``ValidationFailed`` of the previous generation looks the same
        (``wait_ready`` allows ``validation_grace_s`` for that).
        """
        ready = self.ready
        if (
            ready is not None
            and not ready.is_true
            and ready.reason == VALIDATION_FAILED
            and self.observed_generation < self.generation
        ):
            return f"{VALIDATION_FAILED}: {ready.message}"
        return None

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


def _serve_config_apps(text: Any) -> frozenset[str] | None:
    """Application names in a ``serveConfigV2`` string (YAML or JSON), or ``None``."""
    if not isinstance(text, str):
        return None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    apps = config.get("applications") if isinstance(config, dict) else None
    if not isinstance(apps, list):
        return None
    names = {a.get("name", "default") for a in apps if isinstance(a, dict)}
    return frozenset(str(n) for n in names) or None
