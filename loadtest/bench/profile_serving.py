"""Where a request's CPU goes in ``serve-app demo`` (issue 17's first step: measure
before changing anything).

Runs the demo on ``configs/app.yaml`` (HAProxy ingress, 2 MiniLM replicas), drives it
closed-loop with wrk on 127.0.0.1 (one ~12-word sentence per request: a Python client
would take one of the two cores), and over the measured window:

- takes every process's CPU time from ``/proc`` (psutil) before and after, grouped by
  role (replica, HAProxy, proxy manager, raylet, ...), as CPU milliseconds per request;
- samples every replica with ``py-spy record`` (on-CPU samples only, all threads) and
  attributes the samples to stages of the request path by the frames on the stack.

Everything outside the demo's process tree (wrk, py-spy, the OS) is reported as one
line: on two shared cores it competes with the server.

    python -m loadtest.bench.profile_serving                    # c=16, 20 s
    python -m loadtest.bench.profile_serving --concurrency 64   # results/profile/c64.*
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml

from loadtest.harness.demo_process import REPO_ROOT, demo_process, descendants
from loadtest.harness.machine import free_port, machine_info, machine_line
from loadtest.observe.proc_sampler import group_of
from loadtest.traffic.http_load import wait_ok
from loadtest.traffic.payloads import SENTENCE
from loadtest.traffic.wrk import run_wrk, wrk_script

RESULTS = REPO_ROOT / "loadtest" / "results" / "profile"
PATH = "/v2/models/minilm/infer"

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (stage, substrings of a frame): the first stage with a frame on the stack wins, so
    # the order puts the innermost work first (a forward runs under the event loop).
    ("model forward (ONNX Runtime / torch)",
     ("onnxruntime", "torch/", "forward_rows", "run_planned")),
    ("tokenize", ("tokenizers", "tokeniz", "prepare_rows", "runtime.py:prepare")),
    ("encode response", ("encode_response", "encode_bytes_buffer", "json_response")),
    ("decode request (body read, JSON, tensors)",
     ("read_inference_request", "read_body", "decode_request", "_decode_input")),
    ("batching (serve.batch queue)", ("serve/batching.py", "serve_app/server/batching.py")),
    ("HTTP server (uvicorn, starlette, h11)", ("uvicorn", "h11", "httptools", "starlette")),
    ("Serve replica machinery", ("ray/serve/",)),
    ("Ray core (gRPC, metrics, tasks)",
     ("ray/_private", "_raylet", "grpc", "opencensus", "ray/util/metrics")),
    ("asyncio event loop", ("asyncio/",)),
)  # fmt: skip
OTHER = "other Python"


def stage_of(frames: list[str]) -> str:
    """The request-path stage a sampled stack belongs to (``frames`` root first)."""
    text = ";".join(frames)
    for stage, needles in STAGES:
        if any(n in text for n in needles):
            return stage
    return OTHER


def parse_raw(text: str) -> Counter[str]:
    """py-spy ``--format raw`` (collapsed stacks: ``frame;frame;... count``) -> samples
    per stage."""
    out: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[stage_of(stack.split(";"))] += int(count)
    return out


def cpu_by_group(root_pid: int) -> dict[int, tuple[str, float]]:
    """pid -> (group, user + system CPU seconds) for the demo's process tree."""
    out = {}
    for p in [psutil.Process(root_pid), *descendants(root_pid)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (group_of(p.name(), p.cmdline(), p.pid == root_pid), t.user + t.system)
        except psutil.Error:
            continue
    return out


def thread_cpu(pid: int) -> dict[int, float]:
    """tid -> user + system CPU seconds of each thread of ``pid`` (``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_names(pid: int, py_spy: str) -> dict[int, str]:
    """tid -> name: the Python thread's name and its innermost-but-one frame function
    (from ``py-spy dump``) where there is one, else the kernel's ``comm``."""
    names = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(task.name)] = "native: " + (task / "comm").read_text().strip()
        except OSError:
            continue
    dump = subprocess.run(
        [py_spy, "dump", "--json", "--nonblocking", "--pid", str(pid)],
        capture_output=True,
        text=True,
    )
    try:
        threads = json.loads(dump.stdout)
    except json.JSONDecodeError:
        return names
    for t in threads:
        frames = t.get("frames") or []
        # the outermost frame that is not threading's bootstrap names what the thread is
        own = [f["name"] for f in reversed(frames) if "threading" not in f.get("filename", "")]
        names[t["os_thread_id"]] = f"{t.get('thread_name') or 'thread'}: {own[0] if own else ''}"
    return names


