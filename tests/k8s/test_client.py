"""RayServiceClient and ``serve-app k8s`` against a stand-in API server.

No Kubernetes cluster: ``fake_apiserver.FakeApiServer`` is a real HTTP server on
127.0.0.1 speaking the API server's RayService paths and ``Status`` errors. The
``kubernetes`` client, the kubeconfig loader and urllib3 are the real ones.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serve_app.errors import ServeAppError
from serve_app.k8s.client import RayServiceClient
from serve_app.k8s.errors import (
    InvalidManifest,
    KubeConfigError,
    KubernetesApiError,
    KubernetesUnreachable,
    RayServiceAlreadyExists,
    RayServiceConflict,
    RayServiceFailed,
    RayServiceNotFound,
    RayServiceWaitTimeout,
    error_from_api_exception,
)
from serve_app.k8s.status import RayServiceStatus
from tests.k8s import fake_apiserver as fk
from tests.k8s import kuberay_status as kr
from tests.k8s.conftest import API_TOKEN

TOKEN = API_TOKEN
NS = "serving"
CLUSTER_A = "demo-7xk2p"
CLUSTER_B = "demo-q9z4m"
NOT_FOUND = 'rayservices.ray.io "demo" not found'
CONFLICT = (
    'Operation cannot be fulfilled on rayservices.ray.io "demo": the object has been '
    "modified; please apply your changes to the latest version and try again"
)
INIT_LINE = (
    "Ready=False (Initializing) UpgradeInProgress=False (Initializing) endpoints=0 "
    "generation=1/1 active=-"
)
READY_A = (
    "Ready=True (NonZeroServeEndpoints) UpgradeInProgress=False (NoPendingCluster) "
    f"endpoints=2 generation=1/1 active={CLUSTER_A}[embed=RUNNING]"
)


manifest = fk.rayservice_manifest
closed_port = fk.closed_port


def api_for(url: str, token: str = TOKEN) -> Any:
    return fk.api_for(url, token)


@pytest.fixture
def client(server: fk.FakeApiServer) -> RayServiceClient:
    return RayServiceClient(api_for(server.url), namespace=NS)


# --- CRUD and errors -------------------------------------------------------------------


def test_apply_with_stale_resource_version_conflicts(client) -> None:
    old_rv = client.apply(manifest()).object["metadata"]["resourceVersion"]
    client.apply(manifest(image="rayproject/ray:2.60.0-py311-cu128"))

    with pytest.raises(RayServiceConflict) as info:
        client.apply(manifest(resourceVersion=old_rv))

    e = info.value
    assert type(e) is RayServiceConflict
    assert (e.status_code, e.reason, str(e)) == (409, "Conflict", CONFLICT)


def test_apply_with_current_resource_version_patches(client) -> None:
    rv = client.apply(manifest()).object["metadata"]["resourceVersion"]
    result = client.apply(manifest(image="other:1", resourceVersion=rv))
    assert (result.action, result.generation) == ("configured", 2)


def test_create_conflict_error_is_typed(server) -> None:
    api = api_for(server.url)
    api.create_namespaced_custom_object("ray.io", "v1", NS, "rayservices", manifest())
    e = api_error(api.create_namespaced_custom_object, manifest())
    assert isinstance(e, RayServiceAlreadyExists) and isinstance(e, RayServiceConflict)
    assert (e.status_code, e.reason, str(e)) == (
        409, "AlreadyExists", 'rayservices.ray.io "demo" already exists')  # fmt: skip


@pytest.mark.parametrize("call", ["get", "status", "delete"])
def test_missing_rayservice_raises_not_found(client, call: str) -> None:
    with pytest.raises(RayServiceNotFound) as info:
        getattr(client, call)("demo")
    assert (info.value.status_code, info.value.reason, str(info.value)) == (
        404,
        "NotFound",
        NOT_FOUND,
    )


def test_namespace_from_manifest_wins(client, server) -> None:
    result = client.apply(manifest(namespace="other"))
    assert result.namespace == "other"
    assert (
        client.get("demo", namespace="other")["metadata"]["uid"]
        == (server.stored("other", "demo")["metadata"]["uid"])
    )
    with pytest.raises(RayServiceNotFound):
        client.get("demo")


def test_server_error_keeps_status_and_message(client, server) -> None:
    server.fail_next("GET", 500, "InternalError", "etcdserver: request timed out")
    with pytest.raises(KubernetesApiError) as info:
        client.get("demo")
    e = info.value
    assert type(e) is KubernetesApiError
    assert (e.status_code, e.reason, str(e)) == (
        500,
        "InternalError",
        "etcdserver: request timed out",
    )


def test_wrong_token_is_unauthorized(server) -> None:
    client = RayServiceClient(api_for(server.url, token="wrong"), namespace=NS)
    with pytest.raises(KubernetesApiError) as info:
        client.get("demo")
    assert (info.value.status_code, info.value.reason, str(info.value)) == (
        401,
        "Unauthorized",
        "Unauthorized",
    )


def test_unreachable_server_is_typed() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = RayServiceClient(api_for(url), namespace=NS)
    with pytest.raises(KubernetesUnreachable) as info:
        client.get("demo")
    assert (info.value.status_code, info.value.reason) == (503, "ServiceUnavailable")
    assert str(info.value).startswith(f"cannot reach the Kubernetes API server at {url}: ")


def test_unknown_path_404_hints_at_the_crd() -> None:
    class Exc:  # what the API server answers when the CRD is not installed
        status, reason = 404, "Not Found"
        body = json.dumps(
            fk.ApiError(
                404, "NotFound", "the server could not find the requested resource"
            ).to_status()
        )

    e = error_from_api_exception(Exc())
    assert type(e) is KubernetesApiError
    assert str(e) == (
        "the server could not find the requested resource "
        "(is the KubeRay CRD rayservices.ray.io/v1 installed?)"
    )


def test_non_status_error_body() -> None:
    class Exc:
        status, reason, body = 502, "Bad Gateway", "<html>upstream down</html>"

    e = error_from_api_exception(Exc())
    assert (e.status_code, e.reason, str(e)) == (
        502,
        "Bad Gateway",
        "HTTP 502 Bad Gateway: <html>upstream down</html>",
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {**manifest(), "kind": "RayCluster"},
            "expected apiVersion ray.io/v1 kind RayService, got apiVersion ray.io/v1 "
            "kind RayCluster",
        ),
        (
            {**manifest(), "apiVersion": "ray.io/v1alpha1"},
            "expected apiVersion ray.io/v1 kind RayService, got apiVersion ray.io/v1alpha1 "
            "kind RayService",
        ),
        ({**manifest(), "metadata": {"labels": {}}}, "a RayService manifest needs metadata.name"),
    ],
)
def test_invalid_manifest(client, server, doc: dict, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        client.apply(doc)
    assert (info.value.status_code, str(info.value)) == (400, message)
    assert server.requests == []


def test_no_config_loaded_until_first_call(tmp_path: Path) -> None:
    client = RayServiceClient(kubeconfig=str(tmp_path / "missing"))  # nothing read yet
    with pytest.raises(KubeConfigError) as info:
        client.get("demo")
    assert str(info.value).startswith(f"cannot load kubeconfig {tmp_path / 'missing'}: ")


def test_importing_cli_and_client_has_no_side_effects() -> None:
    code = (
        "import sys, logging; import serve_app.k8s.cli; "
        "assert 'kubernetes' not in sys.modules, 'cli imported kubernetes'; "
        "import serve_app.k8s.client; assert not logging.getLogger().handlers"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_pickle_with_all_fields() -> None:
    st = RayServiceStatus.from_object(
        {
            "metadata": {"name": "demo", "namespace": NS, "generation": 1},
            "status": kr.initializing(1, CLUSTER_A),
        }
    )
    errors = [
        KubernetesApiError("boom", 500, "InternalError"),
        RayServiceNotFound(NOT_FOUND),
        RayServiceConflict(CONFLICT),
        RayServiceAlreadyExists('rayservices.ray.io "demo" already exists'),
        KubernetesUnreachable("cannot reach"),
        KubeConfigError("no config"),
        InvalidManifest("bad"),
        RayServiceWaitTimeout("late", "demo", 1.5, st),
        RayServiceFailed("failed", "demo", st),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.args == e.args and str(back) == str(e)
        assert vars(back) == vars(e) and isinstance(back, ServeAppError)
    timeout = pickle.loads(pickle.dumps(errors[7]))
    assert (timeout.name, timeout.timeout_s, timeout.last_status) == ("demo", 1.5, st)
    assert (errors[1].status_code, errors[1].reason) == (404, "NotFound")


# --- the stand-in behaves like the API server for a CRD with a status subresource -------


def api_error(call: Any, *args: Any, **kwargs: Any) -> KubernetesApiError:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        call("ray.io", "v1", NS, "rayservices", *args, **kwargs)
    return error_from_api_exception(info.value)


def test_stand_in_status_subresource_and_replace(server) -> None:
    api = api_for(server.url)
    obj = api.create_namespaced_custom_object("ray.io", "v1", NS, "rayservices", manifest())
    rv = obj["metadata"]["resourceVersion"]

    # /status writes change only the status: no generation bump, spec edits ignored.
    status_patch = {"status": kr.ready(1, CLUSTER_A, {"embed": "RUNNING"}), "spec": {"x": 1}}
    st = api.patch_namespaced_custom_object_status(
        "ray.io", "v1", NS, "rayservices", "demo", status_patch
    )
    assert (st["metadata"]["generation"], "x" in st["spec"]) == (1, False)
    assert st["status"]["numServeEndpoints"] == 2 and st["metadata"]["resourceVersion"] != rv

    # PUT needs the current resourceVersion; the status it carries is ignored.
    replaced = {**st, "spec": {**st["spec"], "serveConfigV2": "applications: []"}, "status": {}}
    stale = {**replaced, "metadata": {**replaced["metadata"], "resourceVersion": rv}}
    e = api_error(api.replace_namespaced_custom_object, "demo", stale)
    assert (e.status_code, str(e)) == (409, CONFLICT)
    no_rv = {**replaced, "metadata": {"name": "demo"}}
    e = api_error(api.replace_namespaced_custom_object, "demo", no_rv)
    assert (e.status_code, e.reason, str(e)) == (422, "Invalid", (
        'RayService.ray.io "demo" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
        "must be specified for an update"))  # fmt: skip
    out = api.replace_namespaced_custom_object("ray.io", "v1", NS, "rayservices", "demo", replaced)
    assert out["metadata"]["generation"] == 2
    assert out["status"]["numServeEndpoints"] == 2

    listed = api.list_namespaced_custom_object("ray.io", "v1", NS, "rayservices")
    assert (listed["kind"], [o["metadata"]["name"] for o in listed["items"]]) == (
        "RayServiceList", ["demo"])  # fmt: skip


def test_stand_in_rejects_what_the_api_server_rejects(server) -> None:
    api = api_for(server.url)
    api.create_namespaced_custom_object("ray.io", "v1", NS, "rayservices", manifest())
    e = api_error(api.create_namespaced_custom_object, manifest("other", resourceVersion="7"))
    assert (e.status_code, str(e)) == (
        400, "resourceVersion should not be set on objects to be created")  # fmt: skip
    e = api_error(
        api.patch_namespaced_custom_object, "demo", {"spec": {}},
        _content_type="application/strategic-merge-patch+json",
    )  # fmt: skip
    assert (e.status_code, e.reason) == (415, "UnsupportedMediaType")
    e = api_error(api.create_namespaced_custom_object, manifest(namespace="elsewhere"))
    assert str(e) == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )
