"""How a Ray pod stops without losing requests: the drain deadline and grace period
derived from the deployments' graceful shutdown bound, and the preStop scripts (worker
and head) that drain the Ray node, wait for its replicas and its proxy, then stop Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_app.config import AppConfig
from serve_app.deploy.serve_config import render_serve_config
from serve_app.k8s.profiles import ClusterProfile

SERVE_DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S = 20.0
"""Serve's default, which applies to deployments that do not set it (the OIP server)."""
DEFAULT_PROXY_DRAIN_S = 60
"""How long a draining proxy's requests may take when http.request_timeout_s is unset."""
NODE_ID_TIMEOUT_S = 20
"""Budget of the preStop step that connects to Ray to learn this node's id."""
DRAIN_CALL_TIMEOUT_S = 20
"""Budget of the ``ray drain-node`` call itself."""
RAY_STOP_GRACE_S = 10
"""``ray stop --grace-period`` at the end of the preStop hook."""
SIGTERM_MARGIN_S = 10
"""Left after the preStop hook for the container to exit on SIGTERM."""
HEAD_REPLICA_MIGRATION_S = 30
"""Time a 0-CPU replacement replica gets on a running worker before the head's copy is
stopped: no pod to provision, so far less than a worker's ``replica_migration_s``."""


@dataclass(frozen=True)
class DrainTiming:
    """Timing of a worker pod's shutdown, all in whole seconds."""

    drain_deadline_s: int
    proxy_drain_s: int
    termination_grace_period_s: int


def graceful_shutdown_s(app: AppConfig) -> dict[str, float]:
    """``app/deployment`` -> graceful_shutdown_timeout_s of every rendered deployment."""
    return {
        f"{a['name']}/{d['name']}": float(
            d.get("graceful_shutdown_timeout_s", SERVE_DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S)
        )
        for a in render_serve_config(app)["applications"]
        for d in a["deployments"]
    }


def drain_timing(app: AppConfig, profile: ClusterProfile) -> DrainTiming:
    """How long a stopping worker drains.

    Sized from the profile's bound on graceful_shutdown_timeout_s, not from the
    deployments' current values: those live in serveConfigV2 and change in place, while
    the pod spec changes only with a new cluster. The drain loop ends as soon as the
    node's replicas are gone, so a generous bound costs nothing on a quick drain.
    ``http.request_timeout_s`` is a Serve start-up option (fixed until a new cluster
    anyway), so the proxy's drain follows it.
    """
    return _timing(app, profile.replica_migration_s + profile.max_graceful_shutdown_s)


def head_drain_timing(app: AppConfig, profile: ClusterProfile) -> DrainTiming:
    """How long a stopping head drains: the 0-CPU deployments that may run there (the
    server application, pipeline routers, job consumers) move to a running worker
    (``HEAD_REPLICA_MIGRATION_S``) and stop within ``cluster.worker.max_graceful_shutdown_s``,
    the bound every deployment's graceful_shutdown_timeout_s is checked against; the
    proxy's requests get ``http.request_timeout_s``."""
    return _timing(app, HEAD_REPLICA_MIGRATION_S + profile.max_graceful_shutdown_s)


def _timing(app: AppConfig, deadline_s: int) -> DrainTiming:
    timeout_s = app.http.request_timeout_s
    proxy_s = math.ceil(timeout_s) if timeout_s is not None else DEFAULT_PROXY_DRAIN_S
    grace_s = (
        NODE_ID_TIMEOUT_S
        + DRAIN_CALL_TIMEOUT_S
        + max(deadline_s, proxy_s)
        + RAY_STOP_GRACE_S
        + SIGTERM_MARGIN_S
    )
    return DrainTiming(deadline_s, proxy_s, grace_s)


