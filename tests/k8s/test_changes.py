"""What `serve-app render-k8s` says a config change does to a running RayService."""

from __future__ import annotations

from typing import Any

import pytest

from serve_app.config import AppConfig, load_app_config
from serve_app.k8s.changes import (
    LIGHT_DEPLOYMENT_OPTIONS,
    classify_patch_change,
    format_changes,
    pending_changes,
    verdict,
)
from serve_app.k8s.profiles import PROFILES
from serve_app.k8s.render import rayservice_patch, render_k8s_files

GPU = next(p for p in PROFILES if p.name == "gpu")
WORKER = "/spec/rayClusterConfig/workerGroupSpecs/0"


def gpu_app(**model_update: Any) -> AppConfig:
    app = load_app_config(GPU.app_config)
    model = app.models[0].model_copy(update=model_update)
    return app.model_copy(update={"models": [model]})


def kinds(old: AppConfig, new: AppConfig) -> list[tuple[str, str]]:
    changes = classify_patch_change(rayservice_patch(old, GPU), rayservice_patch(new, GPU))
    return [(c.kind, c.where) for c in changes]


def test_light_options_match_rays_own_update_types() -> None:
    from ray.serve._private.config import DeploymentConfig
    from ray.serve._private.utils import DeploymentOptionUpdateType as T

    light = {
        name
        for name, field in DeploymentConfig.model_fields.items()
        if (field.json_schema_extra or {}).get("update_type") not in (None, T.HeavyWeight)
    }
    assert light == LIGHT_DEPLOYMENT_OPTIONS


def test_same_config_is_no_change() -> None:
    assert kinds(gpu_app(), gpu_app()) == []
    assert verdict([]) == "no change"


def test_raising_max_replicas_is_in_place_but_the_worker_cap_is_not_applied() -> None:
    base = gpu_app()
    more = gpu_app(autoscaling=base.models[0].autoscaling.model_copy(update={"max_replicas": 12}))
    assert kinds(base, more) == [
        ("not-applied", f"{WORKER}/maxReplicas"),
        ("in-place", "serveConfigV2 minilm/ModelDeployment autoscaling_config"),
    ]
    changes = classify_patch_change(rayservice_patch(base, GPU), rayservice_patch(more, GPU))
    assert format_changes("kuberay/overlays/gpu", changes).splitlines() == [
        "kuberay/overlays/gpu: in place, no replica restart; NOT APPLIED to the running "
        f"cluster: {WORKER}/maxReplicas",
        "  in-place    serveConfigV2 minilm/ModelDeployment autoscaling_config: max_replicas "
        "8 -> 12; no replica restart",
        f"  not-applied {WORKER}/maxReplicas: 2 -> 3; KubeRay v1.7 keeps the running "
        "RayCluster's value (not part of its spec hash): patch the RayCluster too, or ship it "
        "with a new cluster",
    ]


def test_graceful_shutdown_within_the_bound_stays_out_of_the_pod_spec() -> None:
    assert kinds(gpu_app(), gpu_app(graceful_shutdown_timeout_s=55)) == [
        ("in-place", "serveConfigV2 minilm/ModelDeployment graceful_shutdown_timeout_s"),
    ]
    with pytest.raises(ValueError) as info:
        rayservice_patch(gpu_app(graceful_shutdown_timeout_s=90), GPU)
    assert str(info.value) == (
        "graceful_shutdown_timeout_s over cluster.worker.max_graceful_shutdown_s (60 s): "
        "minilm/ModelDeployment 90 s; lower it, or raise the bound (a pod spec change: the "
        "next apply builds a new cluster)"
    )


def test_version_bump_rolls_the_replicas() -> None:
    changes = classify_patch_change(
        rayservice_patch(gpu_app(), GPU), rayservice_patch(gpu_app(version=2), GPU)
    )
    assert [(c.kind, c.where, c.detail) for c in changes] == [(
        "rolling", "serveConfigV2 minilm args",
        "version 1 -> 2; the application is rebuilt and its deployments' replicas replaced "
        "one at a time",
    )]  # fmt: skip
    assert verdict(changes) == "in place, with replicas replaced one at a time (no new cluster)"


def test_pod_and_serve_startup_changes() -> None:
    base = gpu_app()
    bigger = base.model_copy(update={"cluster": base.cluster.model_copy(update={
        "worker": base.cluster.worker.model_copy(update={"cpus": 7})})})  # fmt: skip
    assert kinds(base, bigger) == [
        ("new-cluster", f"{WORKER}/template/spec/containers/0/resources")
    ]

    slower = base.model_copy(
        update={"http": base.http.model_copy(update={"request_timeout_s": 60.0})}
    )
    found = kinds(base, slower)
    assert ("not-applied", "serveConfigV2 http_options") in found
    assert ("new-cluster", f"{WORKER}/template/spec/containers/0/lifecycle") in found
    assert verdict(classify_patch_change(rayservice_patch(base, GPU), rayservice_patch(
        slower, GPU))).startswith("NEW CLUSTER")  # fmt: skip


def test_committed_files_have_no_pending_change() -> None:
    assert {k: v for k, v in pending_changes(".").items() if v} == {}
    assert len(render_k8s_files(".")) == 3 * len(PROFILES)
