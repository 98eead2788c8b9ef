"""Where a request's CPU goes in ``serve-app demo`` (issue 17's first step: measure
before changing anything).

Runs the demo on ``configs/app.yaml`` (HAProxy ingress, 2 MiniLM replicas), drives it
closed-loop from Python threads on 127.0.0.1 with one ~12-word sentence per request,
and over the measured window:

- takes every process's CPU time from ``/proc`` (psutil) before and after, grouped by
  role (replica, HAProxy, proxy manager, raylet, ...), as CPU milliseconds per request;
- samples every replica with ``py-spy record`` (on-CPU samples only, all threads) and
  attributes the samples to stages of the request path by the frames on the stack.

The client's own CPU is reported too: on two shared cores it competes with the server.

    python -m loadtest.profile_serving                    # c=16, 20 s
    python -m loadtest.profile_serving --concurrency 64   # results/profile/c64.*
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import yaml

from loadtest.demo_process import REPO_ROOT, demo_process, descendants
from loadtest.http_load import closed_loop, post, wait_ok
from loadtest.machine import free_port, machine_info
from loadtest.proc_sampler import group_of
from loadtest.raw_model import SENTENCE

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
    ("batching (serve.batch queue)", ("serve/batching.py", "serve_app/batching.py")),
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
    config["repository"]["root"] = str(Path(a.repo).resolve())
    config["http"]["admin_ports"] = [free_port(), free_port()]
    body = json.dumps(
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
    ).encode()
    folder = Path(tempfile.mkdtemp(prefix="profile-"))
    with demo_process(config, folder) as demo:
        wait_ok(PATH, body)
        replicas = [
            p for p in descendants(demo.proc.pid) if "ServeReplica:minilm" in " ".join(p.cmdline())
        ]
        spies: list[tuple[subprocess.Popen[bytes], Path]] = []
        client = psutil.Process()

        def probe() -> tuple[dict[int, tuple[str, float]], float]:
            if not spies:  # window start: sample the replicas for exactly the window
                for p in replicas:
                    out = folder / f"replica-{p.pid}.txt"
                    cmd = [py_spy, "record", "--pid", str(p.pid), "--format", "raw",
                           "--rate", str(a.rate_hz), "--duration", str(int(a.duration_s)),
                           "--nonblocking", "--output", str(out)]  # fmt: skip
                    spies.append(
                        (
                            subprocess.Popen(
                                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                            ),
                            out,
                        )
                    )
            t = client.cpu_times()
            return cpu_by_group(demo.proc.pid), t.user + t.system

        def call(conn: Any) -> bool:
            return post(conn, PATH, body) is not None

        summary, (before, client_0), (after, client_1) = closed_loop(
            call, a.concurrency, a.warmup_s, a.duration_s, probe
        )
        samples: Counter[str] = Counter()
        for spy, out in spies:
            spy.wait(a.duration_s + 30)
            if out.exists():
                samples += parse_raw(out.read_text())
            else:
                print(f"py-spy wrote nothing: {spy.stderr.read().decode() if spy.stderr else ''}")
    cpu = delta_by_group(before, after)
    cpu["load generator (this process)"] = client_1 - client_0
    n = max(1, summary["ok"])
    total = sum(samples.values()) or 1
    replica_cpu_s = sum(v for k, v in cpu.items() if k.startswith("replica:"))
    return {
        "machine": machine_info(),
        "settings": vars(a),
        "load": summary,
        "cpu_ms_per_request": {
            k: round(v * 1e3 / n, 3) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
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
        f"Machine: {m['cpus']} CPUs ({m.get('cpu_model')}), {m['memory_gib']} GiB, Ray "
        f"{m['ray']}, onnxruntime {m['onnxruntime']}. configs/app.yaml (HAProxy, 2 MiniLM "
        f"replicas), one ~12-word sentence per request, closed loop from Python threads.",
        "",
        f"Load: {load['rps']} req/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms, "
        f"{load['ok']} ok, {load['errors']} errors over {load['duration_s']} s.",
        "",
        "## CPU per request, by process (from /proc, the whole window)",
        "",
        "| process group | CPU ms / request |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in r["cpu_ms_per_request"].items() if abs(v) >= 0.005]
    lines += [
        "",
        f"## Inside the replicas (py-spy, {r['py_spy_samples']} on-CPU samples)",
        "",
        "| stage | share of replica CPU | CPU ms / request |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {k} | {v['share']:.1%} | {v['cpu_ms_per_request']} |"
        for k, v in r["replica_stages"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m loadtest.profile_serving``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(REPO_ROOT / "model-repository"), help="model repository")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--rate-hz", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    from serve_app.demo import ensure_demo_models

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
