"""Status parsing, ``wait_ready`` and zero-downtime upgrades against the stand-in server.

Statuses come from ``fake_apiserver``'s KubeRay v1.7 builders (messages and reasons as
in KubeRay's ``calculateConditions``); the last tests check those shapes against the
CRD's own ``status`` schema, so a builder cannot drift from what the API server accepts.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from serve_app.k8s.client import RayServiceClient
from serve_app.k8s.errors import RayServiceFailed, RayServiceNotFound, RayServiceWaitTimeout
from serve_app.k8s.status import ApplicationStatus, Condition, DeploymentStatus, RayServiceStatus
from tests.k8s import crd_schema as crds
from tests.k8s import fake_apiserver as fk
from tests.k8s import kuberay_status as kr
from tests.k8s.conftest import API_TOKEN

TOKEN = API_TOKEN
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
def client(server: fk.FakeApiServer) -> RayServiceClient:
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=NS)
    client.apply(fk.rayservice_manifest())
    return client


def wait(client: RayServiceClient, timeout_s: float = 5.0) -> tuple[RayServiceStatus, list]:
    seen: list[RayServiceStatus] = []
    st = client.wait_ready("demo", timeout_s, 0.01, lambda s, _elapsed_s: seen.append(s))
    return st, seen


def test_status_parses_a_serving_rayservice(client, server) -> None:
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))
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
    status = kr.rayservice_status(
        1, ready=kr.INITIALIZING, upgrade=kr.INITIALIZING, endpoints=0,
        active=None, pending=kr.service_status(A, None), serve_status="Running",
    )  # fmt: skip
    server.set_status(NS, "demo", status)
    st = client.status("demo")
    assert (st.ready.status, st.ready.reason, st.is_ready) == ("False", "Initializing", False)


def test_wait_ready_reports_each_state_change_once(client, server) -> None:
    server.script_status(NS, "demo", [
        None,  # KubeRay has not reconciled yet
        kr.initializing(1, A),  # pending cluster provisioning
        kr.initializing(1, A),  # no change: no new line
        kr.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"),
        kr.ready(1, A, {"embed": "RUNNING"}),
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
    server.set_status(NS, "demo", kr.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"))
    start = time.monotonic()
    with pytest.raises(RayServiceWaitTimeout) as info:
        client.wait_ready("demo", timeout_s=0.2, poll_interval_s=0.02)
    assert 0.2 <= time.monotonic() - start < 1.0
    e = info.value
    assert str(e) == (
        f"rayservice {NS}/demo not ready after 0.2 s; waiting for: Ready is False "
        f"(Initializing); last status: {INIT} generation=1/1 "
        f"active=- pending={A}[embed=DEPLOYING]"
    )
    assert (e.name, e.timeout_s, e.status_code) == ("demo", 0.2, 504)
    assert e.last_status == client.status("demo")
    assert e.last_status.pending.applications["embed"].status == "DEPLOYING"


def test_wait_fails_fast_on_initializing_timeout(client, server) -> None:
    status = kr.rayservice_status(
        1, ready=("False", "InitializingTimeout", TIMEOUT_MESSAGE), upgrade=kr.INITIALIZING,
        endpoints=0, active=None, pending=None,
    )  # fmt: skip
    server.set_status(NS, "demo", status)
    with pytest.raises(RayServiceFailed) as info:
        client.wait_ready("demo", timeout_s=30, poll_interval_s=0.01)
    assert str(info.value) == f"rayservice {NS}/demo failed: InitializingTimeout: {TIMEOUT_MESSAGE}"
    assert info.value.last_status.ready.reason == "InitializingTimeout"


def test_wait_fails_fast_on_deploy_failed(client, server) -> None:
    server.set_status(NS, "demo", kr.initializing(1, A, {"embed": "DEPLOY_FAILED"}, state="ready"))
    with pytest.raises(RayServiceFailed) as info:
        client.wait_ready("demo", timeout_s=30, poll_interval_s=0.01)
    assert str(info.value) == (
        f"rayservice {NS}/demo failed: DEPLOY_FAILED on {A}: embed: Deploying app 'embed' failed."
    )
    deployments = info.value.last_status.pending.applications["embed"].deployments
    assert deployments == {"EmbedModel": DeploymentStatus(status="UNHEALTHY")}


def test_wait_retries_transient_errors(client, server, caplog) -> None:
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))
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
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))
    assert client.apply(fk.rayservice_manifest(route="/v2")).generation == 2
    server.script_status(NS, "demo", [
        kr.ready(1, A, {"embed": "RUNNING"}),  # not yet observed
        kr.ready(2, A, {"embed": "DEPLOYING"}),  # same cluster, apps redeploying
        kr.ready(2, A, {"embed": "RUNNING"}),
    ])  # fmt: skip
    st, seen = wait(client)
    assert [s.summary() for s in seen] == [
        f"{SERVING} generation=1/2 active={A}[embed=RUNNING]",
        f"{SERVING} generation=2/2 active={A}[embed=DEPLOYING]",
        f"{SERVING} generation=2/2 active={A}[embed=RUNNING]",
    ]
    assert [s.is_ready for s in seen] == [False, False, True]


INVALID = (
    "The RayService spec is invalid: Ray Autoscaler is required for "
    "NewClusterWithIncrementalUpgrade"
)


def incremental_manifest() -> dict:
    doc = fk.rayservice_manifest()
    doc["spec"]["upgradeStrategy"] = {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": "istio", "intervalSeconds": 30, "stepSizePercent": 25},
    }  # fmt: skip
    return doc


def test_validation_failure_of_the_current_spec_fails_the_wait(client, server) -> None:
    serving = kr.ready(1, A, {"embed": "RUNNING"})
    server.set_status(NS, "demo", serving)
    assert client.apply(incremental_manifest()).generation == 2  # no in-tree autoscaler
    server.set_status(NS, "demo", kr.validation_failed(serving, INVALID))

    start = time.monotonic()
    with pytest.raises(RayServiceFailed) as info:
        client.wait_ready("demo", 10, 0.01, validation_grace_s=0.3)
    elapsed_s = time.monotonic() - start

    assert 0.3 <= elapsed_s < 2
    assert str(info.value) == (
        f"rayservice {NS}/demo failed: ValidationFailed: {INVALID} (generation 2 not accepted)"
    )
    st = info.value.last_status
    assert (st.observed_generation, st.generation, st.ready.observed_generation) == (1, 2, 1)


def test_validation_failure_of_the_previous_spec_does_not_fail_the_wait(client, server) -> None:
    client.apply(incremental_manifest())  # generation 2
    rejected = kr.validation_failed(None, INVALID)  # never validated
    server.set_status(NS, "demo", rejected)
    assert client.status("demo").validation_failure() == f"ValidationFailed: {INVALID}"

    assert client.apply(fk.rayservice_manifest()).generation == 3  # fixed
    fixed = kr.initializing(3, A, {"embed": "DEPLOYING"}, state="ready")
    fixed["conditions"][0] = rejected["conditions"][0]  # KubeRay keeps it until endpoints
    server.script_status(
        NS, "demo", [rejected, rejected, fixed, kr.ready(3, A, {"embed": "RUNNING"})]
    )

    st, seen = wait(client)

    assert st.is_ready
    assert [s.validation_failure() is not None for s in seen] == [True, False, False]


def test_ready_condition_alone_is_not_readiness(client, server) -> None:
    server.set_status(NS, "demo", kr.ready(1, A, {}))
    st = client.status("demo")
    assert st.ready.is_true and not st.is_ready
    assert st.not_ready_reason == "the active cluster reports no application yet"

    server.set_status(NS, "demo", kr.ready(1, A, {"other": "RUNNING"}))
    assert client.status("demo").not_ready_reason == (
        "application embed not reported by the active cluster"
    )

    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}, deployment="UPDATING"))
    assert client.status("demo").not_ready_reason == "deployment embed/EmbedModel is UPDATING"

    server.set_status(NS, "demo", kr.rolling_back(1, A, {"embed": "RUNNING"}))
    assert client.status("demo").not_ready_reason == "a rollback is in progress"

    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))
    assert client.status("demo").not_ready_reason is None


def test_cluster_change_upgrades_through_a_pending_cluster(client, server) -> None:
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}))
    assert wait(client)[0].active.ray_cluster_name == A

    applied = client.apply(fk.rayservice_manifest(image=NEW_IMAGE))
    assert (applied.action, applied.generation) == ("configured", 2)
    server.script_status(NS, "demo", [
        kr.upgrading(2, A, B, None),  # pending RayCluster created
        kr.upgrading(2, A, B, {"embed": "DEPLOYING"}),
        kr.upgrading(2, A, B, {"embed": "RUNNING"}),
        kr.ready(2, B, {"embed": "RUNNING"}),  # services switched, B promoted
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


def status_errors(status: dict[str, Any]) -> list[str]:
    """What the API server would reject or prune in a status write. Pruned fields count:
    a builder emitting one would test a shape KubeRay never produces."""
    crds.skip_without_crds()
    obj = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {}, "status": status}
    errors = [str(e) for e in crds.validate(obj)]
    return errors + [
        f"unknown field {p}" for p in crds.unknown_fields(obj, crds.crd_schema("RayService"))
    ]


STATUSES = {
    "initializing": kr.initializing(1, A),
    "initializing-apps": kr.initializing(1, A, {"embed": "DEPLOYING"}, state="ready"),
    "deploy-failed": kr.initializing(1, A, {"embed": "DEPLOY_FAILED"}, state="ready"),
    "ready": kr.ready(1, A, {"embed": "RUNNING", "rerank": "RUNNING"}),
    "upgrading": kr.upgrading(2, A, B, None),
    "upgrading-apps": kr.upgrading(2, A, B, {"embed": "DEPLOYING"}),
    "validation-failed": kr.validation_failed(kr.ready(1, A, {"embed": "RUNNING"}), INVALID),
    "validation-failed-first": kr.validation_failed(None, INVALID),
    "rolling-back": kr.rolling_back(2, A, {"embed": "RUNNING"}),
    "initializing-timeout": kr.rayservice_status(
        1,
        ready=("False", "InitializingTimeout", TIMEOUT_MESSAGE),
        upgrade=kr.INITIALIZING,
        endpoints=0,
        active=None,
        pending=None,
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(STATUSES))
def test_stand_in_statuses_follow_the_crd_schema(name: str) -> None:
    assert status_errors(STATUSES[name]) == []


def test_schema_check_is_strict() -> None:
    bad = kr.ready(1, A, {"embed": "RUNNING"})
    bad["conditions"][0]["status"] = "Yes"
    bad["numServeEndpoint"] = 2  # a typo the API server would prune
    bad["lastUpdateTime"] = "yesterday"
    assert status_errors(bad) == [
        'status.conditions[0].status: Unsupported value: "Yes": supported values: "True", '
        '"False", "Unknown"',
        "status.lastUpdateTime: Invalid value: 'yesterday' is not a 'date-time'",
        "unknown field .status.numServeEndpoint",
    ]


@pytest.mark.parametrize("deployment", ["UPSCALING", "DOWNSCALING"])
def test_an_autoscaling_deployment_under_load_is_serving(client, server, deployment) -> None:
    """Serve reports UPSCALING/DOWNSCALING while an autoscaling deployment's replicas run."""
    server.set_status(NS, "demo", kr.ready(1, A, {"embed": "RUNNING"}, deployment=deployment))
    st, _ = wait(client)
    assert (st.is_ready, st.not_ready_reason) == (True, None)
