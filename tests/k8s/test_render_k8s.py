"""``serve_app.k8s.render`` and ``serve-app render-k8s``: drift, derivations, refusals,
and the shell scripts of the manifests run for real (fake ``ray``/``python`` where a
cluster would be needed)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from serve_app.config import AppConfig, ClusterConfig, WorkerPodConfig
from serve_app.k8s.cli_render import add_render_k8s_command
from serve_app.k8s.drain import (
    SERVE_DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S,
    DrainTiming,
    prestop_script,
)
from serve_app.k8s.profiles import PROFILES, ClusterProfile
from serve_app.k8s.render import (
    check_cluster_app,
    ray_container_env,
    rayservice_patch,
    render_k8s_files,
    stale_k8s_files,
    worker_max_replicas,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV, GPU = PROFILES
BASE = REPO_ROOT / "kuberay" / "base"
VENV_BIN = str(Path(sys.executable).parent)


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


def test_generated_files_are_up_to_date() -> None:
    assert stale_k8s_files(REPO_ROOT) == [], "run `serve-app render-k8s` and commit the result"
    assert sorted(map(str, render_k8s_files(REPO_ROOT))) == [
        f"kuberay/overlays/{o}/{f}.generated.yaml"
        for o in ("dev", "gpu")
        for f in ("models", "populate-job", "rayservice")
    ]


def test_cli_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    assert run_cli(["render-k8s", "--root", str(tmp_path), "--check"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "kuberay/overlays/dev/rayservice.generated.yaml is out of date; run `serve-app render-k8s`"
    )
    assert run_cli(["render-k8s", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "wrote kuberay/overlays/dev/rayservice.generated.yaml"
    )
    for path, text in render_k8s_files(REPO_ROOT).items():
        assert (tmp_path / path).read_text() == text == (REPO_ROOT / path).read_text()
    assert run_cli(["render-k8s", "--root", str(tmp_path), "--check"]) == 0
    assert capsys.readouterr().out == "6 generated KubeRay files are up to date\n"


def test_cli_says_what_a_change_does_to_a_running_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    shutil.copytree(REPO_ROOT / "kuberay", tmp_path / "kuberay")
    path = tmp_path / "configs" / "cluster-gpu.yaml"
    path.write_text(path.read_text().replace("max_replicas: 8", "max_replicas: 12"))
    assert run_cli(["render-k8s", "--root", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "kuberay/overlays/gpu: in place, no replica restart; NOT APPLIED to the running "
        "cluster: /spec/rayClusterConfig/workerGroupSpecs/0/maxReplicas"
    )
    assert len(out) == 3


def test_cli_refuses_a_config_that_would_land_on_the_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO_ROOT / "configs", tmp_path / "configs")
    path = tmp_path / "configs" / "cluster-dev.yaml"
    path.write_text(path.read_text().replace("num_cpus: 1", "num_cpus: 0"))
    assert run_cli(["render-k8s", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: model 'minilm' requests no CPU and no GPU: it could land on the head, "
        "which is sized for GCS and the Serve controller, not for a model\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"repository": {"root": "./model-repository"}},
            "repository.root must be /mnt/models in a cluster config",
        ),
        ({"http": {"host": "127.0.0.1"}}, "http.host must be 0.0.0.0 in a cluster config"),
        (
            {"http": {"host": "0.0.0.0", "ingress": "haproxy", "admin_host": "127.0.0.1"}},
            "http.admin_host must be null with ingress haproxy in a cluster config",
        ),
        (
            {"models": [{"name": "minilm", "version": "latest"}]},
            "model 'minilm': pin a version in a cluster config (version: latest would be "
            "resolved by each replica on its own)",
        ),
        (
            {
                "models": [
                    {"name": "big", "version": 1, "resources": {"num_cpus": 1, "num_gpus": 1}}
                ]
            },
            "model 'big' (1.0 CPU, 1.0 GPU) does not fit a dev worker (2 CPU, 0 GPU)",
        ),
    ],
)
def test_check_cluster_app_refuses(change: dict[str, object], message: str) -> None:
    data = cluster_app({"name": "m"}).model_dump() | change
    with pytest.raises(ValueError) as e:
        check_cluster_app(AppConfig.model_validate(data), DEV)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("gpus", "replicas", "pods"),
    [(0.4, 5, 3), (0.25, 9, 3), (0.5, 4, 2), (0.3, 3, 1), (1, 3, 3)],
)
def test_worker_max_replicas_bin_packs_fractional_gpus(
    gpus: float, replicas: int, pods: int
) -> None:
    """floor(1 / g) replicas per 1-GPU pod: five 0.4-GPU replicas need 3 pods (a sum of
    2.0 GPUs would say 2)."""
    app = cluster_app(
        {"name": "a", "num_replicas": replicas, "resources": {"num_cpus": 1, "num_gpus": gpus}}
    )
    assert worker_max_replicas(app, GPU) == pods


def test_worker_max_replicas_checks_cpus_with_gpus() -> None:
    """0.25-GPU replicas of 3 CPUs: 8-CPU pods take 2 each, whatever GPU share is left."""
    app = cluster_app(
        {"name": "a", "num_replicas": 4, "resources": {"num_cpus": 3, "num_gpus": 0.25}}
    )
    assert worker_max_replicas(app, GPU) == 2


def test_worker_max_replicas_sums_the_models() -> None:
    app = cluster_app(
        {
            "name": "a",
            "autoscaling": {"max_replicas": 8},
            "resources": {"num_cpus": 1, "num_gpus": 0.25},
        },
        {"name": "b", "num_replicas": 3, "resources": {"num_cpus": 1, "num_gpus": 0.5}},
    )
    assert worker_max_replicas(app, GPU) == 4  # 2 + 1.5 GPUs on 1-GPU pods
    cpu_bound = ClusterProfile("cpu", "x", 8, "8Gi", 1, 30)
    heavy = cluster_app(
        {"name": "c", "num_replicas": 6, "resources": {"num_cpus": 4, "num_gpus": 0.1}}
    )
    assert worker_max_replicas(heavy, cpu_bound) == 3  # 24 CPUs on 8-CPU pods
    assert worker_max_replicas(cluster_app({"name": "d"}), DEV) == 1


@pytest.mark.parametrize(
    ("resource", "start_params"),
    [
        ("nvidia.com/gpu", {}),
        ("nvidia.com/mig-1g.10gb", {}),  # KubeRay v1.7 recognises the MIG name itself
        ("nvidia.com/mig-1g.10gb+me", {"num-gpus": "1"}),
        ("nvidia.com/mig-1c.3g.20gb", {"num-gpus": "1"}),
    ],
)
def test_worker_pod_shape_comes_from_the_cluster_config(
    resource: str, start_params: dict[str, str]
) -> None:
    """`cluster.worker` sets the pod's requests/limits, the GPU's resource name (a MIG
    slice too), and num-gpus where KubeRay would not derive it from the limit."""
    app = cluster_app(
        {"name": "m", "version": 1, "resources": {"num_cpus": 1, "num_gpus": 0.5}}
    ).model_copy(
        update={
            "cluster": ClusterConfig(
                worker=WorkerPodConfig(cpus=5, memory="20Gi", gpus=1, gpu_resource=resource)
            )
        }
    )
    ops = {op["path"]: op["value"] for op in rayservice_patch(app, GPU)}
    worker = "/spec/rayClusterConfig/workerGroupSpecs/0"
    assert ops[f"{worker}/template/spec/containers/0/resources"] == {
        "requests": {"cpu": "5", "memory": "20Gi"},
        "limits": {"cpu": "5", "memory": "20Gi", resource: "1"},
    }
    assert {
        k.rsplit("/", 1)[1]: v for k, v in ops.items() if k.startswith(f"{worker}/rayStartParams/")
    } == start_params
    with pytest.raises(ValueError, match="does not fit a gpu worker \\(5 CPU, 1 GPU\\)"):
        big = app.models[0].model_copy(
            update={"resources": app.models[0].resources.model_copy(update={"num_cpus": 6})}
        )
        rayservice_patch(app.model_copy(update={"models": [big]}), GPU)


def test_ingress_mode_sets_the_pod_env() -> None:
    http = cluster_app({"name": "m"}).http
    haproxy = http.model_copy(update={"ingress": "haproxy", "admin_host": None})
    same_loop = {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    }
    wrapper = {
        "RAY_SERVE_HAPROXY_BINARY_PATH": "/home/ray/.serve-app/haproxy.sh",
        "SERVE_APP_RETRY_AFTER_S": str(http.retry_after_s),
    }
    assert ray_container_env(haproxy) == same_loop | {"RAY_SERVE_ENABLE_HA_PROXY": "1"} | wrapper
    proxy = http.model_copy(update={"ingress": "proxy"})
    assert ray_container_env(proxy) == same_loop | {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_default_graceful_shutdown_matches_ray() -> None:
    from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

    assert SERVE_DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S == DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S


def fake_bin(tmp_path: Path, python_body: str) -> dict[str, str]:
    """PATH with fake ``python`` and ``ray`` that record their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "python").write_text(f"#!/bin/bash\n{python_body}\n")
    (bin_dir / "ray").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HOSTNAME="pod-1")


