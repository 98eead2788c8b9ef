"""Generated parts of the KubeRay manifests, rendered from the cluster AppConfigs.

For each overlay under ``kuberay/overlays/`` (a :class:`ClusterProfile`), two files are
written and committed; a test fails when they drift from what this module renders now:

- ``rayservice.generated.yaml``: a JSON 6902 patch of the base RayService with the
  ``serveConfigV2`` string, the worker group's size and ``maxReplicas`` (derived from the
  models' replica bounds and resources), the head's and the worker pods' ``preStop``
  drain hooks and ``terminationGracePeriodSeconds`` (derived from
  ``cluster.worker.max_graceful_shutdown_s`` and ``http.request_timeout_s``), and
  the Ray containers' ingress environment (``http.ingress``) and the autoscaler's
  pending-worker timeout (``cluster.worker.expected_start_s``).
- ``models.generated.yaml``: the ConfigMaps naming the models and the repository root:
  ``serve-app-models`` for the workers' wait-for-models init container and
  ``serve-app-publish`` (with each version's source) for the populate Job.
- ``populate-job.generated.yaml``: a JSON 6902 patch of the populate Job with its
  placement (``cluster.system_pods``, as the head's: off GPU nodes).

Pure functions over ``AppConfig``; no Ray, no kubectl.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import AppConfig, HttpConfig, ModelConfig, load_app_config
from serve_app.deploy.render import write_if_changed
from serve_app.deploy.serve_config import render_serve_config
from serve_app.deploy.version_policy import side_app_names
from serve_app.k8s.drain import (
    drain_timing,
    graceful_shutdown_s,
    head_drain_timing,
    head_prestop_script,
    prestop_script,
)
from serve_app.k8s.placement import check_system_pods, pod_spec_ops, system_pods
from serve_app.k8s.profiles import PROFILES, ClusterProfile

MODELS_MOUNT_PATH = "/mnt/models"
"""Where every Ray worker mounts the ReadOnlyMany weights claim (and the Job its writer)."""
CLUSTER_HTTP_HOST = "0.0.0.0"
"""Serve must listen on the pod IP for the Service and KubeRay's readiness probe."""
PROXY_LOCATION = "EveryNode"
"""KubeRay's worker readiness probe asks the Serve proxy on :8000 of each worker."""
MODELS_CONFIGMAP = "serve-app-models"
PUBLISH_CONFIGMAP = "serve-app-publish"
GRPC_COMPONENT_PORT = 9000
"""gRPC port of kuberay/components/grpc (a Service of its own: KubeRay's serve Service
carries only the port named ``serve``)."""
JOBS_BROKER_ENV = "SERVE_APP_BROKER_URL"
"""The variable kuberay/components/jobs-redis and jobs-external-broker fill, in every Ray
container, from the Secret ``serve-app-broker`` (key ``url``)."""

ALLOCATE_TIMEOUT_ENV = "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"
"""How long Ray's autoscaler v2 lets a worker pod exist without Ray running before it
deletes it (Ray 2.60: ray/autoscaler/v2/instance_manager/config.py:90-91, default 3600 s;
older Rays 300 s). Set explicitly so the image's Ray version does not decide it."""

_HEAD = "/spec/rayClusterConfig/headGroupSpec"
_WORKER = "/spec/rayClusterConfig/workerGroupSpecs/0"


def _max_replicas(model: ModelConfig) -> int:
    """The model's most replicas, over every version it serves side by side."""
    per_version = model.autoscaling.max_replicas if model.autoscaling else model.num_replicas
    return per_version * (len(side_app_names(model)) + 1)


