"""``serve_app.k8s.fit`` and its call in ``serve-app render-k8s``: each profile's Serve
demand against its worker pod shape (no cluster, no Ray)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from serve_app.config import AppConfig, ClusterConfig, WorkerPodConfig
from serve_app.deploy.demand import DeploymentDemand
from serve_app.k8s.cli_render import add_render_k8s_command
from serve_app.k8s.fit import (
    check_fit,
    fit_reports,
    full_scale_warning,
    quantity_bytes,
    replica_misfits,
    worker_capacity,
)
from serve_app.k8s.profiles import PROFILES

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV, GPU = PROFILES
GIB = 2**30


def cluster_app(*models: dict[str, object]) -> AppConfig:
    return AppConfig.model_validate(
        {
            "repository": {"root": "/mnt/models"},
            "http": {"host": "0.0.0.0", "ingress": "proxy"},
            "models": models,
        }
    )


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serve-app")
    add_render_k8s_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_quantities_are_read_as_kubernetes_writes_them() -> None:
    assert quantity_bytes("4Gi") == 4 * GIB
    assert quantity_bytes("512Mi") == 512 * 2**20
    assert quantity_bytes("1.5G") == 1.5e9
    assert quantity_bytes("1073741824") == GIB
    with pytest.raises(ValueError) as e:
        quantity_bytes("4 gigs")
    assert str(e.value) == "not a Kubernetes quantity: '4 gigs'"


def test_a_worker_gives_replicas_its_cpus_gpus_and_memory_less_the_object_store() -> None:
    assert worker_capacity(DEV) == {"CPU": 2.0, "memory": 4 * GIB * 0.7}
    assert worker_capacity(GPU) == {"CPU": 6.0, "memory": 24 * GIB * 0.7, "GPU": 1.0}


def test_a_replica_that_fits_no_worker_is_an_error_naming_deployment_and_resource() -> None:
    demands = [
        DeploymentDemand("minilm", "ModelDeployment", {"CPU": 1.0}, 1, 3),
        DeploymentDemand("big", "ModelDeployment", {"CPU": 3.0, "memory": 3 * GIB}, 1, 1),
        DeploymentDemand("vision", "ModelDeployment", {"CPU": 1.0, "GPU": 0.5}, 1, 1),
        DeploymentDemand("tpu", "ModelDeployment", {"CPU": 1.0, "tpu": 1.0}, 1, 1),
    ]
    assert replica_misfits(demands, worker_capacity(DEV), "dev") == [
        "error: dev: big/ModelDeployment: one replica needs CPU 3, a dev worker pod gives "
        "Ray CPU 2 (cluster.worker.cpus): it would stay pending",
        "error: dev: big/ModelDeployment: one replica needs memory 3.0 GiB, a dev worker "
        "pod gives Ray memory 2.8 GiB (cluster.worker.memory less Ray's object store, "
        "30 %): it would stay pending",
        "error: dev: vision/ModelDeployment: one replica needs GPU 0.5, no dev worker pod "
        "has GPU: it would stay pending",
        "error: dev: tpu/ModelDeployment: one replica needs tpu 1, no dev worker pod has "
        "tpu: it would stay pending",
    ]


def test_a_full_scale_beyond_max_workers_is_a_warning() -> None:
    demands = [
        DeploymentDemand("minilm", "ModelDeployment", {"CPU": 1.0, "GPU": 0.25}, 1, 8),
        DeploymentDemand("oip", "OIPServer", {}, 1, 1),
    ]
    assert full_scale_warning(demands, worker_capacity(GPU), 2, "gpu") == []
    assert full_scale_warning(demands, worker_capacity(GPU), 1, "gpu") == [
        "warning: gpu: at full scale (every max_replicas) the deployments need CPU 8, GPU 2, "
        "more than 1 worker pod (maxReplicas) of CPU 6, GPU 1, memory 16.8 GiB give "
        "(CPU 2, GPU 1 short): autoscaling stops before every deployment reaches max_replicas"
    ]


def test_the_committed_cluster_configs_fit_their_workers() -> None:
    assert [(r.profile, r.errors, r.warnings) for r in fit_reports(REPO_ROOT)] == [
        ("dev", [], []),
        ("gpu", [], []),
    ]


def test_stages_beyond_the_pods_maxreplicas_counts_are_a_warning() -> None:
    # maxReplicas is sized from the models' own resources; a staged model's stages have
    # their own, which the fit check sums from the Serve config.
    stage = {"num_replicas": 2, "resources": {"num_cpus": 2}}
    app = cluster_app(
        {
            "name": "pp",
            "version": 1,
            "stages": [{"layers": [0, 3], **stage}, {"layers": [3, 6], **stage}],
        }
    )
    report = check_fit(app, DEV)
    assert report.errors == []
    assert report.warnings == [
        "warning: dev: at full scale (every max_replicas) the deployments need CPU 8, more "
        "than 1 worker pod (maxReplicas) of CPU 2, memory 2.8 GiB give (CPU 6 short): "
        "autoscaling stops before every deployment reaches max_replicas"
    ]


def test_a_stage_that_fits_no_worker_is_an_error() -> None:
    # The render's own check reads a model's resources only, not its stages'.
    app = cluster_app(
        {
            "name": "pp",
            "version": 1,
            "stages": [{"layers": [0, 3], "resources": {"num_cpus": 4}}, {"layers": [3, 6]}],
        }
    )
    assert check_fit(app, DEV).errors == [
        "error: dev: pp/Stage0: one replica needs CPU 4, a dev worker pod gives Ray CPU 2 "
        "(cluster.worker.cpus): it would stay pending"
    ]


def test_the_cluster_sections_worker_shape_is_the_one_checked() -> None:
    app = cluster_app({"name": "big", "version": 1, "resources": {"num_cpus": 4}})
    assert check_fit(app, DEV).errors == [
        "error: dev: big/ModelDeployment: one replica needs CPU 4, a dev worker pod gives "
        "Ray CPU 2 (cluster.worker.cpus): it would stay pending"
    ]
    sized = app.model_copy(
        update={"cluster": ClusterConfig(worker=WorkerPodConfig(cpus=4, memory="8Gi"))}
    )
    report = check_fit(sized, DEV)
    assert (report.errors, report.warnings) == ([], [])


def test_render_k8s_refuses_a_replica_that_fits_no_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    path = tmp_path / "configs" / "cluster-dev.yaml"
    text = path.read_text()
    assert text.count("num_cpus: 1\n") == 1
    path.write_text(text.replace("num_cpus: 1\n", "num_cpus: 1\n      num_gpus: 0.5\n"))
    assert run_cli(["render-k8s", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: dev: minilm/ModelDeployment: one replica needs GPU 0.5, no dev worker pod "
        "has GPU: it would stay pending\n"
    )
    assert not (tmp_path / "kuberay").exists()  # nothing written