@pytest.mark.parametrize(
    ("python_body", "expected"),
    [
        (
            'echo "2026 INFO noise"; echo node_id=abc123',
            [
                "drain-node --node-id abc123 --reason DRAIN_NODE_REASON_PREEMPTION "
                "--reason-message pod pod-1 is terminating --deadline-remaining-seconds 1",
                "stop --grace-period 10",
            ],
        ),
        ("exit 1", ["stop --grace-period 10"]),  # no Ray to ask: wait, then stop anyway
    ],
)
def test_prestop_hook_drains_waits_and_stops_ray(
    tmp_path: Path, python_body: str, expected: list[str]
) -> None:
    env = fake_bin(tmp_path, python_body)
    script = prestop_script(
        DrainTiming(drain_deadline_s=1, proxy_drain_s=2, termination_grace_period_s=60)
    )
    t0 = time.monotonic()
    out = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    elapsed_s = time.monotonic() - t0
    assert (out.returncode, out.stderr) == (0, "")
    assert (tmp_path / "calls").read_text().splitlines() == expected
    assert 2 <= elapsed_s < 10  # waits for the proxy drain, no longer


def base_script(file: str, container: str) -> str:
    """The bash script of a container (or init container) in a base manifest."""
    for doc in yaml.safe_load_all((BASE / file).read_text()):
        pods = (
            [doc["spec"]["template"]["spec"]]
            if doc["kind"] == "Job"
            else [
                g["template"]["spec"] for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]
            ]
        )
        for pod in pods:
            for c in pod.get("initContainers", []) + pod["containers"]:
                if c["name"] == container:
                    assert c["command"] == ["bash", "-c"]
                    return str(c["args"][0])
    raise AssertionError(f"no container {container} in {file}")