def pss_by_group(root_pid: int) -> dict[str, float]:
    """Proportional set size (MiB) of the demo's process tree, per group."""
    out: dict[str, float] = {}
    for p in [psutil.Process(root_pid), *descendants(root_pid)]:
        try:
            group = group_of(p.name(), p.cmdline(), p.pid == root_pid)
            out[group] = out.get(group, 0.0) + p.memory_full_info().pss / 2**20
        except psutil.Error:
            continue
    return out


HAPROXY_TIMERS = {"qtime": "queue", "ctime": "connect", "rtime": "response", "ttime": "total"}
"""HAProxy's per-backend averages over its last 1024 requests (ms), from ``/stats;csv``."""


def haproxy_timers(stats_port: int, backend_part: str = "minilm") -> dict[str, dict[str, int]]:
    """Average queue/connect/response/total times (ms) of the BACKEND rows whose name
    contains ``backend_part``: what HAProxy itself measured, from request in to response
    out, around the replica."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=5) as r:
        return parse_haproxy_csv(r.read().decode(), backend_part)


def parse_haproxy_csv(text: str, backend_part: str) -> dict[str, dict[str, int]]:
    """``haproxy_timers`` of a ``/stats;csv`` body (header line starts with ``# ``)."""
    import csv

    out = {}
    for row in csv.DictReader(text.lstrip("# ").splitlines()):
        if row.get("svname") == "BACKEND" and backend_part in row.get("pxname", ""):
            out[row["pxname"]] = {v: int(row.get(k) or 0) for k, v in HAPROXY_TIMERS.items()}
    return out


def delta_by_group(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds used in the window, per group (processes alive at both ends)."""
    out: dict[str, float] = {}
    for pid, (group, cpu_s) in after.items():
        if pid in before:
            out[group] = out.get(group, 0.0) + cpu_s - before[pid][1]
    return out


def profile(a: argparse.Namespace) -> dict[str, Any]:
    """Run the demo, load it and profile it; returns the result dict."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    config = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    if a.one_model:
        from loadtest.bench.peers import one_model_config

        config = one_model_config(config)
    config["repository"]["root"] = str(Path(a.repo).resolve())
    config["http"]["admin_ports"] = [free_port(), free_port()]
    body = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
    ).encode()
    folder = Path(tempfile.mkdtemp(prefix="profile-"))
    extra_env = dict(kv.split("=", 1) for kv in a.env)
    with demo_process(config, folder, extra_env=extra_env) as demo:
        wait_ok(PATH, body)
        replicas = [
            p for p in descendants(demo.proc.pid) if "ServeReplica:minilm" in " ".join(p.cmdline())
        ]
        spies: list[tuple[subprocess.Popen[bytes], Path]] = []
        script = wrk_script([body.decode()], folder / "one.lua")
        idle_0 = cpu_by_group(demo.proc.pid)
        time.sleep(a.idle_s)
        idle = delta_by_group(idle_0, cpu_by_group(demo.proc.pid))
        memory = pss_by_group(demo.proc.pid)
        run_wrk(script, a.concurrency, a.warmup_s)  # warm-up (its own 2 s warm-up too)
        names = {p.pid: thread_names(p.pid, py_spy) for p in replicas}
        threads_0 = {p.pid: thread_cpu(p.pid) for p in replicas}
        before = cpu_by_group(demo.proc.pid)
        for p in replicas if a.rate_hz > 0 else []:  # sample exactly the window
            out = folder / f"replica-{p.pid}.txt"
            cmd = [py_spy, "record", "--pid", str(p.pid), "--format", "raw",
                   "--rate", str(a.rate_hz), "--duration", str(int(a.duration_s)),
                   "--nonblocking", "--output", str(out)]  # fmt: skip
            spies.append(
                (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out)
            )
        wrk_0 = psutil.cpu_times()
        load = run_wrk(script, a.concurrency, a.duration_s, warmup=False)
        after = cpu_by_group(demo.proc.pid)
        wrk_1 = psutil.cpu_times()
        threads_1 = {p.pid: thread_cpu(p.pid) for p in replicas}
        timers = haproxy_timers(config["http"]["admin_ports"][0])
        samples: Counter[str] = Counter()
        for spy, out in spies:
            spy.wait(a.duration_s + 30)
            if out.exists():
                samples += parse_raw(out.read_text())
            else:
                print(f"py-spy wrote nothing: {spy.stderr.read().decode() if spy.stderr else ''}")
    cpu = delta_by_group(before, after)
    busy_s = sum(wrk_1) - sum(wrk_0) - (wrk_1.idle - wrk_0.idle) - (wrk_1.iowait - wrk_0.iowait)
    cpu["everything else (wrk, py-spy, OS)"] = busy_s - sum(cpu.values())
    n = max(1, round(load["rps"] * a.duration_s))
    summary = {"concurrency": a.concurrency, "duration_s": a.duration_s, **load}
    by_thread: dict[str, float] = {}
    for pid, after_s in threads_1.items():
        for tid, cpu_s in after_s.items():
            name = names[pid].get(tid, "native: (started in the window)")
            by_thread[name] = by_thread.get(name, 0.0) + cpu_s - threads_0[pid].get(tid, 0.0)
    total = sum(samples.values()) or 1
    replica_cpu_s = sum(v for k, v in cpu.items() if k.startswith("replica:"))
    return {
        "machine": machine_info(),
        "settings": vars(a),
        "load": summary,
        "cpu_ms_per_request": {
            k: round(v * 1e3 / n, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
        },
        "haproxy_timers_ms": timers,
        "idle_cpu_ms_per_s": {
            k: round(v * 1e3 / a.idle_s, 1) for k, v in sorted(idle.items(), key=lambda kv: -kv[1])
        },
        "idle_pss_mib": {k: round(v) for k, v in sorted(memory.items(), key=lambda kv: -kv[1])},
        "replica_threads_cpu_ms_per_request": {
            k: round(v * 1e3 / n, 3)
            for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1])
            if v * 1e3 / n >= 0.005
        },
        "replica_stages": {
            k: {
                "share": round(v / total, 3),
                "cpu_ms_per_request": round(replica_cpu_s * 1e3 / n * v / total, 3),
            }
            for k, v in samples.most_common()
        },
        "py_spy_samples": total,
    }


