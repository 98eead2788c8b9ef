"""The AppConfig's ``cluster`` section: the worker pod shape a RayService is rendered
for (re-exported by ``serve_app.config``)."""

from __future__ import annotations

from pydantic import Field

from serve_app.schema_base import StrictModel


class WorkerPodConfig(StrictModel):
    """Shape of the Ray worker pods on Kubernetes (read by ``serve-app render-k8s`` only).

    Size it from the node type's *allocatable* capacity minus its daemonsets, not from its
    vCPUs and memory: a pod asking for a whole 8-vCPU / 32 GiB node stays Pending."""

    cpus: int = Field(ge=1, description="CPU request and limit; Ray's logical CPUs there.")
    memory: str = Field(description="Memory request and limit, a Kubernetes quantity.")
    gpus: int = Field(0, ge=0, description="GPUs per pod (0: a CPU worker group).")
    gpu_resource: str = Field(
        "nvidia.com/gpu",
        description=(
            "Extended resource of a GPU: nvidia.com/gpu (whole or time-sliced GPUs), or a "
            "MIG profile such as nvidia.com/mig-1g.10gb, each slice one GPU to Ray."
        ),
    )
    max_graceful_shutdown_s: int = Field(
        60,
        ge=1,
        le=3600,
        description=(
            "Upper bound of every deployment's graceful_shutdown_timeout_s. The worker "
            "pods' and the head's drain deadlines and terminationGracePeriodSeconds are "
            "sized from it, so "
            "changing a deployment's timeout within it stays an in-place Serve update; "
            "changing this bound changes the pod spec (a new cluster)."
        ),
    )
    expected_start_s: int = Field(
        600,
        ge=60,
        le=900,
        description=(
            "How long a new worker pod usually takes from creation to Ray running: node "
            "provisioning (minutes for a GPU node from zero), the image pull (minutes for a "
            "10 GB image) and wait-for-models. Ray's autoscaler (v2) deletes and replaces a "
            "worker pod that has not started Ray by RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_"
            "TIMEOUT_S, rendered into autoscalerOptions.env as twice this, so a start twice "
            "as slow as usual survives. At most 900 s: twice that is the RayService's "
            "30-minute initializing timeout, which ends a first deploy anyway."
        ),
    )


class SystemPodsConfig(StrictModel):
    """Where the pods that need no GPU run: the Ray head and the populate Job.

    A head on a GPU node holds that node (and its GPUs) for as long as the service lives,
    keeps the node from scaling in, and goes down with every GPU node upgrade or spot
    reclaim; the populate Job would hold a GPU node for a copy."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "nodeSelector of the head and the populate Job, e.g. a CPU node pool's label "
            "({'cloud.google.com/gke-nodepool': 'system'}); empty: any node that passes "
            "gpu_node_labels."
        ),
    )
    tolerations: list[dict[str, str | int]] = Field(
        default_factory=list,
        description=(
            "Kubernetes tolerations of the head and the populate Job (for a tainted CPU "
            "pool). Never tolerate the GPU taint (nvidia.com/gpu) here."
        ),
    )
    gpu_node_labels: list[str] = Field(
        default_factory=lambda: ["nvidia.com/gpu.present", "cloud.google.com/gke-accelerator"],
        description=(
            "Node labels that only GPU nodes carry: the head and the populate Job require "
            "nodes without any of them (nodeAffinity DoesNotExist). The defaults are set by "
            "NVIDIA's GPU feature discovery (GPU operator) and by GKE; add your "
            "provisioner's. Never list a label that CPU nodes carry too (e.g. one set to "
            "'0' on them): the head would fit no node."
        ),
    )


class ClusterConfig(StrictModel):
    """What a cluster config adds for Kubernetes."""

    worker: WorkerPodConfig = Field(description="The worker group's pod shape.")
    model_sources: str = Field(
        "/opt/model-sources",
        description=(
            "Folder of the seed image holding <name>/<version> for every model version the "
            "populate Job publishes: it publishes exactly the pinned version from there and "
            "refuses a source missing, naming another version in its manifest.json, or "
            "holding the previous version's files."
        ),
    )
    system_pods: SystemPodsConfig = Field(
        default_factory=SystemPodsConfig,
        description="Placement of the head and the populate Job: off the GPU nodes.",
    )
