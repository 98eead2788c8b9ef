"""The experiment's Markdown summary and the facts about the machine it ran on."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any

from loadtest.nodes.analysis import DURATIONS


def environment() -> dict[str, Any]:
    """Machine and versions the numbers were measured on."""
    import ray
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