def markdown(r: dict[str, Any]) -> str:
    """The result as a Markdown report."""
    m, load = r["machine"], r["load"]
    lines = [
        f"# Where a request's CPU goes: serve-app demo, c={load['concurrency']} ({m['date']})",
        "",
        f"{machine_line(m, 'onnxruntime')} configs/app.yaml (HAProxy, 2 MiniLM "
        f"replicas), one ~12-word sentence per request, closed-loop wrk (one thread), "
        "same machine.",
        "",
        f"Load: {load['rps']} req/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
        f"{load['errors']} errors (non-2xx or socket) over {load['duration_s']} s.",
    ]
    timers, idle, pss = r["haproxy_timers_ms"], r["idle_cpu_ms_per_s"], r["idle_pss_mib"]
    sections: list[tuple[str, list[str], list[list[Any]]]] = [
        ("CPU per request, by process (from /proc, the whole window)",
         ["process group", "CPU ms / request"],
         [[k, v] for k, v in r["cpu_ms_per_request"].items() if abs(v) >= 0.005]),
        ("HAProxy's own timers (ms, averages over its last 1024 requests per backend)",
         ["backend", "queue", "connect", "response", "total"],
         [[k, *v.values()] for k, v in timers.items()]),
        (f"Idle: CPU ms per second before the load (total {sum(idle.values()):.0f})",
         ["process group", "CPU ms / s"], [[k, v] for k, v in idle.items() if v >= 0.5]),
        (f"Idle memory: PSS by process group (total {sum(pss.values()) / 1024:.2f} GiB)",
         ["process group", "PSS MiB"], [[k, v] for k, v in pss.items() if v >= 1]),
        ("Replica threads (from /proc, both replicas summed; names from py-spy dump)",
         ["thread: outermost function", "CPU ms / request"],
         [[k, v] for k, v in r["replica_threads_cpu_ms_per_request"].items()]),
        (f"Inside the replicas (py-spy, {r['py_spy_samples']} on-CPU samples)",
         ["stage", "share of replica CPU", "CPU ms / request"],
         [[k, f"{v['share']:.1%}", v["cpu_ms_per_request"]]
          for k, v in r["replica_stages"].items()]),
    ]  # fmt: skip
    for title, columns, rows in sections:
        lines += ["", f"## {title}", "", "| " + " | ".join(columns) + " |"]
        lines += ["|---|" + "---:|" * (len(columns) - 1)]
        lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m loadtest.bench.profile_serving``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(REPO_ROOT / "model-repository"), help="model repository")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument(
        "--rate-hz", type=int, default=250, help="py-spy samples per second (0: no sampling)"
    )
    p.add_argument("--idle-s", type=float, default=10.0, help="idle window before the load")
    p.add_argument("--env", action="append", default=[], help="K=V for the demo's Ray")
    p.add_argument(
        "--one-model", action="store_true", help="minilm alone (bench peers' one-model config)"
    )
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    ensure_demo_models(a.repo, progress=False)
    result = profile(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"c{a.concurrency}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
