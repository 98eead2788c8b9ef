"""The stand-in API server takes every kind the overlays create, validated like the real
one: the rendered ConfigMaps, claims, populate Job, NetworkPolicy and PodDisruptionBudget
are server-side applied as ``serve-app`` (README section 3), checked against the
kubernetes client's models, and a changed Job template is refused as immutable (the
README's "delete the Job before applying a changed one")."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.k8s import fake_apiserver as fk
from tests.k8s.conftest import API_TOKEN
from tests.k8s.fake_core import KINDS
from tests.k8s.test_manifests import OVERLAYS, one, render

NS = "serving"
PATHS = {k.kind: (f"/api/{k.api}" if k.api == "v1" else f"/apis/{k.api}") for k in KINDS}
PLURALS = {k.kind: k.plural for k in KINDS}


def ssa(server: fk.FakeApiServer, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``kubectl apply --server-side --field-manager=serve-app`` of one document."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    url = (
        f"{server.url}{PATHS[kind]}/namespaces/{NS}/{PLURALS[kind]}/{name}"
        "?fieldManager=serve-app&fieldValidation=Strict"
    )
    req = urllib.request.Request(
        url, data=json.dumps(doc).encode(), method="PATCH",
        headers={"Content-Type": fk.APPLY_PATCH, "Authorization": f"Bearer {API_TOKEN}"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def core_docs(overlay: str) -> list[dict[str, Any]]:
    return [d for d in render(overlay) if d["kind"] in PATHS]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_core_object_is_accepted_and_reapplies_unchanged(
    server, overlay: str
) -> None:
    docs = core_docs(overlay)
    assert {d["kind"] for d in render(overlay)} - set(PATHS) - {"RayService"} <= {
        "PersistentVolume"  # cluster-scoped, dev only: not served by the stand-in
    }
    first = [ssa(server, d) for d in docs]
    assert [(code, body["metadata"]["name"]) for code, body in first] == [
        (201, d["metadata"]["name"]) for d in docs
    ]
    again = [ssa(server, d) for d in docs]
    assert [body["metadata"]["resourceVersion"] for _, body in again] == [
        body["metadata"]["resourceVersion"] for _, body in first
    ]


def test_changed_job_template_is_immutable_until_the_job_is_deleted(server) -> None:
    job = one(render("gpu"), "Job")
    assert ssa(server, job)[0] == 201
    changed = json.loads(json.dumps(job))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "serve-app-seed:next"
    code, body = ssa(server, changed)
    assert (code, body["reason"], body["message"]) == (
        422, "Invalid",
        'Job.batch "serve-app-populate-models" is invalid: spec.template: Invalid value: '
        "field is immutable",
    )  # fmt: skip
    # kuberay/README.md: delete the Job before applying a changed one.
    from kubernetes.client import BatchV1Api

    batch = BatchV1Api(fk.api_for(server.url, API_TOKEN).api_client)
    batch.delete_namespaced_job("serve-app-populate-models", NS, _preload_content=False)
    assert ssa(server, changed)[0] == 201


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        (
            "ConfigMap",
            lambda d: d["data"].update(MODELS=1),
            'ConfigMap "serve-app-models" is invalid: data.MODELS: Input should be a valid string',
        ),
        (
            "PodDisruptionBudget",
            lambda d: d["spec"].update(selector="app=serve-app"),
            'PodDisruptionBudget.policy "serve-app-head" is invalid: spec.selector: '
            "Input should be a valid dictionary or instance of V1LabelSelector",
        ),
        (
            "NetworkPolicy",
            lambda d: d["spec"].update(policyTypes="Ingress"),
            'NetworkPolicy.networking.k8s.io "serve-app-ray" is invalid: spec.policyTypes: '
            "Input should be a valid list",
        ),
    ],
)
def test_invalid_core_objects_are_422(server, kind, edit, message) -> None:
    doc = next(d for d in core_docs("gpu") if d["kind"] == kind)
    edit(doc)
    code, body = ssa(server, doc)
    assert (code, body["reason"], body["message"]) == (422, "Invalid", message)


def test_claim_spec_is_immutable_but_requests_may_grow(server) -> None:
    claim = next(d for d in core_docs("gpu") if d["kind"] == "PersistentVolumeClaim")
    assert ssa(server, claim)[0] == 201
    bigger = json.loads(json.dumps(claim))
    bigger["spec"]["resources"]["requests"]["storage"] = "200Gi"
    assert ssa(server, bigger)[0] == 200
    other = json.loads(json.dumps(bigger))
    other["spec"]["accessModes"] = ["ReadWriteOnce"]
    code, body = ssa(server, other)
    assert (code, body["message"]) == (
        422,
        f'PersistentVolumeClaim "{claim["metadata"]["name"]}" is invalid: spec: Forbidden: '
        "spec is immutable after creation except resources.requests and "
        "volumeAttributesClassName for bound claims",
    )


def test_undeclared_field_is_a_strict_400(server) -> None:
    pdb = next(d for d in core_docs("gpu") if d["kind"] == "PodDisruptionBudget")
    pdb["spec"]["maxUnavailabe"] = 0
    code, body = ssa(server, pdb)
    assert (code, body["reason"], body["message"]) == (
        400, "BadRequest",
        f"failed to create typed patch object ({NS}/serve-app-head; policy/v1, "
        "Kind=PodDisruptionBudget): .spec.maxUnavailabe: field not declared in schema",
    )  # fmt: skip