def check_cluster_app(app: AppConfig, profile: ClusterProfile) -> None:
    """Raise ``ValueError`` if ``app`` cannot run as laid out by the manifests."""
    if app.repository.root != MODELS_MOUNT_PATH:
        raise ValueError(f"repository.root must be {MODELS_MOUNT_PATH} in a cluster config")
    if app.http.host != CLUSTER_HTTP_HOST:
        raise ValueError(f"http.host must be {CLUSTER_HTTP_HOST} in a cluster config")
    if app.http.ingress == "haproxy" and app.http.admin_host is not None:
        # The wrapper that rebinds HAProxy's admin listeners is written on the machine
        # that starts Ray; in a pod the pod network is the boundary.
        raise ValueError("http.admin_host must be null with ingress haproxy in a cluster config")
    if app.grpc.enabled and app.grpc.port != GRPC_COMPONENT_PORT:
        raise ValueError(
            f"grpc.port must be {GRPC_COMPONENT_PORT} in a cluster config (the port of "
            "kuberay/components/grpc's Service and NetworkPolicy)"
        )
    if app.jobs is not None and app.jobs.broker_url_env != JOBS_BROKER_ENV:
        raise ValueError(
            f"jobs.broker_url_env must be {JOBS_BROKER_ENV} in a cluster config (the variable "
            "kuberay/components/jobs-redis and jobs-external-broker set from a Secret)"
        )
    check_system_pods(system_pods(app))
    over = {
        k: v for k, v in graceful_shutdown_s(app).items() if v > profile.max_graceful_shutdown_s
    }
    if over:
        listed = ", ".join(f"{k} {v:g} s" for k, v in sorted(over.items()))
        raise ValueError(
            f"graceful_shutdown_timeout_s over cluster.worker.max_graceful_shutdown_s "
            f"({profile.max_graceful_shutdown_s} s): {listed}; lower it, or raise the bound "
            "(a pod spec change: the next apply builds a new cluster)"
        )
    for m in app.models:
        if m.version_policy is not None and m.version_policy.latest_n is not None:
            raise ValueError(
                f"model {m.name!r}: version_policy.latest_n is resolved when a config is "
                "deployed locally; a RayService's serveConfigV2 is fixed when rendered: "
                "list the versions with version_policy.specific"
            )
        if m.version == "latest" and m.version_policy is None:
            # Locally the deploy step pins `latest` once for every replica; on a cluster
            # the committed serveConfigV2 is what runs, and each replica would resolve
            # `latest` on its own mount: after a publish, two replicas could differ.
            raise ValueError(
                f"model {m.name!r}: pin a version in a cluster config (version: latest "
                "would be resolved by each replica on its own)"
            )
        r = m.resources
        if r.num_cpus == 0 and r.num_gpus == 0:
            raise ValueError(
                f"model {m.name!r} requests no CPU and no GPU: it could land on the head, "
                "which is sized for GCS and the Serve controller, not for a model"
            )
        if r.num_cpus > profile.worker_cpus or r.num_gpus > profile.worker_gpus:
            raise ValueError(
                f"model {m.name!r} ({r.num_cpus} CPU, {r.num_gpus} GPU) does not fit a "
                f"{profile.name} worker ({profile.worker_cpus} CPU, {profile.worker_gpus} GPU)"
            )


def worker_max_replicas(app: AppConfig, profile: ClusterProfile) -> int:
    """Worker pods needed when every model runs its most replicas (at least one).

    Replicas are bin-packed, not summed: Ray places a fractional ``num_gpus`` on one GPU
    device, so five 0.4-GPU replicas need three 1-GPU pods (two per device), not two;
    each pod's CPUs are checked together with its GPUs (first fit, largest first)."""
    replicas = sorted(
        (
            (m.resources.num_gpus, m.resources.num_cpus)
            for m in app.models
            for _ in range(_max_replicas(m))
        ),
        reverse=True,
    )
    pods: list[tuple[list[float], list[float]]] = []  # ([free CPUs], [free share per GPU])
    for gpus, cpus in replicas:
        for cpu_free, gpu_free in pods:
            if _place(cpu_free, gpu_free, cpus, gpus):
                break
        else:
            pod = ([float(profile.worker_cpus)], [1.0] * profile.worker_gpus)
            if not _place(*pod, cpus, gpus):
                raise ValueError(
                    f"a replica of {cpus} CPU, {gpus} GPU does not fit a {profile.name} worker"
                )
            pods.append(pod)
    return max(1, len(pods))