def run_script(script: str, models: str, tmp_path: Path, timeout_s: float = 60) -> str:
    env = dict(
        os.environ,
        MODELS=models,
        REPOSITORY_ROOT=str(tmp_path / "repo"),
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
    )
    out = subprocess.run(
        ["bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_populate_job_publishes_once_and_workers_then_start(tmp_path: Path) -> None:
    src = tmp_path / "src" / "minilm" / "1"
    src.mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "bert"}')
    (src / "model.safetensors").write_bytes(b"\0" * 1000)
    populate = base_script("populate-job.yaml", "populate")
    (tmp_path / "src" / "minilm-pinned").mkdir()
    (tmp_path / "src" / "minilm-pinned" / "3").symlink_to(src)
    words = f"minilm:1:{src} minilm-pinned:3:{tmp_path}/src/minilm-pinned/3"
    first = run_script(populate, words, tmp_path)
    assert first.splitlines()[:2] == [
        f"published {tmp_path}/repo/minilm/1",
        f"published {tmp_path}/repo/minilm-pinned/3",
    ]
    again = run_script(populate, words, tmp_path)
    assert again.splitlines()[:2] == [
        "skip minilm: version 1 is already published",
        "skip minilm-pinned: version 3 is already published",
    ]
    assert [line.split(" (")[0] for line in again.splitlines()[2:]] == [
        "OK   minilm/1",
        "OK   minilm-pinned/3",
    ]
    wait = base_script("rayservice.yaml", "wait-for-models")
    assert run_script(wait, "minilm:1 minilm-pinned:3", tmp_path, timeout_s=10) == ""


def test_populate_job_first_makes_the_repository_its_own(tmp_path: Path) -> None:
    """The init step changes the owner of the repository folder only, and says what it
    did; a folder already owned passes untouched; one it cannot chown fails the Job
    with the remedy, instead of leaving the workers waiting for weights forever."""
    own = base_script("populate-job.yaml", "own-repository")
    repo = tmp_path / "repo"
    repo.mkdir()
    me = f"{os.getuid()}:{os.getgid()}"

    def run(owner: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, OWNER=owner, REPOSITORY_ROOT=str(repo))
        return subprocess.run(["bash", "-c", own], env=env, capture_output=True, text=True)

    ok = run(me)
    assert (ok.returncode, ok.stdout) == (0, f"{repo} is owned by {me}\n")
    if os.getuid() != 0:  # an ordinary user cannot give a folder away
        refused = run("4242:4242")
        assert refused.returncode == 1
        assert refused.stderr.endswith(
            "own the volume's folder by 4242:4242 (NFS root_squash, restricted pods)\n"
        )
    else:
        moved = run("4242:4242")
        assert (moved.returncode, moved.stdout) == (0, f"{repo}: owner {me} -> 4242:4242\n")
        assert (repo.stat().st_uid, repo.stat().st_gid) == (4242, 4242)


def test_workers_wait_for_a_missing_model(tmp_path: Path) -> None:
    wait = base_script("rayservice.yaml", "wait-for-models")
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_script(wait, "ghost:2", tmp_path, timeout_s=2)
    assert e.value.stdout.decode().splitlines()[0] == (
        f"waiting for ghost (2) under {tmp_path}/repo: run the populate Job"
    )
