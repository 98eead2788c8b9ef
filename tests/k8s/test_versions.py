"""One Ray version everywhere: the pyproject pin, the Dockerfile's base image, the
RayService rayVersion and the image tags of both overlays (and torch's pin likewise)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pin(package: str) -> str:
    """The exact ``==`` pin of ``package`` in the project's dependencies."""
    pattern = re.compile(rf"^{re.escape(package)}(\[[^\]]*\])?==([^;,\s]+)$")
    pins = [m.group(2) for d in pyproject()["project"]["dependencies"] if (m := pattern.match(d))]
    assert len(pins) == 1, f"expected one exact pin of {package}"
    return pins[0]


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.M)
    return value


def expected_tag(variant: str) -> str:
    return f"{pyproject()['project']['version']}-ray{pin('ray')}-py311{variant}"


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    here = Path(sys.executable).parent / "kubectl"
    exe = str(here) if here.exists() else shutil.which("kubectl") or "kubectl"
    out = subprocess.run(
        [exe, "kustomize", str(REPO_ROOT / "kuberay" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def images(pod_spec: dict[str, Any]) -> set[str]:
    return {c["image"] for c in pod_spec.get("initContainers", []) + pod_spec["containers"]}


def test_pins_are_exact_and_installed() -> None:
    assert pin("ray") == "2.60.0"
    assert installed_version("ray") == pin("ray")


def test_dockerfile_defaults_follow_the_pins() -> None:
    assert dockerfile_arg("RAY_VERSION") == pin("ray")
    assert dockerfile_arg("TORCH_VERSION") == pin("torch")
    assert dockerfile_arg("VARIANT") == '""'
    # py311 matches requires-python; the builder uses the same Python minor version.
    assert pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    assert "FROM rayproject/ray:${RAY_VERSION}-py311${VARIANT} AS runtime" in DOCKERFILE
    assert "FROM python:3.11-slim AS wheel" in DOCKERFILE


def test_dockerfile_runs_as_ray_user_and_ships_no_weights() -> None:
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    assert [s.split("\n", 1)[0] for s in stages][-1] == "runtime AS serving"
    runtime = next(s for s in stages if " AS runtime" in s.split("\n", 1)[0])
    assert re.findall(r"^USER (\S+)$", runtime, flags=re.M)[-1] == "1000:100"
    copies = re.findall(r"^COPY (.+)$", DOCKERFILE, flags=re.M)
    assert copies == [
        "pyproject.toml README.m[d] ./",
        "serve_app ./serve_app",
        "--from=wheel /wheels /tmp/wheels",
    ]
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {"model-repository/", ".venv/", "**/*.safetensors", ".git/"} <= set(ignored)


@pytest.mark.parametrize(
    ("overlay", "variant"),
    [pytest.param("dev", "", id="dev-overlay"), pytest.param("gpu", "-gpu", id="gpu-overlay")],
)
def test_ray_version_and_image_tags(overlay: str, variant: str) -> None:
    docs = rendered(overlay)
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pin("ray")
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    assert set().union(*map(images, pods)) == {f"serve-app:{expected_tag(variant)}"}
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert images(job["spec"]["template"]["spec"]) == {f"serve-app-seed:{expected_tag('')}"}
