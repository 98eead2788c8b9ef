"""RayServiceClient.apply (server-side apply) and delete (finalizers) on the stand-in server.

The stand-in prunes and validates against the vendored KubeRay v1.7.0 CRD, tracks
``managedFields`` per field manager and keeps objects with finalizers until the
"operator" removes them, as the real API server does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.k8s.client import FIELD_MANAGER, RayServiceClient
from serve_app.k8s.errors import (
    KubernetesApiError,
    RayServiceConflict,
    RayServiceDeleteTimeout,
    RayServiceTerminating,
)
from tests.k8s import crd_schema as crds
from tests.k8s import fake_apiserver as fk
from tests.k8s import kuberay_status as kr
from tests.k8s.conftest import API_TOKEN

TOKEN = API_TOKEN
NS = "serving"
PATH = f"/apis/ray.io/v1/namespaces/{NS}/rayservices"
FINALIZER = kr.RAYSERVICE_FINALIZER
needs_crds = crds.needs_crds


@pytest.fixture
def client(server: fk.FakeApiServer) -> RayServiceClient:
    return RayServiceClient(fk.api_for(server.url, TOKEN), namespace=NS)


def manifest(**kw: Any) -> dict[str, Any]:
    return fk.rayservice_manifest(**kw)


def head_image(obj: dict[str, Any]) -> str:
    spec = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return str(spec["containers"][0]["image"])


def kubectl_edit(server: fk.FakeApiServer, patch: dict[str, Any]) -> None:
    """A merge patch by another field manager, as ``kubectl edit`` sends it."""
    api = fk.api_for(server.url, TOKEN)
    api.patch_namespaced_custom_object(
        "ray.io", "v1", NS, "rayservices", "demo", patch,
        field_manager="kubectl-edit", _content_type=fk.MERGE_PATCH,
    )  # fmt: skip


# --- apply ------------------------------------------------------------------------------


def test_apply_is_one_server_side_apply_request(client, server) -> None:
    result = client.apply(manifest())

    assert (result.action, result.generation, result.spec_changed) == ("created", 1, True)
    assert server.requests == [
        ("GET", f"{PATH}/demo", ""),  # 404: nothing to compare with
        ("PATCH", f"{PATH}/demo", "application/apply-patch+yaml"),
    ]
    assert server.queries[-1] == {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict"}
    (entry,) = result.object["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == (FIELD_MANAGER, "Apply")
    assert entry["fieldsV1"]["f:spec"]["f:serveConfigV2"] == {}
    assert client.get("demo") == server.stored(NS, "demo") == result.object


def test_reapply_is_unchanged_and_a_spec_change_bumps_generation(client, server) -> None:
    created = client.apply(manifest()).object
    server.set_status(NS, "demo", kr.ready(1, "demo-a", {"embed": "RUNNING"}))

    same = client.apply(manifest())
    assert (same.action, same.generation, same.spec_changed) == ("unchanged", 1, False)
    assert (
        same.object["metadata"]["resourceVersion"]
        == server.stored(NS, "demo")["metadata"]["resourceVersion"]
    )

    changed = client.apply(manifest(image="rayproject/ray:2.60.0-py311-cu128"))
    assert (changed.action, changed.generation, changed.spec_changed) == ("configured", 2, True)
    assert changed.object["metadata"]["uid"] == created["metadata"]["uid"]
    assert head_image(changed.object) == "rayproject/ray:2.60.0-py311-cu128"
    assert changed.object["status"]["numServeEndpoints"] == 2  # the operator's status stays


def test_label_change_is_configured_without_a_new_generation(client) -> None:
    client.apply(manifest())
    result = client.apply({**manifest(), "metadata": {"name": "demo", "labels": {"team": "a"}}})
    assert (result.action, result.generation, result.spec_changed) == ("configured", 1, False)
    # Apply, not merge: the label the manifest no longer has is gone.
    assert result.object["metadata"]["labels"] == {"team": "a"}


@needs_crds
def test_fields_removed_from_the_manifest_are_removed_on_the_server(client, server) -> None:
    doc = manifest()
    doc["spec"]["excludeHeadPodFromServeSvc"] = True
    client.apply(doc)
    assert server.stored(NS, "demo")["spec"]["excludeHeadPodFromServeSvc"] is True

    result = client.apply(manifest())

    assert "excludeHeadPodFromServeSvc" not in result.object["spec"]
    assert result.spec_changed and result.generation == 2


@needs_crds
def test_fields_other_managers_own_are_kept_or_conflict(client, server) -> None:
    client.apply(manifest())
    # Another manager sets a field the manifest does not mention: apply leaves it.
    kubectl_edit(server, {"spec": {"excludeHeadPodFromServeSvc": True}})
    assert client.apply(manifest()).object["spec"]["excludeHeadPodFromServeSvc"] is True

    # ... and changes one the manifest sets: a conflict, until forced.
    kubectl_edit(server, {"spec": {"serveConfigV2": json.dumps({"applications": []})}})
    with pytest.raises(RayServiceConflict) as info:
        client.apply(manifest())
    assert (info.value.status_code, info.value.reason) == (409, "Conflict")
    assert str(info.value) == (
        'Apply failed with 1 conflict: conflict with "kubectl-edit": .spec.serveConfigV2 '
        "(fields set by another manager, e.g. kubectl edit: put that change in the manifest, "
        "or apply with --force-conflicts to take them over)"
    )

    forced = client.apply(manifest(), force_conflicts=True)
    assert forced.object["spec"]["serveConfigV2"] == manifest()["spec"]["serveConfigV2"]
    assert server.queries[-1]["force"] == "true"
    managers = {m["manager"] for m in forced.object["metadata"]["managedFields"]}
    assert managers == {FIELD_MANAGER, "kubectl-edit"}  # it still owns the other field


@needs_crds
def test_unknown_field_is_rejected_not_dropped(client, server) -> None:
    doc = manifest()
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}

    with pytest.raises(KubernetesApiError) as info:
        client.apply(doc)

    assert info.value.status_code == 400
    assert str(info.value) == (
        f"failed to create typed patch object ({NS}/demo; ray.io/v1, Kind=RayService): "
        ".spec.rayClusterConfig.headGroupSpec.rayStartParam: field not declared in schema"
    )
    assert not server.exists(NS, "demo")


@needs_crds
def test_schema_violation_is_422_naming_the_field(client, server) -> None:
    doc = manifest()
    doc["spec"]["upgradeStrategy"] = {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {"gatewayClassName": "istio", "intervalSeconds": "30"},
    }

    with pytest.raises(KubernetesApiError) as info:
        client.apply(doc)

    opts = "spec.upgradeStrategy.clusterUpgradeOptions"
    assert (info.value.status_code, info.value.reason) == (422, "Invalid")
    assert str(info.value) == (
        f'RayService.ray.io "demo" is invalid: [{opts}.stepSizePercent: Required value, '
        f'{opts}.intervalSeconds: Invalid value: "string": {opts}.intervalSeconds in body '
        'must be of type integer: "string"]'
    )
    assert not server.exists(NS, "demo")


def test_server_warnings_are_returned(client, server) -> None:
    server.warn_next(
        "PATCH", "ray.io/v1 RayService: spec.serviceUnhealthySecondThreshold is deprecated"
    )
    result = client.apply(manifest())
    assert result.warnings == (
        "ray.io/v1 RayService: spec.serviceUnhealthySecondThreshold is deprecated",
    )


def test_exported_object_reapplies_after_delete(client, server) -> None:
    exported = client.apply(manifest()).object  # as `kubectl get -o yaml` prints it
    exported["status"] = kr.ready(1, "demo-a", {"embed": "RUNNING"})
    client.delete("demo")

    recreated = client.apply(exported)

    assert recreated.action == "created"
    assert recreated.object["metadata"]["uid"] != exported["metadata"]["uid"]
    assert "status" not in server.stored(NS, "demo")


# --- delete and finalizers --------------------------------------------------------------


def test_delete_without_finalizer_is_immediate(client, server) -> None:
    uid = client.apply(manifest()).object["metadata"]["uid"]
    result = client.delete("demo")
    assert (result.deleted, result.finalizers) == (True, ())
    assert result.object["details"] == {
        "name": "demo", "group": "ray.io", "kind": "rayservices", "uid": uid}  # fmt: skip
    assert not server.exists(NS, "demo")
    client.wait_deleted("demo", timeout_s=1)


def test_delete_held_by_kuberay_finalizer(client, server) -> None:
    client.apply(manifest())
    server.add_finalizer(NS, "demo", FINALIZER)  # KubeRay's first reconcile

    result = client.delete("demo")

    assert (result.deleted, result.finalizers) == (False, (FINALIZER,))
    assert result.object["kind"] == "RayService"
    assert result.object["metadata"]["deletionTimestamp"].endswith("Z")
    assert client.delete("demo").finalizers == (FINALIZER,)  # deleting again: the same

    with pytest.raises(RayServiceTerminating) as info:
        client.apply(manifest(image="other:1"))
    stamp = server.stored(NS, "demo")["metadata"]["deletionTimestamp"]
    assert str(info.value) == (
        f"rayservice {NS}/demo is being deleted (since {stamp}, finalizers: {FINALIZER}); "
        "wait until it is gone (`serve-app k8s delete --wait`), then apply again"
    )
    assert head_image(server.stored(NS, "demo")) == "rayproject/ray:2.60.0-py311"

    with pytest.raises(RayServiceDeleteTimeout) as timeout:
        client.wait_deleted("demo", timeout_s=0.2, poll_interval_s=0.05)
    assert str(timeout.value) == (
        f"rayservice {NS}/demo still exists after 0.2 s (finalizers: {FINALIZER}; is the "
        "KubeRay operator running?)"
    )

    server.remove_finalizer(NS, "demo", FINALIZER)  # KubeRay finished cleaning up
    client.wait_deleted("demo", timeout_s=1)
    assert client.apply(manifest()).action == "created"


def test_no_new_finalizer_on_an_object_being_deleted(server) -> None:
    api = fk.api_for(server.url, TOKEN)
    api.create_namespaced_custom_object("ray.io", "v1", NS, "rayservices", manifest())
    server.add_finalizer(NS, "demo", FINALIZER)
    api.delete_namespaced_custom_object("ray.io", "v1", NS, "rayservices", "demo")
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        api.patch_namespaced_custom_object(
            "ray.io", "v1", NS, "rayservices", "demo",
            {"metadata": {"finalizers": [FINALIZER, "example.com/other"]}},
            _content_type=fk.MERGE_PATCH,
        )  # fmt: skip
    assert info.value.status == 422
    assert "no new finalizers can be added if the object is being deleted" in info.value.body
