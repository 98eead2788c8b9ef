"""A scale-from-zero GPU pool: the autoscaler waits long enough for a pending worker, and
the head stays up and off the GPU nodes.

The overlays are rendered with the pinned ``kubectl kustomize``; the autoscaler's
variable is checked against the Ray wheel that the images install (its name and its
default), in a subprocess so the environment it is read from is the test's own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serve_app.config import ClusterConfig, WorkerPodConfig
from serve_app.k8s.profiles import PROFILES
from serve_app.k8s.render import ALLOCATE_TIMEOUT_ENV, rayservice_patch
from tests.k8s.test_manifests import core_errors, one, render
from tests.k8s.test_render_k8s import cluster_app

_READ_TIMEOUT = (
    "from ray.autoscaler.v2.instance_manager.config import InstanceReconcileConfig as C; "
    "print(C().allocate_status_timeout_s)"
)


def _ray_allocate_timeout_s(env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _READ_TIMEOUT],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def test_ray_reads_the_variable_we_render_and_its_default_is_an_hour() -> None:
    """The name is what Ray 2.60's autoscaler v2 reads (instance_manager/config.py:90-91);
    unset, a pending worker pod lives 3600 s (older Rays: 300 s, KubeRay issue 4226)."""
    base = {k: v for k, v in os.environ.items() if k != ALLOCATE_TIMEOUT_ENV}
    assert _ray_allocate_timeout_s(base) == 3600
    assert _ray_allocate_timeout_s(base | {ALLOCATE_TIMEOUT_ENV: "1234"}) == 1234


@pytest.mark.parametrize(
    ("overlay", "timeout_s"),
    [pytest.param("dev", "600", id="dev-overlay"), pytest.param("gpu", "1800", id="gpu-overlay")],
)
def test_autoscaler_gives_a_pending_worker_twice_its_expected_start(
    overlay: str, timeout_s: str
) -> None:
    rs = one(render(overlay), "RayService")
    assert rs["spec"]["rayClusterConfig"]["autoscalerOptions"]["env"] == [
        {"name": "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S", "value": timeout_s}
    ]


def test_expected_start_is_bounded_by_the_initializing_timeout() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        WorkerPodConfig(cpus=1, memory="1Gi", expected_start_s=901)
    assert e.value.errors()[0]["msg"] == "Input should be less than or equal to 900"
    worker = WorkerPodConfig(cpus=2, memory="4Gi", expected_start_s=120)
    app = cluster_app({"name": "m", "version": 1}).model_copy(
        update={"cluster": ClusterConfig(worker=worker)}
    )
    ops = {op["path"]: op["value"] for op in rayservice_patch(app, PROFILES[0])}
    assert ops["/spec/rayClusterConfig/autoscalerOptions/env"] == [
        {"name": ALLOCATE_TIMEOUT_ENV, "value": "240"}
    ]


GPU_LABELS = [
    {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"},
    {"key": "cloud.google.com/gke-accelerator", "operator": "DoesNotExist"},
]


def _required_terms(pod_spec: dict) -> list:
    affinity = pod_spec["affinity"]["nodeAffinity"]
    return affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


@pytest.mark.parametrize(
    "overlay", [pytest.param(p.name, id=f"{p.name}-overlay") for p in PROFILES]
)
def test_head_is_not_evicted_and_stays_off_gpu_nodes(overlay: str) -> None:
    docs = render(overlay)
    pdb = one(docs, "PodDisruptionBudget", "serve-app-head")
    assert core_errors(pdb) == []
    assert pdb["spec"] == {
        "maxUnavailable": 0,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": {"app.kubernetes.io/name": "serve-app",
                                     "ray.io/node-type": "head"}},
    }  # fmt: skip
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]
    worker = cluster["workerGroupSpecs"][0]["template"]
    # KubeRay adds ray.io/node-type to each pod: the budget selects the head only.
    selector = pdb["spec"]["selector"]["matchLabels"].items()
    assert selector <= (head["metadata"]["labels"] | {"ray.io/node-type": "head"}).items()
    assert not selector <= (worker["metadata"]["labels"] | {"ray.io/node-type": "worker"}).items()
    assert head["metadata"]["annotations"] == {
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
        "karpenter.sh/do-not-disrupt": "true",
    }
    job = one(docs, "Job", "serve-app-populate-models")["spec"]["template"]["spec"]
    assert (
        _required_terms(head["spec"]) == _required_terms(job) == [{"matchExpressions": GPU_LABELS}]
    )
    assert "affinity" not in worker["spec"]
    assert "tolerations" not in head["spec"] and "tolerations" not in job


def _app_with(system_pods: dict) -> object:
    from serve_app.config.cluster import SystemPodsConfig

    worker = WorkerPodConfig(cpus=2, memory="4Gi")
    cluster = ClusterConfig(worker=worker, system_pods=SystemPodsConfig(**system_pods))
    return cluster_app({"name": "m", "version": 1}).model_copy(update={"cluster": cluster})


def test_system_pods_placement_comes_from_the_config() -> None:
    from serve_app.k8s.render import populate_job_patch

    toleration = {"key": "pool", "operator": "Equal", "value": "system", "effect": "NoSchedule"}
    app = _app_with({"node_selector": {"pool": "system"}, "tolerations": [toleration],
                     "gpu_node_labels": ["example.com/gpu"]})  # fmt: skip
    head = "/spec/rayClusterConfig/headGroupSpec/template/spec"
    ops = {op["path"]: op["value"] for op in rayservice_patch(app, PROFILES[0])}
    job = {op["path"]: op["value"] for op in populate_job_patch(app)}
    assert (
        ops[f"{head}/nodeSelector"] == job["/spec/template/spec/nodeSelector"] == {"pool": "system"}
    )
    assert ops[f"{head}/tolerations"] == job["/spec/template/spec/tolerations"] == [toleration]
    assert _required_terms({"affinity": ops[f"{head}/affinity"]}) == [
        {"matchExpressions": [{"key": "example.com/gpu", "operator": "DoesNotExist"}]}
    ]


def test_a_gpu_toleration_on_the_head_is_refused() -> None:
    app = _app_with({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]})
    with pytest.raises(ValueError) as e:
        rayservice_patch(app, PROFILES[0])
    assert str(e.value) == (
        "cluster.system_pods.tolerations: {'key': 'nvidia.com/gpu', 'operator': 'Exists'} lets "
        "the head and the populate Job onto GPU nodes; tolerate only your CPU pool's taint"
    )


def test_writer_job_reowns_the_volume_only_on_root_mismatch() -> None:
    job = one(render("gpu"), "Job", "serve-app-populate-models")
    context = job["spec"]["template"]["spec"]["securityContext"]
    assert (context["fsGroup"], context["fsGroupChangePolicy"]) == (100, "OnRootMismatch")
