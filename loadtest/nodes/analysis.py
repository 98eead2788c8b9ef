"""From samples, access logs and the autoscaler's log to events, durations and checks."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE

from loadtest.nodes.load import LoadStats
from loadtest.nodes.recorder import Recorder
from loadtest.nodes.settings import Settings, short_id


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
