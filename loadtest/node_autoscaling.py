"""Node-level autoscaling on one machine, end to end, measured.

HTTP load raises the ``mlp-head`` replicas (Serve autoscaling on ongoing requests). Each
replica asks for half a logical GPU and the head has none, so new replicas pend; Ray's
autoscaler (v2 by default, the code KubeRay runs in the head pod) launches a GPU worker
node through the fake multi-node provider of ``ray.cluster_utils.AutoscalingCluster``;
replicas start there and serve; after the load, replicas scale down and the node left
idle is removed. Nodes, replicas and the autoscaler are sampled every 0.5 s::

    python -m loadtest.node_autoscaling --out loadtest/results/node_autoscaling.json

The cluster is private to the run (its own ports, temp dir and processes), so it neither
touches nor is touched by another Ray on the machine.
``tests/integration/test_node_autoscaling.py`` runs a shorter version in a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.config import AppConfig
from serve_app.local import prepare_environment

# Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import: without it a driver's
# ray.init("127.0.0.1:<port>") dials the host's routable address instead of loopback.
# Set the loopback-only variables (never overriding the user's) before importing ray.
prepare_environment()

import ray  # noqa: E402
from ray.autoscaler._private.fake_multi_node.node_provider import (  # noqa: E402
    FAKE_HEAD_NODE_ID,
    FAKE_HEAD_NODE_TYPE,
)
from ray.cluster_utils import AutoscalingCluster  # noqa: E402

APP = "mlp-head"
DEPLOYMENT = "ModelDeployment"
WORKER_TYPE = "gpu-worker"
MARKER_ENV = "SERVE_APP_NAS_RUN_ID"
"""Set in the environment of ``ray start``; every process of the cluster inherits it."""

# Upstream's fake_multi_node/example.yaml, which the 2.60 wheel does not ship. The provider
# is declared "external" (same class) so the autoscaler does not read that file either.
FAKE_CLUSTER_BASE: dict[str, Any] = {
    "cluster_name": "fake_multinode",
    "max_workers": 8,
    "provider": {
        "type": "external",
        "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "head_node_type": FAKE_HEAD_NODE_TYPE,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1,
    "file_mounts_sync_continuously": False,
    **{k: {} for k in ("auth", "docker", "file_mounts")},
    **{
        k: []
        for k in (
            "cluster_synced_files",
            "rsync_exclude",
            "rsync_filter",
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
    },
}


@dataclass(frozen=True)
class Settings:
    """Everything the experiment varies; written into the results."""

    load_s: float = 30.0
    concurrency: int = 16
    max_requests: int = 50_000
    request_timeout_s: float = 20.0
    stop_after_new_replica_s: float | None = None
    sample_interval_s: float = 0.5
    head_cpus: int = 0
    worker_cpus: int = 1
    worker_gpus: int = 1
    max_workers: int = 2
    idle_timeout_minutes: float = 0.1
    autoscaler_v2: bool = True
    replica_cpus: float = 0.5
    replica_gpus: float = 0.5
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 0.5
    downscale_delay_s: float = 3.0
    metrics_interval_s: float = 0.5
    look_back_period_s: float = 1.0
    deploy_timeout_s: float = 180.0
    settle_timeout_s: float = 90.0


# --- a private cluster --------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_temp_dir(run_id: str) -> str:
    """Ray temp dir of a run: short, since Ray puts unix sockets under it."""
    return os.path.join(tempfile.gettempdir(), f"nas_{run_id}")


def find_cluster_processes(run_id: str) -> list[Any]:
    """Processes of the run's cluster: those with its marker or its temp dir on the command
    line, and their descendants (Ray's workers rename themselves, hiding both)."""
    import psutil  # vendored by Ray; importable once ray is imported

    temp_dir, me = cluster_temp_dir(run_id), os.getpid()
    found: dict[int, Any] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.pid != me and (temp_dir in cmdline or p.environ().get(MARKER_ENV) == run_id):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(me, None)
    return list(found.values())


def kill_cluster_processes(run_id: str, grace_s: float = 8.0) -> int:
    """SIGTERM the run's processes, SIGKILL what is left after ``grace_s``; returns how
    many there were. Only this run's processes, by pid: never ``ray stop``."""
    from serve_app.local import terminate_processes

    procs = find_cluster_processes(run_id)
    terminate_processes(procs, timeout_s=grace_s)
    return len(procs)


class LocalAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` (same fake provider, real autoscaler, same environment) made
    private to one run. Upstream ``start()``/``shutdown()`` run ``ray stop --force``, which
    kills every Ray of the user on the machine, its head takes the default ports, and its
    config reads an ``example.yaml`` missing from the 2.60 wheel."""

    def __init__(
        self,
        head_resources: dict[str, Any],
        worker_node_types: dict[str, Any],
        *,
        run_id: str,
        autoscaler_v2: bool = True,
        **config_kwargs: Any,
    ) -> None:
        self.run_id = run_id
        self.gcs_port = free_port()
        self.temp_dir = cluster_temp_dir(run_id)
        super().__init__(dict(head_resources), worker_node_types, autoscaler_v2, **config_kwargs)

    @property
    def address(self) -> str:
        """GCS address to ``ray.init`` with."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def config(self) -> dict[str, Any]:
        """The autoscaling config given to the autoscaler."""
        return copy.deepcopy(self._config)

    def _generate_config(
        self,
        head_resources: dict[str, Any],
        worker_node_types: dict[str, Any],
        autoscaler_v2: bool = False,
        **config_kwargs: Any,
    ) -> dict[str, Any]:
        config = copy.deepcopy(FAKE_CLUSTER_BASE)
        config["available_node_types"] = copy.deepcopy(worker_node_types)
        config["available_node_types"][FAKE_HEAD_NODE_TYPE] = {
            "resources": dict(head_resources),
            "node_config": {},
            "max_workers": 0,
        }
        # Worker nodes join this GCS, not 6379, which another Ray may own.
        config["provider"]["gcs_address"] = self.address
        if autoscaler_v2:
            config["provider"].update(launch_multiple=True, head_node_id=FAKE_HEAD_NODE_ID)
        config.update(config_kwargs)
        return config

    def start(
        self,
        _system_config: dict[str, Any] | None = None,
        override_env: dict[str, str] | None = None,
    ) -> None:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        # `ray start` turns token auth on when a token exists; a driver connecting to a
        # running cluster does not. Decide once, with the function `ray start` uses, so the
        # cluster (which inherits RAY_AUTH_MODE) and this driver agree.
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        os.makedirs(self.temp_dir, exist_ok=True)
        config_path = os.path.join(self.temp_dir, "autoscaling.json")
        Path(config_path).write_text(json.dumps(self._config))
        head = dict(self._head_resources)
        cmd = [
            shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray",
            "start",
            "--head",
            f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}",
            f"--num-cpus={head.pop('CPU', 0)}",
            f"--num-gpus={head.pop('GPU', 0)}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            "--dashboard-agent-listen-port=0",
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        if _system_config is not None:
            cmd.append(f"--system-config={json.dumps(_system_config)}")
        env = dict(os.environ, AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_FAKE_CLUSTER="1")
        env[MARKER_ENV] = self.run_id
        if self._autoscaler_v2:
            env.update(
                RAY_enable_autoscaler_v2="1",
                RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
                RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            )
        env.update(override_env or {})
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)

    def shutdown(self, keep_temp: bool = False) -> None:
        kill_cluster_processes(self.run_id)
        if not keep_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def make_cluster(s: Settings, run_id: str) -> LocalAutoscalingCluster:
    """A head with no GPU (like the RayService head) and one GPU worker type, 0..N nodes."""
    worker = {"CPU": s.worker_cpus, "GPU": s.worker_gpus}
    return LocalAutoscalingCluster(
        {"CPU": s.head_cpus, "GPU": 0},
        {
            WORKER_TYPE: {
                "resources": worker,
                "node_config": {},
                "min_workers": 0,
                "max_workers": s.max_workers,
            }
        },
        run_id=run_id,
        autoscaler_v2=s.autoscaler_v2,
        max_workers=s.max_workers,
        idle_timeout_minutes=s.idle_timeout_minutes,
    )


def make_app_config(s: Settings, repository_root: str, http_port: int) -> AppConfig:
    """The AppConfig of the run: only ``mlp-head``, autoscaled, half a GPU per replica.

    Serve's Python proxy, because HAProxy's stats ports are fixed and would collide with
    another Ray on the machine; the access log on, because it names each request's replica.
    """
    autoscaling = {
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "target_ongoing_requests": s.target_ongoing_requests,
        "upscale_delay_s": s.upscale_delay_s,
        "downscale_delay_s": s.downscale_delay_s,
        "metrics_interval_s": s.metrics_interval_s,
        "look_back_period_s": s.look_back_period_s,
    }
    return AppConfig.model_validate(
        {
            "repository": {"root": repository_root},
            "http": {
                "host": "127.0.0.1",
                "port": http_port,
                "request_timeout_s": 30,
                "ingress": "proxy",
                "access_log": True,
            },
            "models": [
                {
                    "name": APP,
                    "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.002},
                    "max_ongoing_requests": 16,
                    "graceful_shutdown_timeout_s": 2,
                    "resources": {
                        "num_cpus": s.replica_cpus,
                        "num_gpus": s.replica_gpus,
                        "torch_threads": 1,
                    },
                    "autoscaling": autoscaling,
                }
            ],
        }
    )


def short_id(node_id: str | None) -> str | None:
    """Fake node ids end in a counter: head 00000, workers 00001, 00002..."""
    return None if not node_id else node_id[-5:]


# --- load and sampling ----------------------------------------------------------------


@dataclass
class LoadStats:
    """What the load generator saw; ``records`` are (t_done, latency_s, x-request-id)."""

    ok: int = 0
    failed: int = 0
    in_flight: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    records: list[tuple[float, float, str]] = field(default_factory=list)
    started: float | None = None
    started_wall: float | None = None
    stopped: float | None = None
    stop_at: float | None = None


def request_body(rows: int = 1) -> bytes:
    """An OIP request for mlp-head: FP32 ``input`` of shape [rows, 384]."""
    data = [round((i % 97) / 97.0, 4) for i in range(rows * 384)]
    tensor = {"name": "input", "shape": [rows, 384], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


async def run_load(url: str, s: Settings, stats: LoadStats) -> None:
    """Closed loop: ``s.concurrency`` clients post until ``s.load_s`` (or ``stats.stop_at``)
    or ``s.max_requests``. Anything but a 200 with outputs is a failure."""
    import httpx

    body, sent = request_body(), 0
    stats.started, stats.started_wall = time.monotonic(), time.time()
    deadline = stats.started + s.load_s

    def more() -> bool:
        nonlocal sent
        now, sent = time.monotonic(), sent + 1
        return now < deadline and now < (stats.stop_at or deadline) and sent <= s.max_requests

    async def client_loop(client: httpx.AsyncClient) -> None:
        while more():
            t_send = time.monotonic()
            stats.in_flight += 1
            try:
                r = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as e:
                stats.failed += 1
                stats.failures[type(e).__name__] += 1
                continue
            finally:
                stats.in_flight -= 1
            if r.status_code == 200 and b'"outputs"' in r.content:
                done = time.monotonic()
                stats.ok += 1
                stats.records.append((done, done - t_send, r.headers.get("x-request-id", "")))
            else:
                stats.failed += 1
                stats.failures[f"HTTP {r.status_code}"] += 1

    limits = httpx.Limits(max_connections=s.concurrency)
    async with httpx.AsyncClient(timeout=s.request_timeout_s, trust_env=False, limits=limits) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(s.concurrency)))
    stats.stopped = time.monotonic()


class Recorder:
    """Samples nodes, Serve and the autoscaler every ``sample_interval_s`` in a thread
    (the only caller of ``serve.status()``, which is not thread-safe in 2.60). Times are
    ``time.monotonic()``; ``analyse`` makes them relative to the load start."""

    def __init__(self, s: Settings, gcs_address: str, load: LoadStats) -> None:
        self.s, self.gcs_address, self.load = s, gcs_address, load
        self.samples: list[dict[str, Any]] = []
        self.replicas: dict[str, dict[str, Any]] = {}
        self.baseline_nodes: set[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def last(self) -> dict[str, Any] | None:
        good = [x for x in self.samples if "error" not in x]
        return good[-1] if good else None

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self.samples.append(self.sample())
            except Exception as e:  # noqa: BLE001 - a failed sample is data, not a crash
                self.samples.append({"t": start, "error": repr(e)})
            self._stop.wait(max(0.0, self.s.sample_interval_s - (time.monotonic() - start)))

    def sample(self) -> dict[str, Any]:
        from ray import serve
        from ray.autoscaler.v2.sdk import get_cluster_status
        from ray.serve.context import _get_global_client

        t = time.monotonic()
        alive = [n for n in ray.nodes() if n["Alive"]]
        gpu_workers = sorted(str(short_id(n["NodeID"])) for n in alive if n["Resources"].get("GPU"))
        apps = serve.status().applications
        states: dict[str, int] = {}
        if APP in apps and DEPLOYMENT in apps[APP].deployments:
            replica_states = apps[APP].deployments[DEPLOYMENT].replica_states
            states = {str(getattr(k, "value", k)): v for k, v in replica_states.items() if v}
        client = _get_global_client()
        assert client is not None
        dep = client.get_serve_details().get("applications", {}).get(APP, {})
        dep = dep.get("deployments", {}).get(DEPLOYMENT, {})
        running_by_node: Counter[str] = Counter()
        for r in dep.get("replicas", []):
            info = self.replicas.setdefault(
                r["replica_id"],
                {
                    "replica_id": r["replica_id"],
                    "node": None,
                    "first_seen_t": t,
                    "running_t": None,
                    "gone_t": None,
                    "log_file_path": None,
                },
            )
            info["node"] = short_id(r.get("node_id")) or info["node"]
            info["log_file_path"] = r.get("log_file_path") or info["log_file_path"]
            if r["state"] == "RUNNING":
                running_by_node[str(info["node"])] += 1
                info["running_t"] = info["running_t"] or t
        live = {r["replica_id"] for r in dep.get("replicas", [])}
        for rid, info in self.replicas.items():
            if rid not in live and info["gone_t"] is None:
                info["gone_t"] = t
        if (
            self.s.stop_after_new_replica_s is not None
            and self.baseline_nodes is not None
            and self.load.stop_at is None
            and set(running_by_node) - self.baseline_nodes
        ):
            self.load.stop_at = t + self.s.stop_after_new_replica_s
        cs = get_cluster_status(self.gcs_address)
        demand = cs.resource_demands.ray_task_actor_demand
        return {
            "t": t,
            "apps": {n: str(getattr(a.status, "value", a.status)) for n, a in apps.items()},
            "nodes_alive": len(alive),
            "gpu_workers": gpu_workers,
            "replica_states": states,
            "target_replicas": dep.get("target_num_replicas"),
            # Serve knows a replica's node once its actor is placed and started.
            "unplaced_replicas": sum(
                1
                for r in dep.get("replicas", [])
                if r["state"] == "STARTING" and not r.get("node_id")
            ),
            # Actor bundles with a GPU that no node can take: what the autoscaler acts on.
            "gpu_demand": sum(
                b.count for d in demand for b in d.bundles_by_count if b.bundle.get("GPU")
            ),
            "pending_launches": sum(r.count for r in cs.pending_launches),
            "pending_nodes": len(cs.pending_nodes),
            "running_by_node": dict(running_by_node),
            "ok": self.load.ok,
            "failed": self.load.failed,
            "in_flight": self.load.in_flight,
        }


# --- reading the logs -----------------------------------------------------------------


def served_by(logs_dir: Path, replicas: dict[str, dict[str, Any]], ids: set[str]) -> dict[str, str]:
    """x-request-id -> replica id, from the replicas' access logs (one line per request,
    carrying the id the proxy returned in the response header)."""
    out: dict[str, str] = {}
    for rid, info in replicas.items():
        path = logs_dir / (info["log_file_path"] or "missing").lstrip("/")
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                out.update((token, rid) for token in line.split() if token in ids)
    return out


_INSTANCE_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s+INFO instance_manager\.py:\d+ -- "
    r"(?:New|Update) instance (?P<transition>[A-Z_>-]+) \(id=[^,]*, type=(?P<type>[^,]*), "
    r"cloud_instance_id=(?P<cloud_id>\w*), ray_id=\w*\): (?P<detail>.*)$"
)


def autoscaler_log(monitor_log: Path, wall_t0: float) -> list[dict[str, Any]]:
    """Worker instance transitions in the v2 autoscaler's own log (QUEUED, REQUESTED,
    ALLOCATED, RAY_RUNNING, RAY_STOP_REQUESTED, TERMINATING...), in seconds from
    ``wall_t0``. The log's timestamps are local time of this machine."""
    out: list[dict[str, Any]] = []
    lines = monitor_log.read_text(errors="replace").splitlines() if monitor_log.is_file() else []
    for m in filter(None, map(_INSTANCE_LINE.match, lines)):
        if m["type"] != FAKE_HEAD_NODE_TYPE:
            wall = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append(
                {
                    "t": round(wall - wall_t0, 2),
                    "transition": m["transition"],
                    "node": short_id(m["cloud_id"]),
                    "detail": m["detail"][:120],
                }
            )
    return out


# --- analysis -------------------------------------------------------------------------

DURATIONS = [  # (label, from event, to event): durations are keyed "<from>_to_<to>_s"
    (
        "deploy -> first GPU node (min_replicas 1 needs one)",
        "deploy_start",
        "first_gpu_node_at_deploy",
    ),
    ("GPU demand pending -> new GPU node alive", "first_replica_pending", "new_node_joined"),
    ("load start -> new GPU node alive", "load_start", "new_node_joined"),
    (
        "autoscaler log: launch queued -> node RAY_RUNNING",
        "autoscaler_log_launch_queued",
        "autoscaler_log_node_ray_running",
    ),
    (
        "new node alive -> first replica RUNNING on it",
        "new_node_joined",
        "first_replica_running_on_new_node",
    ),
    (
        "new node alive -> first request served on it",
        "new_node_joined",
        "first_request_served_on_new_node",
    ),
    (
        "load start -> first request served on new node",
        "load_start",
        "first_request_served_on_new_node",
    ),
    ("load stop -> replicas back to min_replicas", "load_stop", "replicas_scaled_down"),
    ("load stop -> idle GPU node removed", "load_stop", "node_removed"),
    ("replicas scaled down -> node removed", "replicas_scaled_down", "node_removed"),
]

Sample = dict[str, Any]


def first(rows: list[Sample], pred: Callable[[Sample], bool], after: float = 0.0) -> float | None:
    """Time of the first row at or after ``after`` that satisfies ``pred``."""
    return next((float(x["t"]) for x in rows if x["t"] >= after and pred(x)), None)


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 2)


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 2)


def _ms(values: list[float], q: int) -> float | None:
    if len(values) < 2:
        return round(values[0] * 1000, 1) if values else None
    return round(statistics.quantiles(values, n=100)[q - 1] * 1000, 1)


def analyse(s: Settings, rec: Recorder, stats: LoadStats, logs_dir: Path) -> dict[str, Any]:
    """Timeline from the load start, events, durations, requests per node, checks."""
    assert stats.started is not None and stats.started_wall is not None
    assert stats.stopped is not None
    t0, load_stop = stats.started, round(stats.stopped - stats.started, 2)
    timeline = [{**x, "t": _rel(x["t"], t0)} for x in rec.samples]
    samples = [x for x in timeline if "error" not in x]
    times = ("first_seen_t", "running_t", "gone_t")
    replicas = {r: {**i, **{k: _rel(i[k], t0) for k in times}} for r, i in rec.replicas.items()}
    baseline = set(rec.baseline_nodes or ())
    seen_nodes = {n for x in samples for n in x["gpu_workers"]}
    new_nodes = sorted(seen_nodes - baseline)
    peak = max((len(x["gpu_workers"]) for x in samples), default=0)
    before = [x for x in samples if x["t"] < 0]
    baseline_target = before[-1]["target_replicas"] if before else s.min_replicas
    alog = autoscaler_log(logs_dir / "monitor.log", stats.started_wall)

    owner = served_by(logs_dir, replicas, {i for _, _, i in stats.records if i})
    by_node: Counter[str] = Counter()
    served_on_new: list[float] = []
    for t_done, _, req_id in stats.records:
        node = replicas[owner[req_id]]["node"] if req_id in owner else "unattributed"
        by_node[str(node)] += 1
        if node in new_nodes:
            served_on_new.append(t_done)

    ev: dict[str, float | None] = {
        "deploy_start": samples[0]["t"] if samples else None,
        "first_gpu_node_at_deploy": first(samples, lambda x: bool(x["gpu_workers"]), -1e9),
        "load_start": 0.0,
        "serve_upscale_decided": first(
            samples, lambda x: (x["target_replicas"] or 0) > baseline_target
        ),
        "first_replica_pending": first(samples, lambda x: x["gpu_demand"] > 0),
        "autoscaler_log_launch_queued": first(alog, lambda x: x["transition"] == "QUEUED"),
        "autoscaler_log_node_ray_running": first(
            alog, lambda x: x["transition"].endswith(">RAY_RUNNING")
        ),
        "new_node_joined": first(samples, lambda x: bool(set(x["gpu_workers"]) - baseline)),
        "first_replica_running_on_new_node": first(
            samples, lambda x: bool(set(x["running_by_node"]) & set(new_nodes))
        ),
        "first_request_served_on_new_node": _rel(min(served_on_new, default=None), t0),
        "load_stop": load_stop,
        "serve_downscale_decided": first(
            samples, lambda x: x["target_replicas"] == s.min_replicas, load_stop
        ),
        "replicas_scaled_down": first(
            samples, lambda x: x["replica_states"] == {"RUNNING": s.min_replicas}, load_stop
        ),
        "autoscaler_log_idle_drain": first(
            alog, lambda x: x["transition"].endswith(">RAY_STOP_REQUESTED"), load_stop
        ),
        "node_removed": first(samples, lambda x: len(x["gpu_workers"]) < peak, load_stop)
        if new_nodes
        else None,
    }
    durations = {f"{a}_to_{b}_s": _between(ev[a], ev[b]) for _, a, b in DURATIONS}
    lat = [x for _, x, _ in stats.records]
    requests = {
        "ok": stats.ok,
        "failed": stats.failed,
        "failures": dict(stats.failures),
        "by_node": dict(sorted(by_node.items())),
        "on_new_nodes": len(served_on_new),
        "throughput_rps": round(stats.ok / max(1e-9, load_stop), 1),
        "latency_ms": {
            "p50": _ms(lat, 50),
            "p95": _ms(lat, 95),
            "p99": _ms(lat, 99),
            "max": round(max(lat) * 1000, 1) if lat else None,
        },
    }
    scaled, removed = (
        durations[f"load_stop_to_{e}_s"] for e in ("replicas_scaled_down", "node_removed")
    )
    checks = {
        "node_added_during_load": (ev["new_node_joined"] or 1e9) <= load_stop,
        "request_served_on_new_node": len(served_on_new) > 0,
        "all_requests_ok": stats.failed == 0 and stats.ok > 0,
        "all_requests_attributed": "unattributed" not in by_node,
        "replicas_scaled_down_in_bound": scaled is not None and scaled <= s.settle_timeout_s,
        "node_removed_in_bound": removed is not None and removed <= s.settle_timeout_s,
        "no_sample_errors": len(samples) == len(timeline),
    }
    return {
        "events": ev,
        "durations": durations,
        "requests": requests,
        "baseline_gpu_workers": sorted(baseline),
        "new_gpu_workers": new_nodes,
        "removed_gpu_workers": sorted(
            seen_nodes - set(samples[-1]["gpu_workers"] if samples else ())
        ),
        "replicas": sorted(replicas.values(), key=lambda r: r["first_seen_t"]),
        "autoscaler_log": alog,
        "checks": checks,
        "timeline": timeline,
    }


# --- the experiment -------------------------------------------------------------------


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``pred()`` every 0.25 s; ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout_s:.0f} s")
        time.sleep(0.25)


def run_experiment(
    s: Settings, run_id: str, log: Callable[[str], None] = print, keep_temp: bool = False
) -> dict[str, Any]:
    """Start the private cluster, deploy mlp-head from an AppConfig, load it, wait for the
    scale-down, and return the results. The cluster is always torn down."""
    from serve_app import local
    from serve_app.demo import ensure_demo_models
    from serve_app.serve_config import render_serve_config

    cluster = make_cluster(s, run_id)
    repo = os.path.join(cluster.temp_dir, "model-repository")
    app = make_app_config(s, repo, free_port())
    # HeadOnly: every fake node shares 127.0.0.1, so per-node proxies would collide.
    serve_config = render_serve_config(app, proxy_location="HeadOnly")
    names = [a["name"] for a in serve_config["applications"]]
    stats = LoadStats()
    rec = Recorder(s, cluster.address, stats)

    def last() -> dict[str, Any]:
        return rec.last() or {"apps": {}, "replica_states": {}, "gpu_workers": [], "t": 0.0}

    def deployed() -> bool:
        failed = {n: a for n, a in last()["apps"].items() if a in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise local.DeployFailed(f"applications failed: {failed}")
        return all(last()["apps"].get(n) == "RUNNING" for n in names)

    def at_min(x: dict[str, Any]) -> bool:
        return x["replica_states"] == {"RUNNING": s.min_replicas}

    try:
        log(f"starting cluster {run_id} (GCS {cluster.address}, temp {cluster.temp_dir})")
        cluster.start(override_env=local.ingress_environment(app.http))
        ensure_demo_models(repo, progress=False, with_onnx=False)
        ray.init(address=cluster.address, log_to_driver=False)
        local.deploy_config(serve_config)
        rec.start()
        log("deploying (the first replica needs a GPU node too)")
        wait_for(deployed, s.deploy_timeout_s, f"applications {names} RUNNING")
        wait_for(
            lambda: at_min(last()) and last()["target_replicas"] == s.min_replicas,
            60,
            "steady state before the load",
        )
        rec.baseline_nodes = set(last()["gpu_workers"])
        url = f"http://127.0.0.1:{app.http.port}{app.models[0].route_prefix}/infer"
        log(f"load: {s.concurrency} clients for up to {s.load_s:.0f} s -> {url}")
        asyncio.run(run_load(url, s, stats))
        log(f"load stopped: {stats.ok} ok, {stats.failed} failed; waiting for the scale-down")
        peak = max(len(x.get("gpu_workers", ())) for x in rec.samples)
        try:
            wait_for(
                lambda: (
                    last()["t"] > (stats.stopped or 0)
                    and at_min(last())
                    and len(last()["gpu_workers"]) < peak
                ),
                s.settle_timeout_s,
                "scale-down and node removal",
            )
        except TimeoutError as e:
            log(f"warning: {e}")
        time.sleep(2 * s.sample_interval_s)
        rec.stop()
        logs_dir = Path(cluster.temp_dir) / "session_latest" / "logs"
        return {
            **analyse(s, rec, stats, logs_dir),
            "autoscaling_cluster_config": cluster.config,
            "serve_config": serve_config,
            "app_config": app.model_dump(mode="json"),
        }
    finally:
        rec.stop()
        ray.shutdown()
        cluster.shutdown(keep_temp=keep_temp)


# --- report and CLI -------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """Machine and versions the numbers were measured on."""
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_1m_before": round(os.getloadavg()[0], 2),
        },
        "versions": {
            "ray": ray.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def summary_markdown(result: dict[str, Any]) -> str:
    """Human-readable summary: durations, events, replicas, requests, checks."""
    s, r, m = result["settings"], result["requests"], result["machine"]
    lat = r["latency_ms"]
    failures = f" {r['failures']}" if r["failures"] else ""
    events = sorted(result["events"].items(), key=lambda kv: 1e9 if kv[1] is None else kv[1])
    rows = [
        f"| {label} | {_fmt(result['durations'][f'{a}_to_{b}_s'])} |" for label, a, b in DURATIONS
    ]
    return "\n".join(
        [
            "# Node autoscaling on one machine (fake multi-node provider, real autoscaler)",
            "",
            f"Measured {result['date']} on {m['cpu_count']} CPUs ({m['platform']}), Ray "
            f"{result['versions']['ray']}, Python {result['versions']['python']}, autoscaler "
            f"{'v2' if s['autoscaler_v2'] else 'v1'} (update interval 1 s, as AutoscalingCluster "
            f"sets it). The machine was shared with other jobs (1-min load average "
            f"{m['loadavg_1m_before']} before, {m['loadavg_1m_after']} after): timings are noisy. "
            f"State is sampled every {s['sample_interval_s']} s; requests are timed by the client "
            "and traced to their replica through Serve's access log; `autoscaler_log_*` events "
            "come from the autoscaler's own log.",
            "",
            f"Setup: {s['concurrency']} closed-loop HTTP clients on 127.0.0.1 for "
            f"{_fmt(result['events']['load_stop'])} s; `mlp-head` replicas {s['min_replicas']}-"
            f"{s['max_replicas']} (target_ongoing_requests {s['target_ongoing_requests']}, "
            f"upscale/downscale delay {s['upscale_delay_s']}/{s['downscale_delay_s']} s), "
            f"{s['replica_gpus']} GPU + {s['replica_cpus']} CPU each; head 0 GPU / "
            f"{s['head_cpus']} CPU; GPU worker nodes {{CPU: {s['worker_cpus']}, GPU: "
            f"{s['worker_gpus']}}}, 0-{s['max_workers']}, idle_timeout_minutes "
            f"{s['idle_timeout_minutes']}.",
            "",
            "| step | seconds |",
            "|---|---|",
            *rows,
            "",
            "| event | t from load start (s) |",
            "|---|---|",
            *[f"| {k} | {_fmt(v)} |" for k, v in events],
            "",
            "| replica | node | first seen (s) | RUNNING (s) | gone (s) |",
            "|---|---|---|---|---|",
            *[
                f"| {x['replica_id']} | {x['node']} | {_fmt(x['first_seen_t'])} | "
                f"{_fmt(x['running_t'])} | {_fmt(x['gone_t'])} |"
                for x in result["replicas"]
            ],
            "",
            f"Requests: {r['ok']} ok, {r['failed']} failed{failures}, "
            f"{r['throughput_rps']} req/s, latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, max "
            f"{lat['max']} ms. Served per GPU node (at deploy {result['baseline_gpu_workers']}, "
            f"added under load {result['new_gpu_workers']}): {r['by_node']}. Node removed after "
            f"the load: {result['removed_gpu_workers']} (Serve picks the replicas to stop; the "
            "node left empty goes).",
            "",
            "Checks: "
            + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result["checks"].items()),
            "",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.node_autoscaling", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument(
        "--out",
        default="loadtest/results/node_autoscaling.json",
        help="results JSON; the Markdown summary goes next to it (.md)",
    )
    p.add_argument("--run-id", default=None, help="names the cluster's temp dir and marker")
    p.add_argument("--autoscaler-v1", action="store_true", help="use autoscaler v1")
    p.add_argument("--keep-temp", action="store_true", help="keep the Ray temp dir (logs)")
    defaults = Settings()
    for name in (
        "load_s",
        "concurrency",
        "max_requests",
        "stop_after_new_replica_s",
        "downscale_delay_s",
        "idle_timeout_minutes",
        "settle_timeout_s",
    ):
        default = getattr(defaults, name)
        kind = int if isinstance(default, int) else float
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            help=f"Settings.{name} (default {default})",
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment, write JSON + Markdown, print the summary; 1 if a check failed."""
    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__}
    settings = Settings(**fields, autoscaler_v2=not args.autoscaler_v1)
    run_id = args.run_id or uuid.uuid4().hex[:10]
    # SIGTERM (e.g. a test's timeout) must still run the cleanup in ``finally``.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t = time.monotonic()
    result = {**environment(), "run_id": run_id, "settings": asdict(settings)}
    result.update(
        run_experiment(settings, run_id, lambda msg: print(msg, flush=True), args.keep_temp)
    )
    result["experiment_wall_s"] = round(time.monotonic() - t, 1)
    result["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    summary = summary_markdown(result)
    out.with_suffix(".md").write_text(summary)
    print(
        f"\n{summary}\nwrote {out} and {out.with_suffix('.md')} ({result['experiment_wall_s']} s)"
    )
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