def _place(cpu_free: list[float], gpu_free: list[float], cpus: float, gpus: float) -> bool:
    """Take ``cpus`` and ``gpus`` from one pod if they fit (a fraction of a GPU must fit
    on one device, whole GPUs need whole free devices); False leaves the pod unchanged."""
    eps = 1e-9
    if cpus > cpu_free[0] + eps:
        return False
    if gpus <= 0:
        devices: list[int] = []
    elif gpus < 1:
        devices = [next((i for i, f in enumerate(gpu_free) if f + eps >= gpus), -1)]
        if devices == [-1]:
            return False
    else:
        devices = [i for i, f in enumerate(gpu_free) if f >= 1 - eps][: math.ceil(gpus)]
        if len(devices) < math.ceil(gpus):
            return False
    cpu_free[0] -= cpus
    for i in devices:
        gpu_free[i] -= min(gpus, 1.0)
    return True


def worker_resources(profile: ClusterProfile) -> dict[str, Any]:
    """Requests and limits of the Ray worker container (Ray reads its CPUs and GPUs from
    the limits)."""
    amounts = {"cpu": str(profile.worker_cpus), "memory": profile.worker_memory}
    limits = dict(amounts)
    if profile.worker_gpus:
        limits[profile.gpu_resource] = str(profile.worker_gpus)
    return {"requests": amounts, "limits": limits}


_KUBERAY_MIG = re.compile(r"nvidia\.com/mig-\d+g\.\d+gb$")


def kuberay_knows_gpu(resource: str) -> bool:
    """Whether KubeRay v1.7 derives ``num-gpus`` from a limit of this resource: a name
    ending in "gpu" or a MIG slice ``nvidia.com/mig-<N>g.<M>gb`` (ray-operator/controllers/
    ray/utils/resources.go, IsGPUResourceKey)."""
    return resource.endswith("gpu") or _KUBERAY_MIG.search(resource) is not None


def worker_start_params(profile: ClusterProfile) -> dict[str, str]:
    """``rayStartParams`` the worker needs beyond the base: ``num-gpus`` where KubeRay
    would not derive it from the GPU limit (e.g. ``nvidia.com/mig-1g.10gb+me``,
    ``nvidia.com/mig-1c.3g.20gb``, another vendor's resource); Ray would then see none."""
    if profile.worker_gpus and not kuberay_knows_gpu(profile.gpu_resource):
        return {"num-gpus": str(profile.worker_gpus)}
    return {}


def autoscaler_env(profile: ClusterProfile) -> list[dict[str, str]]:
    """Environment of KubeRay's autoscaler sidecar: a pending worker pod gets twice the
    expected start (node, image pull, wait-for-models) before it is replaced."""
    return [{"name": ALLOCATE_TIMEOUT_ENV, "value": str(2 * profile.expected_start_s)}]


