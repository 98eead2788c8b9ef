"""Security and availability of the rendered overlays: Ray token authentication, the
head's ports, its preStop hook and its place outside the serve Service (the NetworkPolicy
and the GCS fault tolerance component are in test_network_policy.py).

Offline, like the other manifest tests; one test (marked ``integration``/``slow``) runs
the head hook's Ray calls against a local token-authenticated Ray.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.config import load_app_config
from serve_app.k8s.drain import (
    DEFAULT_PROXY_DRAIN_S,
    DRAIN_CALL_TIMEOUT_S,
    NODE_ID_TIMEOUT_S,
    RAY_STOP_GRACE_S,
    SIGTERM_MARGIN_S,
)
from tests.k8s.test_manifests import (
    OVERLAYS,
    REPO_ROOT,
    one,
    profile,
    ray_pod_templates,
    render,
)
from tests.k8s.test_render_k8s import fake_bin

AUTH_ENV = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
HEAD_REPLICA_MIGRATION_S = 30
"""Budget for Serve to start a 0-CPU replacement on a running worker (no pod to add)."""
HEAD_GRACEFUL_SHUTDOWN_BOUND_S = 60
"""Bound on graceful_shutdown_timeout_s of the deployments that can run on the head."""


def rayservice(overlay: str) -> dict[str, Any]:
    return one(render(overlay), "RayService")


def head_container(rs: dict[str, Any]) -> dict[str, Any]:
    return dict(
        rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    )


def head_hook(rs: dict[str, Any]) -> str:
    command = head_container(rs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["bash", "-c"]
    return str(command[2])


def hook_setting(script: str, name: str) -> int:
    match = re.search(rf"^{name}=(\d+)$", script, re.M)
    assert match is not None, f"{name} not set in the hook"
    return int(match.group(1))


def serve_deployments(rs: dict[str, Any]) -> list[dict[str, Any]]:
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return [d for a in config["applications"] for d in a.get("deployments", [])]


# Ray token authentication


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_token_auth_is_on_and_its_env_left_to_kuberay(overlay: str) -> None:
    cluster = rayservice(overlay)["spec"]["rayClusterConfig"]
    # The CRD has no default: without mode token there is no authentication. KubeRay 1.7
    # rejects enableK8sTokenAuth for a RayService and token mode below Ray 2.52.
    assert cluster["authOptions"] == {"mode": "token"}
    version = tuple(int(x) for x in cluster["rayVersion"].split("."))
    assert version >= (2, 52, 0)
    # KubeRay injects RAY_AUTH_MODE / RAY_AUTH_TOKEN only where they are absent: one set
    # here (say RAY_AUTH_MODE=disabled) would win over authOptions in that container.
    containers = [
        c
        for t in ray_pod_templates(rayservice(overlay)).values()
        for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
    ]
    set_here = {(c["name"], e["name"]) for c in containers for e in c.get("env", [])}
    set_here |= {("autoscaler", e["name"]) for e in cluster["autoscalerOptions"].get("env", [])}
    assert {pair for pair in set_here if pair[1] in AUTH_ENV} == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_ray_containers_talk_to_ray(overlay: str) -> None:
    """KubeRay gives the token to the Ray container (index 0) of each pod and to its own
    wait-gcs-ready init container, not to ours: what calls Ray must run in container 0."""
    for name, template in ray_pod_templates(rayservice(overlay)).items():
        spec = template["spec"]
        ray, *others = spec["containers"]
        assert ray["name"] == ("ray-head" if name == "head" else "ray-worker")
        assert list(ray["lifecycle"]) == ["preStop"], name
        assert [c for c in others if "lifecycle" in c] == []
        for c in spec.get("initContainers", []):
            script = " ".join(c.get("command", []) + c.get("args", []))
            assert not re.search(r"\bray\b", script), f"{name}/{c['name']} calls Ray"


# The head: out of the serve Service, its ports, its preStop hook


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_stays_out_of_the_serve_service(overlay: str) -> None:
    rs = rayservice(overlay)
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    # Why that is right: no model replica can land on the head...
    params = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert (params["num-cpus"], params["num-gpus"]) == ("0", "0")
    assert all(m.resources.num_cpus > 0 or m.resources.num_gpus > 0 for m in app.models)
    # ...and the Service keeps an endpoint: a worker with a replica runs a proxy (EveryNode)
    # that KubeRay's readiness probe checks on the worker's serve port, and some model
    # never scales to zero, so such a worker always exists once the apps run.
    config = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert config["proxy_location"] == "EveryNode"
    assert any(
        (m.autoscaling.min_replicas if m.autoscaling else m.num_replicas) >= 1 for m in app.models
    )
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "serve", "containerPort": app.http.port} in ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_declared_ports(overlay: str) -> None:
    rs = rayservice(overlay)
    ports = {p["name"]: p["containerPort"] for p in head_container(rs)["ports"]}
    # KubeRay's own port names: the head Service gets exactly these (plus its default
    # client 10001, which serve_app does not use and does not declare).
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "serve": 8000, "metrics": 8080}
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {
            "serve": 8000,
            "metrics": 8080,
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_prestop_timing(overlay: str) -> None:
    rs = rayservice(overlay)
    app = load_app_config(REPO_ROOT / profile(overlay).app_config)
    script = head_hook(rs)
    deadline_s = hook_setting(script, "drain_deadline_s")
    request_timeout_s = hook_setting(script, "request_timeout_s")
    assert deadline_s == HEAD_REPLICA_MIGRATION_S + HEAD_GRACEFUL_SHUTDOWN_BOUND_S == 90
    timeout_s = app.http.request_timeout_s
    assert request_timeout_s == (
        math.ceil(timeout_s) if timeout_s is not None else DEFAULT_PROXY_DRAIN_S
    )
    # What can run on the head (0 CPUs, 0 GPUs) shuts down within the bound.
    from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S

    on_head = [
        d
        for d in serve_deployments(rs)
        if not d.get("ray_actor_options", {}).get("num_cpus")
        and not d.get("ray_actor_options", {}).get("num_gpus")
    ]
    # The OIP server and the job consumers (0 CPUs: they wait on their target's replicas).
    assert [d["name"] for d in on_head] == ["OIPServer", "JobConsumer"]
    assert all(
        d.get("graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S)
        <= HEAD_GRACEFUL_SHUTDOWN_BOUND_S
        for d in on_head
    )
    assert f"timeout {NODE_ID_TIMEOUT_S} python" in script
    assert f"timeout {DRAIN_CALL_TIMEOUT_S} ray drain-node" in script
    assert f"ray stop --grace-period {RAY_STOP_GRACE_S} " in script
    spec = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert (
        spec["terminationGracePeriodSeconds"]
        == (
            NODE_ID_TIMEOUT_S
            + DRAIN_CALL_TIMEOUT_S
            + max(deadline_s, request_timeout_s)
            + RAY_STOP_GRACE_S
            + SIGTERM_MARGIN_S
        )
        == 150
    )


def test_head_prestop_timing_is_rendered_from_the_config() -> None:
    """The head's drain deadline follows cluster.worker.max_graceful_shutdown_s and its
    proxy wait http.request_timeout_s; the grace period covers both."""
    from serve_app.k8s.render import rayservice_patch

    gpu = profile("gpu")
    app = load_app_config(REPO_ROOT / gpu.app_config)
    assert app.cluster is not None
    worker = app.cluster.worker.model_copy(update={"max_graceful_shutdown_s": 120})
    app = app.model_copy(update={
        "cluster": app.cluster.model_copy(update={"worker": worker}),
        "http": app.http.model_copy(update={"request_timeout_s": 199.5}),
    })  # fmt: skip
    ops = {op["path"]: op["value"] for op in rayservice_patch(app, gpu)}
    head = "/spec/rayClusterConfig/headGroupSpec/template/spec"
    script = ops[f"{head}/containers/0/lifecycle"]["preStop"]["exec"]["command"][2]
    assert hook_setting(script, "drain_deadline_s") == HEAD_REPLICA_MIGRATION_S + 120 == 150
    assert hook_setting(script, "request_timeout_s") == 200
    assert ops[f"{head}/terminationGracePeriodSeconds"] == (
        NODE_ID_TIMEOUT_S + DRAIN_CALL_TIMEOUT_S + 200 + RAY_STOP_GRACE_S + SIGTERM_MARGIN_S
    ) == 260  # fmt: skip


def shortened_head_hook(**settings: int) -> str:
    """The head hook with its timing settings (``drain_deadline_s=...``) replaced."""
    script = head_hook(rayservice("dev"))
    for name, value in settings.items():
        script, n = re.subn(rf"^{name}=\d+$", f"{name}={value}", script, count=1, flags=re.M)
        assert n == 1, name
    return script


@pytest.mark.parametrize(
    ("python_body", "expected"),
    [
        (
            'echo "2026 INFO noise"; echo node_id=abc123',
            [
                "drain-node --node-id abc123 --reason DRAIN_NODE_REASON_PREEMPTION "
                "--reason-message head pod pod-1 is terminating --deadline-remaining-seconds 1",
                "stop --grace-period 10",
            ],
        ),
        ("exit 1", ["stop --grace-period 10"]),  # no Ray to ask: wait, then stop anyway
    ],
)
def test_head_prestop_drains_waits_and_stops_ray(
    tmp_path: Path, python_body: str, expected: list[str]
) -> None:
    env = fake_bin(tmp_path, python_body)
    t0 = time.monotonic()
    out = subprocess.run(
        ["bash", "-c", shortened_head_hook(drain_deadline_s=1, request_timeout_s=2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed_s = time.monotonic() - t0
    assert (out.returncode, out.stderr) == (0, "")
    assert (tmp_path / "calls").read_text().splitlines() == expected
    assert 2 <= elapsed_s < 10  # waits for request_timeout_s, no longer


HEAD_DRAIN_EXPERIMENT = r"""
import json, os, subprocess, sys, time, urllib.error, urllib.request
import ray
from ray import serve
from ray.cluster_utils import Cluster

