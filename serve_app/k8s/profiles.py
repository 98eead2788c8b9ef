"""The cluster profiles: one per kustomize overlay under ``kuberay/overlays/``, the
AppConfig it serves and the shape of its worker pods.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from serve_app.config import AppConfig


@dataclass(frozen=True)
class ClusterProfile:
    """One kustomize overlay: the AppConfig it serves and the shape of its worker pods."""

    name: str
    """Overlay folder name under ``kuberay/overlays/``."""
    app_config: str
    """Cluster AppConfig file, relative to the repository root."""
    worker_cpus: int
    """CPUs of a worker pod (Ray's logical CPUs there)."""
    worker_memory: str
    """Memory of a worker pod, as a Kubernetes quantity."""
    worker_gpus: int
    """GPUs of a worker pod (0: a CPU worker group)."""
    replica_migration_s: int
    """Time a replacement replica gets to start on another node before the replica on a
    draining node is stopped (added to graceful_shutdown_timeout_s for the drain deadline)."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of a GPU (a MIG profile such as ``nvidia.com/mig-1g.10gb``)."""
    max_graceful_shutdown_s: int = 60
    """Bound of the deployments' graceful_shutdown_timeout_s the pod's drain is sized for."""
    expected_start_s: int = 600
    """Usual time from a worker pod's creation to Ray running on it (``cluster.worker``)."""

    def for_app(self, app: AppConfig) -> ClusterProfile:
        """This profile with the worker pod shape of ``app.cluster`` when it sets one."""
        if app.cluster is None:
            return self
        w = app.cluster.worker
        return dataclasses.replace(
            self,
            worker_cpus=w.cpus,
            worker_memory=w.memory,
            worker_gpus=w.gpus,
            gpu_resource=w.gpu_resource,
            max_graceful_shutdown_s=w.max_graceful_shutdown_s,
            expected_start_s=w.expected_start_s,
        )

    @property
    def overlay_dir(self) -> str:
        """The overlay folder, relative to the repository root."""
        return f"kuberay/overlays/{self.name}"


PROFILES: tuple[ClusterProfile, ...] = (
    ClusterProfile("dev", "configs/cluster-dev.yaml", 2, "4Gi", 0, 30),
    # One GPU per worker pod: fractional num_gpus packs replicas onto it, and a GPU node
    # takes minutes to come up, so a replacement replica gets two minutes. 6 CPUs / 24 GiB
    # fit an 8-vCPU / 32 GiB GPU node once kube-reserved and daemonsets are taken; the
    # cluster config's `cluster.worker` sets it per node type.
    ClusterProfile("gpu", "configs/cluster-gpu.yaml", 6, "24Gi", 1, 120),
)