def ray_container_env(http: HttpConfig) -> dict[str, str]:
    """Environment of every Ray container for the configured ingress (the Serve
    controller reads it once at start, so it is pod env, not Serve config)."""
    from serve_app.constants import SERVE_RAY_ENV

    if http.ingress != "haproxy":
        return SERVE_RAY_ENV | {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    from serve_app.local.ingress import POD_WRAPPER_PATH, RETRY_AFTER_ENV, balance_env

    # The image's HAProxy wrapper (Dockerfile) puts HAProxy's errors in our JSON shape.
    wrapper = {
        "RAY_SERVE_HAPROXY_BINARY_PATH": POD_WRAPPER_PATH,
        RETRY_AFTER_ENV: str(http.retry_after_s),
    }
    return (
        SERVE_RAY_ENV
        | {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
        | balance_env(http.haproxy_balance)
        | wrapper
    )


def serve_config_text(app: AppConfig) -> str:
    """The ``serveConfigV2`` string: the Serve config with a proxy on every node."""
    return _dump(render_serve_config(app, proxy_location=PROXY_LOCATION))


def rayservice_patch(app: AppConfig, profile: ClusterProfile) -> list[dict[str, Any]]:
    """JSON 6902 operations that turn the base RayService into this overlay's."""
    profile = profile.for_app(app)
    check_cluster_app(app, profile)
    timing = drain_timing(app, profile)
    head_timing = head_drain_timing(app, profile)
    head = f"{_HEAD}/template/spec"
    pod = f"{_WORKER}/template/spec"
    env = [
        {
            "op": "add",
            "path": f"{group}/template/spec/containers/0/env/-",
            "value": {"name": k, "value": v},
        }
        for group in (_HEAD, _WORKER)
        for k, v in ray_container_env(app.http).items()
    ]
    return [
        {"op": "add", "path": "/spec/serveConfigV2", "value": serve_config_text(app)},
        *env,
        *pod_spec_ops(head, system_pods(app)),
        {
            "op": "add",
            "path": f"{head}/terminationGracePeriodSeconds",
            "value": head_timing.termination_grace_period_s,
        },
        {
            "op": "add",
            "path": f"{head}/containers/0/lifecycle",
            "value": {
                "preStop": {"exec": {"command": ["bash", "-c", head_prestop_script(head_timing)]}}
            },
        },
        {
            "op": "add",
            "path": "/spec/rayClusterConfig/autoscalerOptions/env",
            "value": autoscaler_env(profile),
        },
        {
            "op": "replace",
            "path": f"{_WORKER}/maxReplicas",
            "value": worker_max_replicas(app, profile),
        },
        {
            "op": "replace",
            "path": f"{pod}/containers/0/resources",
            "value": worker_resources(profile),
        },
        *(
            {"op": "add", "path": f"{_WORKER}/rayStartParams/{k}", "value": v}
            for k, v in worker_start_params(profile).items()
        ),
        {
            "op": "add",
            "path": f"{pod}/terminationGracePeriodSeconds",
            "value": timing.termination_grace_period_s,
        },
        {
            "op": "add",
            "path": f"{pod}/containers/0/lifecycle",
            "value": {"preStop": {"exec": {"command": ["bash", "-c", prestop_script(timing)]}}},
        },
    ]


def models_configmap(app: AppConfig) -> dict[str, Any]:
    """ConfigMap the workers' wait-for-models reads: ``MODELS`` (``name:version`` words)
    and ``REPOSITORY_ROOT``. The rollout script applies it only once the populate Job has
    published what it names."""
    models = " ".join(f"{m.name}:{m.version}" for m in app.models)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": MODELS_CONFIGMAP},
        "data": {"MODELS": models, "REPOSITORY_ROOT": app.repository.root},
    }


def publish_configmap(app: AppConfig) -> dict[str, Any]:
    """ConfigMap the populate Job reads: ``MODELS`` as ``name:version:source`` words, the
    source being ``cluster.model_sources/<name>/<version>`` in the seed image."""
    sources = app.cluster.model_sources if app.cluster is not None else "/opt/model-sources"
    models = " ".join(f"{m.name}:{m.version}:{sources}/{m.name}/{m.version}" for m in app.models)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PUBLISH_CONFIGMAP},
        "data": {"MODELS": models, "REPOSITORY_ROOT": app.repository.root},
    }


def populate_job_patch(app: AppConfig) -> list[dict[str, Any]]:
    """JSON 6902 operations on the base populate Job: its placement (off GPU nodes)."""
    return pod_spec_ops("/spec/template/spec", system_pods(app))


def render_k8s_files(root: str | Path = ".") -> dict[Path, str]:
    """Text of every generated manifest file, keyed by path relative to ``root``."""
    root = Path(root)
    files: dict[Path, str] = {}
    for profile in PROFILES:
        app = load_app_config(root / profile.app_config)
        header = f"# GENERATED by `serve-app render-k8s` from {profile.app_config}; do not edit.\n"
        overlay = Path(profile.overlay_dir)
        files[overlay / "rayservice.generated.yaml"] = header + _dump(
            rayservice_patch(app, profile)
        )
        files[overlay / "models.generated.yaml"] = header + _dump_all(
            [models_configmap(app), publish_configmap(app)]
        )
        files[overlay / "populate-job.generated.yaml"] = header + _dump(populate_job_patch(app))
    return files


def write_k8s_files(root: str | Path = ".") -> list[Path]:
    """Write the generated files under ``root``; returns those that changed."""
    root = Path(root)
    return [p for p, text in render_k8s_files(root).items() if write_if_changed(root / p, text)]


def stale_k8s_files(root: str | Path = ".") -> list[Path]:
    """Generated files that are missing or differ from what would be rendered now."""
    root = Path(root)
    stale = []
    for path, text in render_k8s_files(root).items():
        target = root / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (serveConfigV2, scripts) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump_all(docs: list[Any]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
