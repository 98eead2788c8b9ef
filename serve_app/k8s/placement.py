"""Where the pods that need no GPU run (the Ray head, the populate Job), rendered from
``cluster.system_pods``: never on a GPU node, on the nodes the config selects.

Pure functions; :mod:`serve_app.k8s.render` writes them into the generated patches.
"""

from __future__ import annotations

from typing import Any

from serve_app.config import AppConfig
from serve_app.config.cluster import SystemPodsConfig

POPULATE_JOB = "serve-app-populate-models"
"""The Job of kuberay/base/populate-job.yaml."""


def system_pods(app: AppConfig) -> SystemPodsConfig:
    """The config's ``cluster.system_pods``, or the defaults without a ``cluster`` section."""
    return app.cluster.system_pods if app.cluster is not None else SystemPodsConfig()


def placement_fields(config: SystemPodsConfig) -> dict[str, Any]:
    """Pod spec fields (``affinity``, ``nodeSelector``, ``tolerations``) that keep a pod
    off every node carrying one of ``config.gpu_node_labels``."""
    fields: dict[str, Any] = {}
    if config.gpu_node_labels:
        expressions = [{"key": k, "operator": "DoesNotExist"} for k in config.gpu_node_labels]
        fields["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": expressions}]
                }
            }
        }
    if config.node_selector:
        fields["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        fields["tolerations"] = [dict(t) for t in config.tolerations]
    return fields


def check_system_pods(config: SystemPodsConfig) -> None:
    """Raise ``ValueError`` when the placement would let the head onto a GPU node."""
    for t in config.tolerations:
        key = str(t.get("key", ""))
        if key.startswith("nvidia.com/") or (not key and t.get("operator") == "Exists"):
            raise ValueError(
                f"cluster.system_pods.tolerations: {t} lets the head and the populate Job "
                "onto GPU nodes; tolerate only your CPU pool's taint"
            )


def pod_spec_ops(spec_path: str, config: SystemPodsConfig) -> list[dict[str, Any]]:
    """JSON 6902 ``add`` operations setting the placement under ``spec_path``."""
    return [
        {"op": "add", "path": f"{spec_path}/{k}", "value": v}
        for k, v in placement_fields(config).items()
    ]
