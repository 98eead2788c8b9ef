"""What the rendered overlays promise about the cluster: read-only weights, replicas on
workers, GPU limits, autoscaling, upgrades, scraping, and the shutdown timing coupled to
the Serve deployments' graceful_shutdown_timeout_s."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import load_app_config
from serve_app.k8s.drain import drain_timing
from serve_app.k8s.profiles import PROFILES, ClusterProfile
from serve_app.k8s.render import MODELS_MOUNT_PATH, worker_max_replicas
from serve_app.local.ingress import POD_WRAPPER_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]
# ids "<name>-overlay": tests/conftest.py skips items with a bare "gpu" keyword.
OVERLAYS = [pytest.param(p, id=f"{p.name}-overlay") for p in PROFILES]
SERVING_CLAIM = "serve-app-models"
WRITER_CLAIM = "serve-app-models-writer"


@functools.cache
def _rendered(overlay: str) -> str:
    return _kustomize(REPO_ROOT / "kuberay" / "overlays" / overlay)


def _kustomize(folder: Path) -> str:
    here = Path(sys.executable).parent / "kubectl"
    exe = str(here) if here.exists() else shutil.which("kubectl") or "kubectl"
    out = subprocess.run(
        [exe, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def docs_of(profile: ClusterProfile, kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_rendered(profile.name)) if d and d["kind"] == kind]


def rayservice(profile: ClusterProfile) -> dict[str, Any]:
    (rs,) = docs_of(profile, "RayService")
    return rs


def pod_specs(profile: ClusterProfile) -> dict[str, dict[str, Any]]:
    cluster = rayservice(profile)["spec"]["rayClusterConfig"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def claim_mounts(spec: dict[str, Any]) -> list[tuple[str, str, bool, bool]]:
    """(claim, mountPath, volume readOnly, mount readOnly) for each PVC mount of a pod."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return [
        (
            claims[m["name"]]["claimName"],
            m["mountPath"],
            claims[m["name"]].get("readOnly", False),
            m.get("readOnly", False),
        )
        for c in spec.get("initContainers", []) + spec["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] in claims
    ]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_serving_claim_is_read_only_many_and_mounted_read_only(profile: ClusterProfile) -> None:
    claims = {c["metadata"]["name"]: c["spec"] for c in docs_of(profile, "PersistentVolumeClaim")}
    assert claims[SERVING_CLAIM]["accessModes"] == ["ReadOnlyMany"]
    assert claims[WRITER_CLAIM]["accessModes"] == ["ReadWriteMany"]
    assert claims[SERVING_CLAIM]["volumeName"] != claims[WRITER_CLAIM]["volumeName"]
    specs = pod_specs(profile)
    workers = [name for name in specs if name != "head"]
    # The wait-for-models init container and the Ray container of every worker group.
    for name in workers:
        assert claim_mounts(specs[name]) == [(SERVING_CLAIM, MODELS_MOUNT_PATH, True, True)] * 2
    # The head hosts no model replica (0 CPUs, 0 GPUs) but may host 0-CPU pipeline
    # routers, which read the manifests: the same claim, read-only.
    assert claim_mounts(specs["head"]) == [(SERVING_CLAIM, MODELS_MOUNT_PATH, True, True)]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_only_the_populate_job_gets_the_writer_claim(profile: ClusterProfile) -> None:
    (job,) = docs_of(profile, "Job")
    app = load_app_config(REPO_ROOT / profile.app_config)
    # own-repository (init: makes the folder the publisher's) and populate.
    assert (
        claim_mounts(job["spec"]["template"]["spec"])
        == [(WRITER_CLAIM, app.repository.root, False, False)] * 2
    )
    ray_claims = {m[0] for spec in pod_specs(profile).values() for m in claim_mounts(spec)}
    assert ray_claims == {SERVING_CLAIM}


