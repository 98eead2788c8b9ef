"""A/B of a Ray environment setting on ``serve-app demo`` (configs/app.yaml), the
variants interleaved so that a drift of the shared machine hits both.

Each demo in ``--order`` (e.g. ``A,B,A,B``) is started with its variant's environment,
warmed up, then measured with closed-loop wrk at c=16 and c=64, twice each, 10 s a
run: requests/s, p99, and the CPU per request of the MiniLM replicas and of the whole
demo process tree (``/proc``).

    python -m loadtest.bench.ab_env --name same-loop \\
        --a RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1 \\
        --b RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadtest.bench.profile_serving import cpu_by_group, delta_by_group
from loadtest.harness.demo_process import REPO_ROOT, demo_process
from loadtest.harness.machine import free_port, machine_info
from loadtest.traffic.http_load import wait_ok
from loadtest.traffic.payloads import SENTENCE
from loadtest.traffic.wrk import body, run_wrk, wrk_script

RESULTS = REPO_ROOT / "loadtest" / "results"


def run_variant(name: str, env: dict[str, str], duration_s: float) -> list[dict[str, Any]]:
    """One demo with ``env``: c=16, 64, 16, 64."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    config["http"]["admin_ports"] = [free_port(), free_port()]
    folder = Path(tempfile.mkdtemp(prefix="ab-"))
    rows = []
    with demo_process(config, folder, extra_env=env) as demo:
        payload = body([SENTENCE])
        wait_ok("/v2/models/minilm/infer", payload.encode())
        script = wrk_script([payload], folder / "one.lua")
        run_wrk(script, 64, 3)
        for c in (16, 64, 16, 64):
            before = cpu_by_group(demo.proc.pid)
            r = run_wrk(script, c, duration_s, warmup=False)
            cpu = delta_by_group(before, cpu_by_group(demo.proc.pid))
            n = max(1.0, r["rps"] * duration_s)
            replica_s = sum(v for k, v in cpu.items() if k.startswith("replica:minilm"))
            row = {
                "variant": name,
                "c": c,
                "rps": r["rps"],
                "p99": r.get("p99_ms"),
                "replica_ms": round(replica_s * 1e3 / n, 3),
                "demo_ms": round(sum(cpu.values()) * 1e3 / n, 3),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def env_text(env: dict[str, str]) -> str:
    """``K=V K=V`` (or "Ray's defaults")."""
    return " ".join(f"{k}={v}" for k, v in env.items()) or "Ray's defaults"


def markdown(name: str, variants: dict[str, dict[str, str]], rows: list[dict[str, Any]]) -> str:
    """Per variant and concurrency: every run, then the means."""
    m = machine_info()
    lines = [
        f"# A/B: {name} ({m['date']}, {m['cpus']} CPUs, Ray {m['ray']})",
        "",
        *(f"- **{k}**: `{env_text(v)}`" for k, v in variants.items()),
        "",
        "`serve-app demo` on configs/app.yaml, closed-loop wrk, one sentence per request.",
        "",
        "| variant | c | req/s (each run) | mean req/s | mean p99 ms | replica CPU ms/req | "
        "demo CPU ms/req |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for v in variants:
        for c in (16, 64):
            runs = [r for r in rows if r["variant"] == v and r["c"] == c]
            each = ", ".join(f"{r['rps']:.0f}" for r in runs)
            lines.append(
                f"| {v} | {c} | {each} "
                f"| {statistics.mean(r['rps'] for r in runs):.0f} "
                f"| {statistics.mean(r['p99'] for r in runs):.0f} "
                f"| {statistics.mean(r['replica_ms'] for r in runs):.2f} "
                f"| {statistics.mean(r['demo_ms'] for r in runs):.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m loadtest.bench.ab_env``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="results/ab-<name>/")
    p.add_argument("--a", action="append", default=[], help="K=V of variant A")
    p.add_argument("--b", action="append", default=[], help="K=V of variant B")
    p.add_argument("--order", default="A,B,A,B")
    p.add_argument("--duration-s", type=float, default=10.0)
    a = p.parse_args(argv)
    variants = {
        "A": dict(kv.split("=", 1) for kv in a.a),
        "B": dict(kv.split("=", 1) for kv in a.b),
    }
    rows = []
    for v in a.order.split(","):
        rows += run_variant(v, variants[v], a.duration_s)
    out = RESULTS / f"ab-{a.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "README.md").write_text(markdown(a.name, variants, rows))
    print(markdown(a.name, variants, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
