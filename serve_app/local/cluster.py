"""Run Serve configs on a local Ray: start, deploy, wait, and stop within a bound.

Ray 2.60 turns on token authentication for new local clusters; the driver that starts
the cluster is authenticated, and ``auth_hint`` tells users how the ``serve`` CLI and
the REST API get the token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from serve_app.config import HttpConfig
from serve_app.constants import LOCAL_RAY_ENV, SERVE_RAY_ENV
from serve_app.deploy import progress
from serve_app.deploy.progress import DeployFailed as DeployFailed  # callers catch these
from serve_app.deploy.progress import DeployStalled as DeployStalled

logger = logging.getLogger(__name__)

TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def prepare_environment(extra: dict[str, str] | None = None) -> None:
    """Set loopback-only Ray variables and ``SERVE_RAY_ENV`` (not overriding the user's)
    before Ray starts."""
    for key, value in {**LOCAL_RAY_ENV, **SERVE_RAY_ENV, **(extra or {})}.items():
        os.environ.setdefault(key, value)


def ingress_environment(http: HttpConfig, grpc_default_app: str | None) -> dict[str, str]:
    """Environment the Ray processes need for the configured ingress.

    Args:
        grpc_default_app: The server application's name (``AppConfig.server_name``): with
            HAProxy ingress it gets gRPC calls that carry no ``application`` metadata (a
            no-op while gRPC is off); None keeps Ray's NOT_FOUND for them.
    """
    from serve_app.local.ingress import haproxy_env

    if http.ingress == "haproxy":
        return haproxy_env(
            http.admin_host,
            http.admin_ports,
            http.haproxy_balance,
            grpc_default_app,
            retry_after_s=http.retry_after_s,
        )
    return {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


METRICS_REPORT_INTERVAL_MS = 500
"""How often Ray's processes report metrics when a local run exports them (Ray's default,
10 s, is too coarse to watch autoscaling follow a load step)."""


def start_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    http: HttpConfig | None = None,
    dashboard_port: int | None = None,
    metrics_port: int | None = None,
    server_app: str | None = None,
    log_to_driver: bool | None = None,
) -> None:
    """Start a local Ray head bound to 127.0.0.1, with the ingress environment of
    ``http`` (set before Ray starts: the controller reads it once).

    Args:
        num_cpus: Logical CPUs (default: the machine's).
        num_gpus: Logical GPUs; on a machine without one, fractional-GPU placement and
            autoscaling still run (torch then computes on CPU).
        dashboard_port: Serve's REST API and the dashboard on 127.0.0.1 at this port
            (what ``serve-app loadtest`` samples); None: no dashboard.
        metrics_port: Export Prometheus metrics on this port, reported every
            ``METRICS_REPORT_INTERVAL_MS``; None: Ray's defaults.
        server_app: ``AppConfig.server_name``, the default gRPC backend (see
            ``ingress_environment``).
        log_to_driver: Print the Ray processes' log lines (INFO included) here; False
            leaves them in the session's log files and this process's Ray loggers at
            WARNING. None: ``SERVE_APP_LOG_TO_DRIVER`` (default on).
    """
    import ray

    prepare_environment()
    if http is not None:
        os.environ.update(ingress_environment(http, server_app))
    extra: dict[str, Any] = {}
    if dashboard_port is not None:
        extra.update(dashboard_host="127.0.0.1", dashboard_port=dashboard_port)
    if metrics_port is not None:
        extra.update(
            _metrics_export_port=metrics_port,
            _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
        )
    if log_to_driver is None:
        log_to_driver = os.environ.get("SERVE_APP_LOG_TO_DRIVER", "1") == "1"
    ray.init(
        address="local",  # always a new cluster, never attach to one already running
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=dashboard_port is not None,
        _node_ip_address="127.0.0.1",
        log_to_driver=log_to_driver,
        logging_level=logging.INFO if log_to_driver else logging.WARNING,
        **extra,
    )
    if not log_to_driver:  # Serve's driver-side logger has its own level
        logging.getLogger("ray.serve").setLevel(logging.WARNING)


def logs_dir() -> str:
    """The running Ray session's log folder."""
    from ray._private import worker

    node = worker._global_node
    return str(node.get_logs_dir_path()) if node is not None else "/tmp/ray/session_latest/logs"


def deploy_config(config: dict[str, Any]) -> None:
    """Deploy a Serve config dict the way ``serve run config.yaml`` does, with every
    ``version: latest`` resolved once, here, for all replicas of a deployment."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from serve_app.deploy.versions import pin_latest_versions

    schema = ServeDeploySchema.model_validate(pin_latest_versions(config))
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=schema.grpc_options.model_dump(),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=False)


DEFAULT_STALL_S = 180.0
"""How long a deploy may show no progress (no replica or application changing state)
before the wait gives up. A replica that loads a large model shows none while it loads:
raise it (``serve-app demo --stall-s``) for models that take longer than this."""


def serve_snapshot() -> progress.Snapshot:
    """Every application as ``serve.status()`` reports it (needs a Ray connection)."""
    from ray import serve

    return progress.from_serve_status(serve.status().applications)


def wait_running(
    app_names: Iterable[str],
    stall_s: float = DEFAULT_STALL_S,
    on_progress: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> None:
    """Block until every app is RUNNING, for as long as their replicas make progress.

    Args:
        app_names: the applications to wait for.
        stall_s: give up after this long without any replica or application changing
            state (the deploy is stuck, not slow).
        on_progress: called with a one-line summary whenever something moved.
        timeout_s: an optional overall cap.

    Raises:
        DeployFailed: an app failed (message includes Serve's reason).
        DeployStalled: nothing moved for ``stall_s`` (message says what was still
            starting and Serve's reason, e.g. the resources a replica waits for).
    """
    names = list(app_names)
    told: set[str] = set()

    def report(snapshot: progress.Snapshot) -> None:
        if on_progress is not None:
            on_progress(progress.summary(snapshot, names))

    def poll() -> progress.Snapshot:
        # Replicas waiting for resources are no progress, so the summary does not
        # change: say so once, as soon as Serve does (its message names what they need).
        snapshot = serve_snapshot()
        for line in progress.unscheduled(snapshot, names):
            if line not in told and on_progress is not None:
                told.add(line)
                on_progress(f"waiting for resources: {line}")
        return snapshot

    progress.wait_apps(
        poll,
        names,
        stall_s=stall_s,
        timeout_s=timeout_s,
        interval_s=0.25,
        on_progress=report,
    )


def drain_apps(timeout_s: float, last: str | None = None) -> bool:
    """Delete every Serve application but ``last`` (the server app) and wait until they
    are gone; ``last`` stays, so that meanwhile a request for a stopping model gets its
    503 + ``Retry-After`` instead of the ingress's 404 (``serve.shutdown`` ends it).

    Deleting an application is Serve's graceful path: the ingress stops routing to it
    (new requests are refused cleanly), and each replica finishes the requests it holds,
    queued batches included, within its ``graceful_shutdown_timeout_s`` before it stops.
    ``serve.shutdown`` alone also stops the ingress at once, which cuts the connections
    of requests still in flight.

    Returns:
        Whether those applications were gone within ``timeout_s``.
    """
    from ray import serve

    deadline = time.monotonic() + timeout_s
    for name in serve.status().applications:
        if name != last:
            serve.delete(name, _blocking=False)
    while set(serve.status().applications) - {last}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


REPLICA_ACTOR_PREFIX = "SERVE_REPLICA::"
"""Serve's replica actors are named ``SERVE_REPLICA::<app>#<deployment>#<id>`` in the
``serve`` namespace (``ReplicaID.to_full_id_str``)."""


def requests_in_flight(timeout_s: float = 2.0) -> int | None:
    """Requests every Serve replica holds (running or queued in it), summed; None when
    a replica did not answer within ``timeout_s`` (count that as busy).

    Asks each replica actor's ``get_num_ongoing_requests``, which runs in its own
    concurrency group (busy user code does not delay it). A request that waits in the
    ingress for a replica of a deployment whose replicas are all full is not counted,
    but those replicas are then busy, and counted."""
    import ray

    refs: list[Any] = [
        ray.get_actor(a["name"], namespace=a["namespace"]).get_num_ongoing_requests.remote()
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(REPLICA_ACTOR_PREFIX)
    ]
    if not refs:
        return 0
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        return None
    try:
        return sum(int(n) for n in ray.get(done))
    except ray.exceptions.RayError:  # a replica that died while we asked
        return None


def stop_ray(
    timeout_s: float = 15.0,
    drain_s: float = 0.0,
    server_app: str | None = None,
    serve_shutdown: bool = True,
) -> None:
    """Stop Serve and Ray; every process of the node ends.

    Drain the applications for up to ``drain_s`` (see ``drain_apps``; ``server_app``
    last); a ``KeyboardInterrupt`` meanwhile (a second Ctrl-C) ends the drain and the
    stop goes on at once. With ``serve_shutdown``, give ``serve.shutdown`` part of
    ``timeout_s`` in a thread (it can take 30 s or more); without it (everything goes
    with the node anyway) the stop takes seconds. Then ``ray.shutdown`` ends the raylet
    first (Ray's order), and what Ray leaves (its agents, HAProxy) is ended here."""
    import ray

    if not ray.is_initialized():
        return
    # HAProxy is a child of a Ray actor; when the actor dies first (a terminal's Ctrl-C
    # reaches every process of the group) HAProxy is orphaned and keeps :8000. Find ours
    # by the node id in its config path and end any that outlive Ray.
    node_id = ray.get_runtime_context().get_node_id()
    haproxies = _haproxies_of(node_id)
    if drain_s > 0:
        t0 = time.monotonic()
        try:
            if drain_apps(drain_s, last=server_app):
                logger.info("applications drained in %.1f s", time.monotonic() - t0)
            else:
                logger.warning("applications not drained in %.0f s; stopping anyway", drain_s)
        except KeyboardInterrupt:
            logger.warning("drain cut after %.1f s; stopping at once", time.monotonic() - t0)
        except Exception as e:  # noqa: BLE001 - a broken Serve must not block the stop
            logger.warning("draining failed (%s); stopping anyway", e)
    with _uninterruptible():  # from here on the stop ends every process, in seconds
        hung = serve_shutdown and not _serve_shutdown_within(timeout_s * 0.6)
        end_node(node_id, haproxies, agents_first=hung)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C meanwhile (main thread only; signals go there), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _serve_shutdown_within(timeout_s: float) -> bool:
    """Run ``serve.shutdown`` in a thread for up to ``timeout_s``; whether it finished."""
    from ray import serve

    t = threading.Thread(target=serve.shutdown, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        logger.warning("serve.shutdown did not finish in %.0f s; stopping Ray", timeout_s)
    return not t.is_alive()


def end_node(node_id: str, haproxies: list[Any], agents_first: bool = False) -> None:
    """``ray.shutdown`` and end what outlives it: Ray's agents, HAProxy, workers.

    Args:
        node_id: The node whose HAProxy processes are ended.
        haproxies: HAProxy processes found before (Ray re-spawns them on reloads).
        agents_first: End Ray's agents before ``ray.shutdown``: when a ``serve.shutdown``
            thread still runs, ``ray.shutdown`` can make the core worker end this process
            before anything after it runs (seen in CI). The raylet then reports each
            agent's death as an alarm ("The agent failed to start ... killed by the OS"),
            so a normal stop does not do this: the raylet goes first and the agents,
            left without it, are ended quietly.
    """
    import psutil
    import ray

    started = psutil.Process().children(recursive=True)  # GCS, raylet, its agents...
    agents = [p for p in started if _is_agent(p)]
    if agents_first:
        terminate_processes(agents, timeout_s=3.0)
    ray.shutdown()
    terminate_processes(agents + haproxies + _haproxies_of(node_id), timeout_s=3.0)
    end_leftovers(started, grace_s=WORKER_EXIT_GRACE_S)


WORKER_EXIT_GRACE_S = 3.0
"""Ray's workers exit on their own once the raylet is gone; past this they are ended."""


AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _is_agent(p: Any) -> bool:
    try:
        return bool(p.cmdline()) and p.cmdline()[0].startswith(AGENT_TITLES)
    except Exception:  # noqa: BLE001 - psutil.Error: gone, or not ours to read
        return False


def end_leftovers(procs: list[Any], grace_s: float) -> list[int]:
    """Wait up to ``grace_s`` for ``procs`` (psutil processes this one started, with
    their descendants) to exit, then end the rest; returns the pids that had to be
    ended. Ray's agents retitle themselves (``ray::DashboardAgent``) and are re-parented
    when the raylet dies, so they are found before the stop, not after it."""
    import psutil

    _gone, still = psutil.wait_procs(procs, timeout=grace_s)

    def alive(p: Any) -> bool:
        try:
            return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False

    still = [p for p in still if alive(p)]
    if still:
        logger.warning("ending %d Ray processes that outlived the stop", len(still))
        terminate_processes(still, timeout_s=3.0)
    return [p.pid for p in still]


def _haproxies_of(node_id: str) -> list[Any]:
    """HAProxy processes started for Ray node ``node_id`` (its id is in their -f path)."""
    import psutil

    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "haproxy" and any(node_id in a for a in p.info["cmdline"] or []):
            found.append(p)
    return found


def terminate_processes(procs: list[Any], timeout_s: float) -> None:
    """SIGTERM ``procs`` (psutil processes), SIGKILL those alive after ``timeout_s``."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _gone, still = psutil.wait_procs(procs, timeout=timeout_s)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)


def auth_hint() -> str:
    """How to use the ``serve`` CLI / REST API against the token-authenticated cluster."""
    return (
        "Ray token auth is on: for `serve status` export RAY_AUTH_MODE=token; "
        f"REST calls need 'Authorization: Bearer $(cat {TOKEN_PATH})'."
    )
