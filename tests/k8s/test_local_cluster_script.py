"""kuberay/scripts/local-cluster.sh: the documented local run on kind or minikube.

No Docker engine or cluster here: docker, kind, minikube, kubectl, helm, serve-app, curl
and uname are stand-ins on PATH that log each call. The dry run must print every command
and run none; a run against the stand-ins must run exactly what the dry run printed. The
capacity the script and the README state is recomputed from the rendered dev overlay.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.test_manifests import REPO_ROOT, one, render

SCRIPT = REPO_ROOT / "kuberay" / "scripts" / "local-cluster.sh"
TOOLS = ("docker", "kind", "minikube", "kubectl", "helm", "serve-app", "curl")
STANDIN = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
case "$(basename "$0") $1" in
  "uname -m") echo "$ARCH" ;;
  "kubectl --context") [ "$3" = port-forward ] && exec sleep 30 ;;
esac
exit 0
"""
TAG = "0.1.0-ray2.60.0-py311"
OPERATOR_REQUESTS = (0.1, 0.5)
"""KubeRay 1.7.0's Helm chart: resources.limits cpu 100m, memory 512Mi, no requests (so
the requests equal the limits)."""


def run(tmp_path: Path, *args: str, arch: str = "x86_64") -> tuple[int, list[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in (*TOOLS, "uname"):
        (bin_dir / tool).write_text(STANDIN)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "ARCH": arch}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.stderr == "", proc.stderr
    printed = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    return proc.returncode, printed, log.read_text().splitlines()


KIND_X86 = [
    "kind create cluster --name serve-app --wait 120s",
    f"docker build --platform linux/amd64 --build-arg VARIANT= -t serve-app:{TAG} .",
    f"docker build --platform linux/amd64 --build-arg VARIANT= --target seed -t "
    f"serve-app-seed:{TAG} .",
    f"kind load docker-image serve-app:{TAG} --name serve-app",
    f"kind load docker-image serve-app-seed:{TAG} --name serve-app",
    "helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update",
    "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0 "
    "--namespace kuberay-system --create-namespace --kube-context kind-serve-app --wait "
    "--timeout 10m",
    "kubectl --context kind-serve-app apply --server-side --field-manager=serve-app -k "
    "kuberay/overlays/dev",
    "kubectl --context kind-serve-app wait --for=condition=complete "
    "job/serve-app-populate-models --timeout 1800s",
    "serve-app k8s wait serve-app --context kind-serve-app --timeout-s 1800",
    "kubectl --context kind-serve-app port-forward svc/serve-app-serve-svc 8000:8000 &",
    "curl -fsS --retry 10 --retry-delay 1 --retry-connrefused http://127.0.0.1:8000/v2/models",
]


def test_dry_run_prints_every_command_and_runs_none(tmp_path: Path) -> None:
    code, printed, calls = run(tmp_path, "--dry-run")
    assert code == 0
    assert [p.replace("VARIANT=''", "VARIANT=") for p in printed] == KIND_X86
    assert calls == ["uname -m"]  # the architecture only


def test_dry_run_on_an_arm_laptop_with_minikube(tmp_path: Path) -> None:
    code, printed, calls = run(tmp_path, "--dry-run", "--driver", "minikube", "--name", "demo",
                               arch="arm64")  # fmt: skip
    assert code == 0
    assert calls == ["uname -m"]
    assert printed[:5] == [
        "minikube start -p demo --cpus 6 --memory 12g",
        f"docker build --platform linux/arm64 --build-arg VARIANT=-aarch64 -t serve-app:{TAG} .",
        "docker build --platform linux/arm64 --build-arg VARIANT=-aarch64 --target seed -t "
        f"serve-app-seed:{TAG} .",
        f"minikube -p demo image load serve-app:{TAG}",
        f"minikube -p demo image load serve-app-seed:{TAG}",
    ]
    assert "--kube-context demo" in printed[6]


def test_a_run_executes_exactly_what_the_dry_run_prints(tmp_path: Path) -> None:
    code, printed, calls = run(tmp_path)
    assert code == 0
    assert [p.replace("VARIANT=''", "VARIANT=") for p in printed] == KIND_X86
    executed = [c for c in calls if c != "uname -m"]
    expected = [c.removesuffix(" &") for c in KIND_X86]
    # The port-forward runs in the background: it may log after curl's first try.
    assert (executed[:-2], sorted(executed[-2:])) == (expected[:-2], sorted(expected[-2:]))


@pytest.mark.parametrize("bad", [["--driver", "k3d"], ["--frobnicate"]])
def test_bad_arguments_exit_2(tmp_path: Path, bad: list[str]) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *bad], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""


def _cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _gib(q: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(q[:-2]) * units[q[-2:]]


def _pod(spec: dict) -> tuple[float, float]:
    """A pod's effective requests: its containers' sum, or its largest init container."""

    def req(c: dict) -> tuple[float, float]:
        r = c.get("resources", {}).get("requests", {})
        return _cpu(r.get("cpu", "0")), _gib(r.get("memory", "0Mi"))

    main = [req(c) for c in spec["containers"]]
    init = [req(c) for c in spec.get("initContainers", [])]
    cpu = max([sum(c for c, _ in main), *(c for c, _ in init)])
    mem = max([sum(m for _, m in main), *(m for _, m in init)])
    return cpu, mem


def test_stated_capacity_is_the_dev_overlays_requests() -> None:
    docs = render("dev")
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    head = _pod(cluster["headGroupSpec"]["template"]["spec"])
    sidecar = cluster["autoscalerOptions"]["resources"]["requests"]
    head = (head[0] + _cpu(sidecar["cpu"]), head[1] + _gib(sidecar["memory"]))
    worker = _pod(cluster["workerGroupSpecs"][0]["template"]["spec"])
    job = _pod(one(docs, "Job")["spec"]["template"]["spec"])
    assert (head, worker, job) == ((1.5, 3.5), (2.0, 4.0), (0.5, 1.0))
    total = [round(sum(x), 3) for x in zip(head, worker, job, OPERATOR_REQUESTS, strict=True)]
    assert total == [4.1, 9.0]
    text = SCRIPT.read_text()
    assert "4.1 CPU / 9 GiB for one worker" in text
    assert "worker (2 CPU / 4 GiB more)" in text
    overlay = yaml.safe_load((REPO_ROOT / "kuberay/overlays/dev/kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in overlay["images"]} == {
        "serve-app": TAG, "serve-app-seed": TAG}  # fmt: skip
