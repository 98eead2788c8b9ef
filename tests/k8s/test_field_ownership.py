"""One field manager for every documented flow.

A RayService first applied with a client-side ``kubectl apply`` is owned field by field
by ``kubectl-client-side-apply``; a later server-side apply as ``serve-app`` that changes
``serveConfigV2`` (the rollout script, ``serve-app k8s upgrade``) is then a 409. The
stand-in server records that ownership as the real one does, so the conflict and its
advice are tested; the documented commands are checked to apply as ``serve-app``.
"""

from __future__ import annotations

import json
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


def _ssa(server: fk.FakeApiServer, manager: str, body: dict, force: bool = False) -> dict:
    api = fk.api_for(server.url, API_TOKEN)
    return api.patch_namespaced_custom_object(
        "ray.io", "v1", NS, "rayservices", body["metadata"]["name"], body,
        field_manager=manager, force=force or None, _content_type=fk.APPLY_PATCH,
    )  # fmt: skip


def _head(obj: dict) -> dict:
    return obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _head_container_config(**fields: object) -> dict:
    """An apply configuration holding only fields of the ray-head container."""
    container = {"name": "ray-head", **fields}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "demo"},
        "spec": {"rayClusterConfig": {"headGroupSpec": {"rayStartParams": {},
                 "template": {"spec": {"containers": [container]}}}}},
    }  # fmt: skip


@crds.needs_crds
def test_apply_merges_containers_and_env_by_name(server) -> None:
    """The CRD marks containers and env as map lists keyed by name (the core types'
    patchMergeKey): a second manager adds one variable to ray-head without a conflict, and
    serve-app's next apply keeps it; the same field of the same element conflicts."""
    _ssa(server, FIELD_MANAGER, fk.rayservice_manifest())
    _ssa(server, "env-injector", _head_container_config(env=[{"name": "EXTRA", "value": "1"}]))
    ray_head = 'k:{"name":"ray-head"}'
    injected = next(
        m for m in server.stored(NS, "demo")["metadata"]["managedFields"]
        if m["manager"] == "env-injector"
    )  # fmt: skip
    spec = injected["fieldsV1"]["f:spec"]["f:rayClusterConfig"]["f:headGroupSpec"]
    assert spec["f:template"]["f:spec"]["f:containers"] == {
        ray_head: {"f:name": {}, "f:env": {'k:{"name":"EXTRA"}': {"f:name": {}, "f:value": {}}}}
    }
    _ssa(server, FIELD_MANAGER, fk.rayservice_manifest(image="rayproject/ray:2.60.0-py312"))
    assert _head(server.stored(NS, "demo")) == {
        "name": "ray-head",
        "image": "rayproject/ray:2.60.0-py312",
        "env": [{"name": "EXTRA", "value": "1"}],
    }
    with pytest.raises(Exception) as info:
        _ssa(server, "env-injector", _head_container_config(image="other:1"))
    assert json.loads(info.value.body)["message"] == (
        'Apply failed with 1 conflict: conflict with "serve-app": .spec.rayClusterConfig.'
        'headGroupSpec.template.spec.containers[name="ray-head"].image'
    )
    # The injector stops applying its variable: the element goes, serve-app's stay.
    _ssa(server, "env-injector", _head_container_config())
    assert _head(server.stored(NS, "demo")) == {
        "name": "ray-head", "image": "rayproject/ray:2.60.0-py312"
    }  # fmt: skip
