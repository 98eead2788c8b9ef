"""One field manager for every documented flow.

A RayService first applied with a client-side ``kubectl apply`` is owned field by field
by ``kubectl-client-side-apply``; a later server-side apply as ``serve-app`` that changes
``serveConfigV2`` (the rollout script, ``serve-app k8s upgrade``) is then a 409. The
stand-in server records that ownership as the real one does, so the conflict and its
advice are tested; the documented commands are checked to apply as ``serve-app``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve_app.k8s.client import FIELD_MANAGER
from tests.k8s import crd_schema as crds
from tests.k8s import fake_apiserver as fk
from tests.k8s.conftest import API_TOKEN, run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
NS = "serving"


def _write(tmp_path: Path, doc: dict) -> str:
    path = tmp_path / "rayservice.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return str(path)


def _managers(server: fk.FakeApiServer) -> dict[str, list[str]]:
    return {
        m["manager"]: sorted(m["fieldsV1"]["f:spec"])
        for m in server.stored(NS, "demo")["metadata"]["managedFields"]
        if "f:spec" in m["fieldsV1"]
    }


@crds.needs_crds
def test_client_side_apply_then_serve_app_is_a_conflict_with_advice(
    tmp_path, kubeconfig, server, capsys
) -> None:
    fk.client_side_apply(server.url, API_TOKEN, NS, fk.rayservice_manifest())
    assert _managers(server) == {
        "kubectl-client-side-apply": ["f:rayClusterConfig", "f:serveConfigV2", "f:upgradeStrategy"]
    }
    new = _write(tmp_path, fk.rayservice_manifest(route="/v2"))
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", new], capsys
    )
    assert (code, out) == (2, "")
    assert err == (
        'error: Apply failed with 1 conflict: conflict with "kubectl-client-side-apply": '
        ".spec.serveConfigV2 (the RayService was applied with a client-side `kubectl apply`; "
        "every documented flow applies server-side as field manager serve-app: take the "
        "fields over once with --force-conflicts (kubectl: apply --server-side "
        "--field-manager=serve-app --force-conflicts), then keep applying that way)\n"
    )
    code, out, err = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", new, "--force-conflicts"],
        capsys,
    )
    assert (code, err) == (0, "")
    assert out == "rayservice.ray.io/demo configured (namespace serving, generation 2)\n"
    assert _managers(server)[FIELD_MANAGER] == [
        "f:rayClusterConfig", "f:serveConfigV2", "f:upgradeStrategy"
    ]  # fmt: skip

    # From then on one owner: the next change applies without force.
    newer = _write(tmp_path, fk.rayservice_manifest(route="/v3"))
    code, out, _ = run_cli(
        ["k8s", "apply", "--kubeconfig", kubeconfig, "-n", NS, "-f", newer], capsys
    )
    assert (code, out) == (
        0,
        "rayservice.ray.io/demo configured (namespace serving, generation 3)\n",
    )


@crds.needs_crds
def test_a_client_side_update_keeps_its_ownership(tmp_path, kubeconfig, server, capsys) -> None:
    """kubectl's second client-side apply is a three-way merge patch: still its manager."""
    fk.client_side_apply(server.url, API_TOKEN, NS, fk.rayservice_manifest())
    fk.client_side_apply(server.url, API_TOKEN, NS, fk.rayservice_manifest(route="/v2"))
    stored = server.stored(NS, "demo")
    assert stored["metadata"]["generation"] == 2
    assert list(_managers(server)) == ["kubectl-client-side-apply"]


DOCS = ["README.md", "kuberay/README.md", "kuberay/UPGRADES.md", "docs/kubernetes.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_documented_kubectl_applies_are_server_side_as_serve_app(doc: str) -> None:
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    commands = re.findall(r"^\s*(kubectl apply\b.*)$", text, flags=re.MULTILINE)
    wrong = [c for c in commands if f"--server-side --field-manager={FIELD_MANAGER}" not in c]
    assert wrong == []


def test_rollout_script_applies_server_side_as_serve_app() -> None:
    text = (REPO_ROOT / "kuberay" / "scripts" / "rollout-model-version.sh").read_text()
    applies = [ln.strip() for ln in text.splitlines() if "kubectl apply" in ln.split("#")[0]]
    assert applies == [
        'apply=(kubectl apply --server-side --field-manager=serve-app "${force[@]}" "${ns[@]}")'
    ]