node_id_py, drain_args = sys.argv[1], json.loads(sys.argv[2])
# A 0-CPU head and a 1-CPU worker, like the RayService's; the token as KubeRay injects it.
# The worker joins after the deployment so that its 0-CPU replicas all start on the head.
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "dashboard_port": 0})
ray.init(address=cluster.address, log_to_driver=False)
head = ray.get_runtime_context().get_node_id()
serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": 0})

@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_timeout_s=5)
class WhereAmI:  # 0 CPUs, like the OIP server, which may land on the head
    def __call__(self, request):
        return ray.get_runtime_context().get_node_id()

handle = serve.run(WhereAmI.bind(), name="m", route_prefix="/m")
def placement():
    return sorted({handle.remote(None).result(timeout_s=10) for _ in range(40)})
before = placement()
worker = cluster.add_node(num_cpus=1).node_id
cluster.wait_for_nodes()
env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
env["RAY_ADDRESS"] = cluster.address
ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
def hook_calls(env):
    try:  # without a token ray.init() retries until the hook's own `timeout 20` kills it
        node = subprocess.run([sys.executable, "-c", node_id_py], env=env,
                              capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        node = ""
    node_id = "".join(l[8:] for l in node.splitlines() if l.startswith("node_id="))
    args = [a.replace("$node_id", node_id or head) for a in drain_args]
    drain = subprocess.run([ray_cli, "drain-node", "--address", cluster.address, *args],
                           env=env, capture_output=True, text=True, timeout=60)
    return node_id, drain.returncode
no_token = hook_calls(env)
with_token = hook_calls(dict(os.environ, RAY_ADDRESS=cluster.address))
failures, after, t0 = 0, [], time.monotonic()
while time.monotonic() - t0 < 60:
    try:
        after = placement()
    except Exception:
        failures += 1
        continue
    if after == [worker] and serve.status().applications["m"] \
            .deployments["WhereAmI"].replica_states == {"RUNNING": 2}:
        break
    time.sleep(1)
dashboard = "http://" + ray.get_runtime_context().worker.node.address_info["webui_url"]
def status(headers):
    req = urllib.request.Request(dashboard + "/api/serve/applications/", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
print("RESULT " + json.dumps({
    "before": before, "head": head, "worker": worker,
    "no_token": [bool(no_token[0]), no_token[1]], "with_token": [with_token[0], with_token[1]],
    "after": after, "failures": failures,
    "rest": [status({}), status({"Authorization": "Bearer " + os.environ["RAY_AUTH_TOKEN"]})],
}))
ray.shutdown()
cluster.shutdown()  # no serve.shutdown(): its graceful stop takes 30 s and proves nothing here
"""


def head_hook_ray_calls() -> tuple[str, list[str]]:
    """The hook's node-id snippet and ``ray drain-node`` arguments, with its settings."""
    script = head_hook(rayservice("dev"))
    node_id_py = re.search(r"^get_node_id='(.*)'$", script, re.M)
    drain = re.search(r"ray drain-node (.*?) && log", script.replace("\\\n", " "), re.S)
    assert node_id_py is not None and drain is not None, script
    deadline = str(hook_setting(script, "drain_deadline_s"))
    args = shlex.split(drain.group(1).replace("$HOSTNAME", "pod-1"))
    return node_id_py.group(1), [deadline if a == "$drain_deadline_s" else a for a in args]


@pytest.mark.integration
@pytest.mark.slow
def test_head_hook_drains_the_head_with_the_token_kuberay_injects(tmp_path: Path) -> None:
    """With the env KubeRay gives the Ray container, the head hook's `ray.init()` and
    `ray drain-node` work; without it both fail. Draining the head moves its 0-CPU replicas
    to the worker without a failed request. The dashboard's REST API needs the token."""
    node_id_py, drain_args = head_hook_ray_calls()
    assert drain_args[-2:] == ["--deadline-remaining-seconds", "90"]
    env = {
        **os.environ,
        "HOME": str(tmp_path),  # no ~/.ray/auth_token of an earlier local Ray
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": "t" * 32,
        "RAY_SERVE_ENABLE_HA_PROXY": "0",  # nodes share 127.0.0.1 here
    }
    env.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    out = subprocess.run(
        [sys.executable, "-c", HEAD_DRAIN_EXPERIMENT, node_id_py, json.dumps(drain_args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["before"] == [result["head"]]
    assert result["no_token"] == [False, 1]
    assert result["with_token"] == [result["head"], 0]
    assert (result["failures"], result["after"]) == (0, [result["worker"]])
    assert result["rest"] == [401, 200]