def test_dev_volumes_share_one_folder() -> None:
    dev = next(p for p in PROFILES if p.name == "dev")
    pvs = {v["metadata"]["name"]: v["spec"] for v in docs_of(dev, "PersistentVolume")}
    claims = {c["metadata"]["name"]: c["spec"] for c in docs_of(dev, "PersistentVolumeClaim")}
    ro, rw = (pvs[claims[c]["volumeName"]] for c in (SERVING_CLAIM, WRITER_CLAIM))
    assert (ro["accessModes"], rw["accessModes"]) == (["ReadOnlyMany"], ["ReadWriteMany"])
    assert ro["hostPath"] == rw["hostPath"]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_head_has_no_logical_cpus_or_gpus(profile: ClusterProfile) -> None:
    params = rayservice(profile)["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert (params["num-cpus"], params["num-gpus"]) == ("0", "0")
    app = load_app_config(REPO_ROOT / profile.app_config)
    assert all(m.resources.num_cpus > 0 or m.resources.num_gpus > 0 for m in app.models)


@pytest.mark.parametrize("profile", OVERLAYS)
def test_worker_group_shape(profile: ClusterProfile) -> None:
    (group,) = rayservice(profile)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    app = load_app_config(REPO_ROOT / profile.app_config)
    profile = profile.for_app(app)
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert group["minReplicas"] == 0
    assert group["maxReplicas"] == worker_max_replicas(app, profile)
    assert "replicas" not in group  # the autoscaler owns it
    assert limits["cpu"] == str(profile.worker_cpus)
    if profile.name == "gpu":
        assert group["groupName"] == "gpu-workers"
        assert limits["nvidia.com/gpu"] == "1"
        assert {m.resources.num_gpus for m in app.models} == {0.25}
        assert group["maxReplicas"] == 2  # 8 replicas x 0.25 GPU on 1-GPU pods
    else:
        assert group["groupName"] == "cpu-workers"
        assert "nvidia.com/gpu" not in limits
        assert {m.resources.num_gpus for m in app.models} == {0}


@pytest.mark.parametrize("profile", OVERLAYS)
def test_autoscaler_v2_and_upgrade_strategy(profile: ClusterProfile) -> None:
    spec = rayservice(profile)["spec"]
    cluster = spec["rayClusterConfig"]
    app = load_app_config(REPO_ROOT / profile.app_config)
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert (options["version"], options["upscalingMode"]) == ("v2", "Default")
    assert options["idleTimeoutSeconds"] == (300 if profile.name == "gpu" else 60)
    # KubeRay 1.7 rejects v2 set both ways, and a head or worker restartPolicy but Never.
    for spec_ in pod_specs(profile).values():
        env = {e["name"] for c in spec_["containers"] for e in c.get("env", [])}
        assert "RAY_enable_autoscaler_v2" not in env
        assert spec_.get("restartPolicy", "Never") == "Never"
    assert spec["upgradeStrategy"] == {"type": "NewCluster"}
    assert spec["rayClusterDeletionDelaySeconds"] >= app.http.request_timeout_s


@pytest.mark.parametrize("profile", OVERLAYS)
def test_shutdown_timing_follows_the_graceful_shutdown_bound(profile: ClusterProfile) -> None:
    app = load_app_config(REPO_ROOT / profile.app_config)
    profile = profile.for_app(app)
    (group,) = rayservice(profile)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    spec = group["template"]["spec"]
    timing = drain_timing(app, profile)
    assert max(m.graceful_shutdown_timeout_s for m in app.models) <= (
        profile.max_graceful_shutdown_s
    )
    assert timing.drain_deadline_s == profile.replica_migration_s + profile.max_graceful_shutdown_s
    assert spec["terminationGracePeriodSeconds"] == timing.termination_grace_period_s
    assert timing.termination_grace_period_s > timing.drain_deadline_s + 30
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["bash", "-c"]
    assert f"--deadline-remaining-seconds {timing.drain_deadline_s} " in command[2]
    # A deployment's own timeout (serveConfigV2, changed in place) leaves the pod alone;
    # the bound (pod spec) moves the deadline and the grace period one for one.
    slower = app.model_copy(
        update={
            "models": [m.model_copy(update={"graceful_shutdown_timeout_s": 1}) for m in app.models]
        }
    )
    assert drain_timing(slower, profile) == timing
    wider = dataclasses.replace(
        profile, max_graceful_shutdown_s=profile.max_graceful_shutdown_s + 100
    )
    longer = drain_timing(app, wider)
    assert longer.drain_deadline_s == timing.drain_deadline_s + 100
    assert longer.termination_grace_period_s == timing.termination_grace_period_s + 100


def test_monitoring_is_opt_in_and_scrapes_every_ray_pod_on_the_metrics_port(
    tmp_path: Path,
) -> None:
    """No overlay carries the PodMonitor (its CRD may be missing); an overlay of the
    user's that adds the component gets one that selects every Ray pod."""
    gpu = next(p for p in PROFILES if p.name == "gpu")
    assert all(docs_of(p, "PodMonitor") == [] for p in PROFILES)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(REPO_ROOT / 'kuberay/overlays/gpu', tmp_path)}]\n"
        f"components: [{os.path.relpath(REPO_ROOT / 'kuberay/components/monitoring', tmp_path)}]\n"
    )
    docs = [d for d in yaml.safe_load_all(_kustomize(tmp_path)) if d]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    cluster = rayservice(gpu)["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "metrics", "containerPort": 8080} in ports
    (job,) = docs_of(gpu, "Job")
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]


