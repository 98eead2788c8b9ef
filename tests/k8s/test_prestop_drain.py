"""The worker preStop hook's `ray drain-node` call against a real multi-node Ray.

`ray drain-node` is a hidden Ray CLI command outside Ray's API stability promise, so this
runs it, with the exact flags the hook renders, on a local cluster (a 0-CPU head and two
1-CPU nodes, like the head and workers of the RayService) and checks that Serve moves the
replica off the drained node without failing a request. It runs in a subprocess: the
pytest process may hold another Ray (tests/integration).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from serve_app.k8s.drain import DrainTiming, prestop_script

EXPERIMENT = r"""
import json, os, subprocess, sys, time, urllib.request
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
from ray import serve
from ray.cluster_utils import Cluster

drain_args = json.loads(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address, log_to_driver=False)
# HeadOnly: the nodes share one IP here, so only one proxy can bind the port.
serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": 0})

@serve.deployment(ray_actor_options={"num_cpus": 1}, graceful_shutdown_timeout_s=5)
class WhereAmI:
    def __call__(self, request):
        return ray.get_runtime_context().get_node_id()

handle = serve.run(WhereAmI.bind(), name="m", route_prefix="/m")
first = handle.remote(None).result()
ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
args = [a.replace("$node_id", first) for a in drain_args]
drain = subprocess.run([ray_cli, "drain-node", "--address", cluster.address, *args],
                       capture_output=True, text=True, timeout=60)
seen, failures, t0 = [], 0, time.monotonic()
while time.monotonic() - t0 < 60:
    try:
        seen.append(handle.remote(None).result(timeout_s=10))
    except Exception:
        failures += 1
    states = serve.status().applications["m"].deployments["WhereAmI"].replica_states
    if seen and seen[-1] != first and states == {"RUNNING": 1}:
        break
    time.sleep(0.5)
print("RESULT " + json.dumps({
    "drain_rc": drain.returncode, "drain_err": drain.stderr[-300:], "moved": seen[-1] != first,
    "failures": failures, "states": states, "nodes": [n.node_id for n in nodes], "to": seen[-1],
}))
serve.shutdown()
ray.shutdown()
cluster.shutdown()
"""


def drain_args_of_hook() -> list[str]:
    """The ``ray drain-node`` arguments exactly as the preStop hook passes them."""
    script = prestop_script(
        DrainTiming(drain_deadline_s=40, proxy_drain_s=1, termination_grace_period_s=99)
    )
    match = re.search(r"ray drain-node (.*?) && log", script.replace("\\\n", " "), re.S)
    assert match is not None, script
    return shlex.split(match.group(1).replace("$HOSTNAME", "pod-1"))


def test_drain_args_of_hook() -> None:
    assert drain_args_of_hook() == [
        "--node-id",
        "$node_id",
        "--reason",
        "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message",
        "pod pod-1 is terminating",
        "--deadline-remaining-seconds",
        "40",
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_drained_node_hands_its_replica_to_another_node() -> None:
    # Three nodes on one machine share 127.0.0.1: Serve's Python proxy, whatever ingress
    # an earlier test of the session put in the environment.
    env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    env.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    out = subprocess.run(
        [sys.executable, "-c", EXPERIMENT, json.dumps(drain_args_of_hook())],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert (result["drain_rc"], result["drain_err"]) == (0, "")
    assert (result["moved"], result["failures"], result["states"]) == (True, 0, {"RUNNING": 1})
    assert result["to"] in result["nodes"]