def prestop_script(timing: DrainTiming) -> str:
    """Bash run by a worker's preStop hook: drain the Ray node, wait, stop Ray."""
    node_id_py = (
        'import ray; ray.init(logging_level="ERROR", log_to_driver=False); '
        'print("node_id=" + ray.get_runtime_context().get_node_id())'
    )
    return f"""\
log() {{ echo "preStop: $*" 2> /dev/null > /proc/1/fd/1 || true; }}  # to the pod's log
# Drain this Ray node: Serve starts replacement replicas on other nodes, then stops the
# ones here gracefully before the deadline; the proxy here fails /-/healthz at once, so
# KubeRay's readiness probe takes the pod out of the serve Service.
get_node_id='{node_id_py}'
node_id=$(timeout {NODE_ID_TIMEOUT_S} python -c "$get_node_id" 2>/dev/null \\
  | sed -n 's/^node_id=//p')
if [ -n "$node_id" ]; then
  timeout {DRAIN_CALL_TIMEOUT_S} ray drain-node --node-id "$node_id" \\
    --reason DRAIN_NODE_REASON_PREEMPTION --reason-message "pod $HOSTNAME is terminating" \\
    --deadline-remaining-seconds {timing.drain_deadline_s} && log "draining node $node_id" \\
    || log "ray drain-node failed; waiting anyway"
else
  log "could not read the Ray node id; waiting without a drain"
fi
start=$SECONDS
# Serve replicas run as processes titled ray::ServeReplica:<app>:<deployment>.
while [ $((SECONDS - start)) -lt {timing.drain_deadline_s} ] \\
    && grep -qs 'ray::[S]erveReplica' /proc/[0-9]*/cmdline; do sleep 2; done
# Requests this node's proxy sent to other nodes end within http.request_timeout_s.
while [ $((SECONDS - start)) -lt {timing.proxy_drain_s} ]; do sleep 1; done
log "stopping Ray after $((SECONDS - start)) s"
ray stop --grace-period {RAY_STOP_GRACE_S} > /dev/null 2>&1 || true
"""


def head_prestop_script(timing: DrainTiming) -> str:
    """Bash run by the head's preStop hook: drain the head's Ray node (GCS and the Serve
    controller keep running), wait for its replicas and its proxy, stop Ray. The two
    settings open the script as ``name=<seconds>`` lines."""
    node_id_py = (
        'import ray; ray.init(logging_level="ERROR", log_to_driver=False); '
        'print("node_id=" + ray.get_runtime_context().get_node_id())'
    )
    return f"""\
drain_deadline_s={timing.drain_deadline_s}
request_timeout_s={timing.proxy_drain_s}
log() {{ echo "preStop: $*" 2> /dev/null > /proc/1/fd/1 || true; }}  # to the pod's log
get_node_id='{node_id_py}'
node_id=$(timeout {NODE_ID_TIMEOUT_S} python -c "$get_node_id" 2>/dev/null \\
  | sed -n 's/^node_id=//p')
if [ -n "$node_id" ]; then
  timeout {DRAIN_CALL_TIMEOUT_S} ray drain-node --node-id "$node_id" \\
    --reason DRAIN_NODE_REASON_PREEMPTION --reason-message "head pod $HOSTNAME is terminating" \\
    --deadline-remaining-seconds "$drain_deadline_s" && log "draining head node $node_id" \\
    || log "ray drain-node failed; waiting anyway"
else
  log "could not read the Ray node id; waiting without a drain"
fi
start=$SECONDS
# Serve replicas run as processes titled ray::ServeReplica:<app>:<deployment>.
while [ $((SECONDS - start)) -lt "$drain_deadline_s" ] \\
    && grep -qs 'ray::[S]erveReplica' /proc/[0-9]*/cmdline; do sleep 2; done
while [ $((SECONDS - start)) -lt "$request_timeout_s" ]; do sleep 1; done
log "stopping Ray after $((SECONDS - start)) s"
ray stop --grace-period {RAY_STOP_GRACE_S} > /dev/null 2>&1 || true
"""
