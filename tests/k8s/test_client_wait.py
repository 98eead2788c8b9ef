"""Status parsing, ``wait_ready`` and zero-downtime upgrades against the stand-in server.

Statuses come from ``fake_apiserver``'s KubeRay v1.7 builders (messages and reasons as
in KubeRay's ``calculateConditions``); the last tests check those shapes against the
CRD's own ``status`` schema, so a builder cannot drift from what the API server accepts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.k8s.client import RayServiceClient
from serve_app.k8s.errors import RayServiceFailed, RayServiceNotFound, RayServiceWaitTimeout
from serve_app.k8s.status import ApplicationStatus, Condition, DeploymentStatus, RayServiceStatus
from tests.k8s import fake_apiserver as fk

TOKEN = "s3cret-token"
NS = "serving"
A, B = "demo-7xk2p", "demo-q9z4m"
NEW_IMAGE = "rayproject/ray:2.60.0-py311-cu128"
UNSET = "Ready=Unknown (not set) UpgradeInProgress=Unknown (not set) endpoints=0"
INIT = "Ready=False (Initializing) UpgradeInProgress=False (Initializing) endpoints=0"
SERVING = (
    "Ready=True (NonZeroServeEndpoints) UpgradeInProgress=False (NoPendingCluster) endpoints=2"
)
UPGRADING = (
    "Ready=True (NonZeroServeEndpoints) UpgradeInProgress=True (BothActivePendingClustersExist) "
    "endpoints=2 generation=2/2"
)
TIMEOUT_MESSAGE = (
    "RayService failed to become ready within the configured timeout of 5m0s. "
    "Time spent initializing: 5m1.2s"
)


@pytest.fixture
def server() -> Iterator[fk.FakeApiServer]:
    srv = fk.FakeApiServer(token=TOKEN).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: fk.FakeApiServer) -> RayServiceClient:
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=NS)
    client.apply(fk.rayservice_manifest())
    return client


def wait(client: RayServiceClient, timeout_s: float = 5.0) -> tuple[RayServiceStatus, list]:
    seen: list[RayServiceStatus] = []
    st = client.wait_ready("demo", timeout_s, 0.01, lambda s, _elapsed_s: seen.append(s))
    return st, seen


def test_status_parses_a_serving_rayservice(client, server) -> None:
    server.set_status(NS, "demo", fk.ready(1, A, {"embed": "RUNNING"}))
    st = client.status("demo")
    at = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    assert st.ready == Condition(
        type="Ready", status="True", reason="NonZeroServeEndpoints",
        message="Number of serve endpoints is greater than 0",
        observed_generation=1, last_transition_time=at,
    )  # fmt: skip
    assert (st.upgrade.status, st.upgrade.reason, st.upgrade.message) == (
        "False",
        "NoPendingCluster",
        "Active Ray cluster exists and no pending Ray cluster",
    )
    assert (st.active.ray_cluster_name, st.active.ray_cluster_state) == (A, "ready")
    assert st.active.ready_worker_replicas == 1
    assert st.active.applications == {
        "embed": ApplicationStatus(
            status="RUNNING", deployments={"EmbedModel": DeploymentStatus(status="HEALTHY")}
        )
    }
    # KubeRay writes an empty struct for "no pending cluster"; it parses to None.
    assert server.stored(NS, "demo")["status"]["pendingServiceStatus"]["rayClusterStatus"]
    assert st.pending is None
    assert (st.num_serve_endpoints, st.generation, st.observed_generation) == (2, 1, 1)
    assert st.is_ready and st.terminal_failure is None
    assert st.summary() == f"{SERVING} generation=1/1 active={A}[embed=RUNNING]"


def test_status_before_kuberay_reconciles(client) -> None:
    st = client.status("demo")
    assert (st.conditions, st.active, st.pending, st.ready) == ((), None, None, None)
    assert not st.is_ready
    assert st.summary() == f"{UNSET} generation=0/1 active=-"


def test_deprecated_service_status_is_never_read(client, server) -> None:
    status = fk.rayservice_status(
        1, ready=fk.INITIALIZING, upgrade=fk.INITIALIZING, endpoints=0,
        active=None, pending=fk.service_status(A, None), serve_status="Running",
    )  # fmt: skip
    server.set_status(NS, "demo", status)
    st = client.status("demo")
    assert (st.ready.status, st.ready.reason, st.is_ready) == ("False", "Initializing", False)


def test_wait_ready_reports_each_state_change_once(client, server) -> None:
    server.script_status(NS, "demo", [
        None,  # KubeRay has not reconciled yet
        fk.initializing(1, A),  # pending cluster provisioning
        fk.initializing(1, A),  # no change: no new line
        fk.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"),
        fk.ready(1, A, {"embed": "RUNNING"}),
    ])  # fmt: skip
    st, seen = wait(client)
    assert [s.summary() for s in seen] == [
        f"{UNSET} generation=0/1 active=-",
        f"{INIT} generation=1/1 active=- pending={A}[]",
        f"{INIT} generation=1/1 active=- pending={A}[embed=DEPLOYING]",
        f"{SERVING} generation=1/1 active={A}[embed=RUNNING]",
    ]
    assert st == seen[-1] and st.is_ready and st.active.ray_cluster_name == A


def test_wait_timeout_carries_the_last_status(client, server) -> None:
    server.set_status(NS, "demo", fk.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"))
    start = time.monotonic()
    with pytest.raises(RayServiceWaitTimeout) as info:
        client.wait_ready("demo", timeout_s=0.2, poll_interval_s=0.02)
    assert 0.2 <= time.monotonic() - start < 1.0
    e = info.value
    assert str(e) == (
        f"rayservice {NS}/demo not ready after 0.2 s; last status: {INIT} generation=1/1 "
        f"active=- pending={A}[embed=DEPLOYING]"
    )
    assert (e.name, e.timeout_s, e.status_code) == ("demo", 0.2, 504)
    assert e.last_status == client.status("demo")
    assert e.last_status.pending.applications["embed"].status == "DEPLOYING"


def test_wait_fails_fast_on_initializing_timeout(client, server) -> None:
    status = fk.rayservice_status(
        1, ready=("False", "InitializingTimeout", TIMEOUT_MESSAGE), upgrade=fk.INITIALIZING,
        endpoints=0, active=None, pending=None,
    )  # fmt: skip
    server.set_status(NS, "demo", status)
    with pytest.raises(RayServiceFailed) as info:
        client.wait_ready("demo", timeout_s=30, poll_interval_s=0.01)
    assert str(info.value) == f"rayservice {NS}/demo failed: InitializingTimeout: {TIMEOUT_MESSAGE}"
    assert info.value.last_status.ready.reason == "InitializingTimeout"


def test_wait_fails_fast_on_deploy_failed(client, server) -> None:
    server.set_status(NS, "demo", fk.initializing(1, A, {"embed": "DEPLOY_FAILED"}, state="ready"))
    with pytest.raises(RayServiceFailed) as info:
        client.wait_ready("demo", timeout_s=30, poll_interval_s=0.01)
    assert str(info.value) == (
        f"rayservice {NS}/demo failed: DEPLOY_FAILED on {A}: embed: Deploying app 'embed' failed."
    )
    deployments = info.value.last_status.pending.applications["embed"].deployments
    assert deployments == {"EmbedModel": DeploymentStatus(status="UNHEALTHY")}


def test_wait_retries_transient_errors(client, server, caplog) -> None:
    server.set_status(NS, "demo", fk.ready(1, A, {"embed": "RUNNING"}))
    server.fail_next("GET", 503, "ServiceUnavailable", "apiserver is shutting down")
    with caplog.at_level(logging.WARNING, logger="serve_app.k8s.client"):
        st, _ = wait(client)
    assert st.is_ready
    assert caplog.messages == [
        f"reading rayservice {NS}/demo: apiserver is shutting down (retrying)"
    ]


def test_wait_for_missing_rayservice_raises_at_once(client) -> None:
    with pytest.raises(RayServiceNotFound) as info:
        client.wait_ready("nope", timeout_s=30, poll_interval_s=0.01)
    assert str(info.value) == 'rayservices.ray.io "nope" not found'


def test_serve_config_change_updates_in_place(client, server) -> None:
    server.set_status(NS, "demo", fk.ready(1, A, {"embed": "RUNNING"}))
    assert client.apply(fk.rayservice_manifest(route="/v2")).generation == 2
    server.script_status(NS, "demo", [
        fk.ready(1, A, {"embed": "RUNNING"}),  # not yet observed
        fk.ready(2, A, {"embed": "DEPLOYING"}),  # same cluster, apps redeploying
        fk.ready(2, A, {"embed": "RUNNING"}),
    ])  # fmt: skip
    st, seen = wait(client)
    assert [s.summary() for s in seen] == [
        f"{SERVING} generation=1/2 active={A}[embed=RUNNING]",
        f"{SERVING} generation=2/2 active={A}[embed=DEPLOYING]",
        f"{SERVING} generation=2/2 active={A}[embed=RUNNING]",
    ]
    assert [s.is_ready for s in seen] == [False, False, True]


def test_cluster_change_upgrades_through_a_pending_cluster(client, server) -> None:
    server.set_status(NS, "demo", fk.ready(1, A, {"embed": "RUNNING"}))
    assert wait(client)[0].active.ray_cluster_name == A

    applied = client.apply(fk.rayservice_manifest(image=NEW_IMAGE))
    assert (applied.action, applied.generation) == ("configured", 2)
    server.script_status(NS, "demo", [
        fk.upgrading(2, A, B, None),  # pending RayCluster created
        fk.upgrading(2, A, B, {"embed": "DEPLOYING"}),
        fk.upgrading(2, A, B, {"embed": "RUNNING"}),
        fk.ready(2, B, {"embed": "RUNNING"}),  # services switched, B promoted
    ])  # fmt: skip
    st, seen = wait(client)

    assert [s.summary() for s in seen] == [
        f"{UPGRADING} active={A}[] pending={B}[]",
        f"{UPGRADING} active={A}[] pending={B}[embed=DEPLOYING]",
        f"{UPGRADING} active={A}[] pending={B}[embed=RUNNING]",
        f"{SERVING} generation=2/2 active={B}[embed=RUNNING]",
    ]
    mid = seen[1]
    assert mid.ready.is_true and mid.upgrade_in_progress and not mid.is_ready
    assert mid.upgrade.message == "Both active and pending Ray clusters exist"
    # KubeRay stops polling the old cluster's apps during a NewCluster upgrade.
    assert (mid.active.ray_cluster_name, mid.active.applications) == (A, {})
    assert mid.pending.ray_cluster_name == B
    assert (st.active.ray_cluster_name, st.pending, st.upgrade.reason) == (
        B,
        None,
        "NoPendingCluster",
    )


# --- the stand-in's statuses against the v1.7 CRD schema --------------------------------

REPO = Path(__file__).resolve().parents[2]
# The repo's vendored CRD when there is one, else ../shared/ beside the clone (CI has it).
CRD_CANDIDATES = [
    *sorted(REPO.glob("kuberay/**/ray.io_rayservices.yaml")),
    REPO.parent / "shared" / "kuberay-crds" / "ray.io_rayservices.yaml",
]


def to_json_schema(s: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (structural) -> JSON Schema. Unknown fields fail: the API server would
    prune them, so a builder emitting one would test a shape KubeRay never produces."""
    out: dict[str, Any] = {}
    for key, value in s.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key == "anyOf":
            out[key] = [to_json_schema(sub) for sub in value]
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            out[key] = value
    if s.get("nullable"):
        out["type"] = [s["type"], "null"]
    if "properties" in s and "additionalProperties" not in s:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def status_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    path = next((p for p in CRD_CANDIDATES if p.is_file()), None)
    if path is None:
        pytest.skip("no ray.io_rayservices.yaml CRD (vendor it under kuberay/)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 1 MB of YAML: 0.3 s in C, 6 s not
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["subresources"] == {"status": {}}  # what the stand-in implements
    schema = to_json_schema(version["schema"]["openAPIV3Schema"]["properties"]["status"])
    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        return True

    @checker.checks("int32")
    def _int32(value: object) -> bool:
        return not isinstance(value, int) or -(2**31) <= value < 2**31

    return jsonschema.Draft7Validator(schema, format_checker=checker)


STATUSES = {
    "initializing": fk.initializing(1, A),
    "initializing-apps": fk.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"),
    "deploy-failed": fk.initializing(1, A, {"embed": "DEPLOY_FAILED"}, state="ready"),
    "ready": fk.ready(1, A, {"embed": "RUNNING", "rerank": "RUNNING"}),
    "upgrading": fk.upgrading(2, A, B, None),
    "upgrading-apps": fk.upgrading(2, A, B, {"embed": "DEPLOYING"}),
    "initializing-timeout": fk.rayservice_status(
        1,
        ready=("False", "InitializingTimeout", TIMEOUT_MESSAGE),
        upgrade=fk.INITIALIZING,
        endpoints=0,
        active=None,
        pending=None,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(STATUSES))
def test_stand_in_statuses_follow_the_crd_schema(status_validator, name: str) -> None:
    errors = [e.message for e in status_validator.iter_errors(STATUSES[name])]
    assert errors == []


def test_schema_check_is_strict(status_validator) -> None:
    bad = fk.ready(1, A, {"embed": "RUNNING"})
    bad["conditions"][0]["status"] = "Yes"
    bad["numServeEndpoint"] = 2  # a typo the API server would prune
    bad["lastUpdateTime"] = "yesterday"
    assert sorted(e.message for e in status_validator.iter_errors(bad)) == [
        "'Yes' is not one of ['True', 'False', 'Unknown']",
        "'yesterday' is not a 'date-time'",
        "Additional properties are not allowed ('numServeEndpoint' was unexpected)",
    ]
