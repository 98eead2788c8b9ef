"""`serve-app k8s upgrade`: raise min_replicas, upgrade, release, against the stand-in server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.k8s.client import RayServiceClient
from serve_app.k8s.errors import InvalidManifest, RayServiceWaitTimeout
from serve_app.k8s.upgrade import hold_min_replicas, parse_holds, safe_cluster_upgrade
from tests.k8s import fake_apiserver as fk
from tests.k8s import kuberay_status as kr
from tests.k8s.conftest import API_TOKEN, KUBECONFIG_NS, run_cli

TOKEN = API_TOKEN
OLD_IMAGE, NEW_IMAGE = "serve-app:1", "serve-app:2"
A, B = "serve-app-a1b2c", "serve-app-d3e4f"
SERVE_CONFIG = {
    "proxy_location": "EveryNode",
    "applications": [
        {"name": "minilm", "route_prefix": "/v2/models/minilm",
         "import_path": "serve_app.app:build_app", "args": {"kind": "model"},
         "deployments": [{"name": "ModelDeployment", "autoscaling_config": {
             "min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 32}}]},
        {"name": "oip", "route_prefix": "/", "import_path": "serve_app.app:build_app",
         "deployments": [{"name": "OIPServer", "num_replicas": 1}]},
    ],
}  # fmt: skip


def manifest(image: str, ns: str) -> dict[str, Any]:
    doc = fk.rayservice_manifest("serve-app", image=image, namespace=ns)
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(SERVE_CONFIG, sort_keys=False)
    return doc


def min_replicas(obj: dict[str, Any]) -> int:
    config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    deployment = config["applications"][0]["deployments"][0]
    return int(deployment["autoscaling_config"]["min_replicas"])


def image(obj: dict[str, Any]) -> str:
    spec = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    return str(spec["containers"][0]["image"])


class Operator:
    """Plays KubeRay after each apply: records what is stored, then serves it."""

    def __init__(self, server: fk.FakeApiServer, ns: str) -> None:
        self.server, self.ns = server, ns
        self.seen: list[tuple[str, int, str, int]] = []

    def __call__(self, step: str, generation: int) -> None:
        stored = self.server.stored(self.ns, "serve-app")
        self.seen.append((step, generation, image(stored), min_replicas(stored)))
        cluster = A if image(stored) == OLD_IMAGE else B
        apps = {"minilm": "RUNNING", "oip": "RUNNING"}
        self.server.set_status(self.ns, "serve-app", kr.ready(generation, cluster, apps))


def test_raise_upgrade_release(server) -> None:
    ns = "serving"
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=ns)
    client.apply(manifest(OLD_IMAGE, ns))
    server.set_status(ns, "serve-app", kr.ready(1, A, {"minilm": "RUNNING", "oip": "RUNNING"}))
    operator = Operator(server, ns)

    st = safe_cluster_upgrade(
        client, manifest(NEW_IMAGE, ns), {"minilm": 4}, 5, poll_interval_s=0.01,
        on_step=operator,
    )  # fmt: skip

    assert operator.seen == [
        ("raise", 2, OLD_IMAGE, 4),  # the running cluster's spec: an in-place Serve change
        ("upgrade", 3, NEW_IMAGE, 4),  # the new cluster starts at the held count
        ("release", 4, NEW_IMAGE, 1),
    ]
    assert (st.active.ray_cluster_name, st.generation) == (B, 4)
    assert server.stored(ns, "serve-app")["spec"] == {
        **manifest(NEW_IMAGE, ns)["spec"],
        "serveConfigV2": server.stored(ns, "serve-app")["spec"]["serveConfigV2"],
    }
    assert yaml.safe_load(server.stored(ns, "serve-app")["spec"]["serveConfigV2"]) == SERVE_CONFIG


def test_hold_raises_min_and_max_of_autoscaling_deployments_only() -> None:
    held = hold_min_replicas(manifest(NEW_IMAGE, "x"), {"minilm": 10})
    auto = yaml.safe_load(held["spec"]["serveConfigV2"])["applications"][0]["deployments"][0]
    assert auto["autoscaling_config"] == {
        "min_replicas": 10, "max_replicas": 10, "target_ongoing_requests": 32}  # fmt: skip
    assert min_replicas(manifest(NEW_IMAGE, "x")) == 1  # the input is not modified


@pytest.mark.parametrize(
    ("holds", "message"),
    [
        ({"bert": 2}, "no application 'bert' in serveConfigV2 (have: minilm, oip)"),
        (
            {"oip": 2},
            "application 'oip' has no autoscaling deployment: a fixed num_replicas "
            "starts at full size on the new cluster anyway",
        ),  # fmt: skip
        ({"minilm": 0}, "hold minilm=0: hold at least one replica"),
    ],
)
def test_bad_holds_fail_before_any_request(server, holds, message) -> None:
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace="serving")
    with pytest.raises(InvalidManifest) as info:
        safe_cluster_upgrade(client, manifest(NEW_IMAGE, "serving"), holds, 1)
    assert str(info.value) == message
    assert server.requests == []


def test_parse_holds() -> None:
    assert parse_holds(["minilm=4", "bert=2"]) == {"minilm": 4, "bert": 2}
    with pytest.raises(InvalidManifest) as info:
        parse_holds(["minilm:4"])
    assert str(info.value) == "--hold 'minilm:4': expected APP=REPLICAS, e.g. minilm=4"


def test_cli_prints_each_step(tmp_path: Path, kubeconfig, server, capsys) -> None:
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=KUBECONFIG_NS)
    client.apply(manifest(OLD_IMAGE, KUBECONFIG_NS))
    apps = {"minilm": "RUNNING", "oip": "RUNNING"}
    server.script_status(KUBECONFIG_NS, "serve-app", [
        kr.ready(2, A, apps), kr.ready(3, B, apps), kr.ready(4, B, apps)])  # fmt: skip
    doc = manifest(NEW_IMAGE, KUBECONFIG_NS)
    del doc["metadata"]["namespace"]  # the context's namespace
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all([{"kind": "ConfigMap"}, doc]), encoding="utf-8")

    previous = tmp_path / "previous.yaml"
    argv = ["k8s", "upgrade", "-f", str(path), "--hold", "minilm=3", "--poll-interval-s",
            "0.01", "--kubeconfig", kubeconfig, "--previous-file", str(previous)]  # fmt: skip
    code, out, err = run_cli(argv, capsys)

    assert (code, err) == (0, "")
    assert image(yaml.safe_load(previous.read_text())) == OLD_IMAGE
    assert out.splitlines() == [
        f"the running spec is saved to {previous} (apply it to abort)",
        "raise: raising min_replicas on the running cluster (generation 2); waiting",
        "upgrade: applying the new spec, min_replicas held (generation 3); waiting",
        "release: releasing min_replicas (generation 4); waiting",
        f"rayservice {KUBECONFIG_NS}/serve-app upgraded: active cluster {B}",
    ]


def test_a_pending_cluster_that_never_serves_is_a_stalled_upgrade_with_its_abort(
    tmp_path: Path, kubeconfig, server, capsys
) -> None:
    """KubeRay v1.7 has no pending-cluster timeout: the upgrade step's wait bounds it, and
    its error names the pending cluster and the saved spec that aborts it."""
    ns = KUBECONFIG_NS
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=ns)
    client.apply(manifest(OLD_IMAGE, ns))
    apps = {"minilm": "RUNNING", "oip": "RUNNING"}
    # raise: served in place; upgrade: the new cluster's workers never start (weights
    # that never arrive), so it stays pending beside the serving one.
    server.script_status(ns, "serve-app", [kr.ready(2, A, apps)] * 3 + [
        kr.upgrading(3, A, B, None)] * 1000)  # fmt: skip
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump(manifest(NEW_IMAGE, ns)), encoding="utf-8")
    previous = tmp_path / "previous.yaml"
    argv = ["k8s", "upgrade", "-f", str(path), "--hold", "minilm=3", "--poll-interval-s",
            "0.01", "--timeout-s", "0.3", "--kubeconfig", kubeconfig,
            "--previous-file", str(previous)]  # fmt: skip

    code, out, err = run_cli(argv, capsys)

    assert code == 2
    assert out.splitlines() == [
        f"the running spec is saved to {previous} (apply it to abort)",
        "raise: raising min_replicas on the running cluster (generation 2); waiting",
        "upgrade: applying the new spec, min_replicas held (generation 3); waiting",
    ]
    assert err == (
        f"error: rayservice {ns}/serve-app: step upgrade stalled: pending cluster {B} "
        "(state ready, 1 ready workers) not serving (an upgrade is in progress (pending "
        f"cluster) after 0.3 s); the active cluster {A} still serves. KubeRay v1.7 keeps {B} "
        f"and its nodes until the spec changes. Why it waits: kubectl get pods -l "
        f"ray.io/cluster={B}; kubectl logs -l ray.io/cluster={B} -c wait-for-models. Abort: "
        f"serve-app k8s apply -f {previous} (KubeRay builds a cluster from it, deletes {B} "
        "and switches back; kuberay/UPGRADES.md, 'Aborting a stalled upgrade')\n"
    )
    # The saved spec is the one from before the upgrade, and applying it aborts.
    saved = yaml.safe_load(previous.read_text())
    assert (image(saved), min_replicas(saved)) == (OLD_IMAGE, 1)
    code, out, _ = run_cli(["k8s", "apply", "-f", str(previous), "--kubeconfig", kubeconfig],
                           capsys)  # fmt: skip
    assert (code, out) == (0, f"rayservice.ray.io/serve-app configured (namespace {ns}, "
                               "generation 4)\n")  # fmt: skip
    assert image(server.stored(ns, "serve-app")) == OLD_IMAGE


def test_wait_timeout_during_an_upgrade_says_how_to_abort(server) -> None:
    ns = "serving"
    client = RayServiceClient(fk.api_for(server.url, TOKEN), namespace=ns)
    client.apply(manifest(NEW_IMAGE, ns))
    server.set_status(ns, "serve-app", kr.upgrading(1, A, B, None))
    with pytest.raises(RayServiceWaitTimeout) as info:
        client.wait_ready("serve-app", 0.05, 0.01)
    assert str(info.value).endswith(
        "; KubeRay v1.7 has no timeout for a pending cluster and keeps it (and its nodes) "
        "until the spec changes; to abort, apply the spec from before the upgrade "
        "(kuberay/UPGRADES.md, 'Aborting a stalled upgrade')"
    )
