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
from tests.k8s.test_manifests import one, render
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