@pytest.mark.parametrize("profile", OVERLAYS)
def test_models_configmap_feeds_job_and_workers(profile: ClusterProfile) -> None:
    """The workers read serve-app-models (name:version), the Job serve-app-publish
    (name:version:source): the rollout script applies the first only after the Job."""
    app = load_app_config(REPO_ROOT / profile.app_config)
    workers, publish = docs_of(profile, "ConfigMap")
    assert workers == {"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "serve-app-models"},
        "data": {"MODELS": " ".join(f"{m.name}:{m.version}" for m in app.models),
                 "REPOSITORY_ROOT": app.repository.root}}  # fmt: skip
    assert publish["metadata"]["name"] == "serve-app-publish"
    assert publish["data"] == {
        "MODELS": " ".join(
            f"{m.name}:{m.version}:/opt/model-sources/{m.name}/{m.version}" for m in app.models
        ),
        "REPOSITORY_ROOT": app.repository.root,
    }
    (job,) = docs_of(profile, "Job")
    job_containers = job["spec"]["template"]["spec"]["containers"]
    init = [c for s in pod_specs(profile).values() for c in s.get("initContainers", [])]
    for containers, configmap in ((job_containers, publish), (init, workers)):
        for c in containers:
            refs = {
                e["name"]: e["valueFrom"]["configMapKeyRef"] for e in c["env"] if "valueFrom" in e
            }
            assert refs["MODELS"] == {"name": configmap["metadata"]["name"], "key": "MODELS"}


@pytest.mark.parametrize("profile", OVERLAYS)
def test_ray_containers_get_the_ingress_environment(profile: ClusterProfile) -> None:
    app = load_app_config(REPO_ROOT / profile.app_config)
    assert (app.http.ingress, app.http.admin_host, app.http.host) == ("haproxy", None, "0.0.0.0")
    for spec in pod_specs(profile).values():
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        # The image's wrapper (errors in our JSON shape; no rebinding: the admin-port
        # wrapper is a laptop concern), written by the Dockerfile at that path.
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == POD_WRAPPER_PATH
        assert env["SERVE_APP_RETRY_AFTER_S"] == str(app.http.retry_after_s)
        dockerfile = (REPO_ROOT / "Dockerfile").read_text()
        assert "from serve_app.local.ingress import write_pod_wrapper; write_pod_wrapper()" in (
            dockerfile
        )
        ports = {p["containerPort"] for p in spec["containers"][0].get("ports", [])}
        assert not ports & {8404, 9101}, "HAProxy stats/metrics must not be declared"


@pytest.mark.parametrize("profile", OVERLAYS)
def test_kuberay_admission_rules(profile: ClusterProfile) -> None:
    """The checks of KubeRay 1.7's RayService validation that these manifests touch."""
    rs = rayservice(profile)
    name = rs["metadata"]["name"]
    # DNS-1035 label of at most 53 - 6 characters (KubeRay's MaxRayServiceNameLength).
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47
    cluster = rs["spec"]["rayClusterConfig"]
    resource_params = {"num-cpus", "num-gpus", "memory", "resources"}
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        # Resources go either in rayStartParams or in the group's `resources`, never both.
        assert not (resource_params & group["rayStartParams"].keys() and group.get("resources"))
        assert "labels" not in group["rayStartParams"]
    assert "headService" not in cluster["headGroupSpec"]
    assert rs["spec"]["upgradeStrategy"]["type"] in {
        "NewCluster",
        "NewClusterWithIncrementalUpgrade",
        "None",
    }


def kuberay_shm(spec: dict[str, Any], ray_start_params: dict[str, Any]) -> dict[str, Any] | None:
    """The /dev/shm volume of the Ray container once KubeRay v1.7 built the pod (pod.go:
    BuildPod -> addEmptyDir on container 0, skipped for an explicit plasma-directory or a
    path already mounted; makeEmptyDirVolume sizes it to the memory limit, else request)."""
    container = spec["containers"][0]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    if "/dev/shm" in mounts:
        return volumes[mounts["/dev/shm"]]
    if "plasma-directory" in ray_start_params:
        return None
    resources = container.get("resources", {})
    memory = resources.get("limits", {}).get("memory") or resources.get("requests", {}).get(
        "memory"
    )
    return {"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": memory}}


@pytest.mark.parametrize("profile", OVERLAYS)
def test_every_ray_container_gets_bounded_shared_memory_from_kuberay(
    profile: ClusterProfile,
) -> None:
    """A container's /dev/shm is 64 MiB; Ray's object store needs a memory-backed one.
    KubeRay v1.7 adds it, bounded by the container's memory limit, unless the manifest
    takes the path (an emptyDir of ours had no sizeLimit)."""
    cluster = rayservice(profile)["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster["workerGroupSpecs"]
    ]
    for name, group in groups:
        spec = group["template"]["spec"]
        limit = spec["containers"][0]["resources"]["limits"]["memory"]
        assert kuberay_shm(spec, group.get("rayStartParams", {})) == {
            "name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": limit}
        }, name  # fmt: skip
