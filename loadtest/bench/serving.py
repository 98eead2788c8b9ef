"""Throughput of the serving path against the raw model, lever by lever, in one run.

Raw in-process numbers come first (``loadtest.bench.raw_model``), then each served scenario on
a fresh local Ray (``serve-app demo`` with a scenario AppConfig): cold start to the
first 200, closed-loop wrk at c=1/16/64 with 1 and 8 sentences per request, and the idle
memory (PSS) of the whole process tree. Results go to ``loadtest/results/`` as JSON and
a Markdown table. Needs ``wrk`` (``apt-get install wrk``); traffic goes to 127.0.0.1 only.

    python -m loadtest.bench.serving            # full run, ~12 min on 2 cores
    python -m loadtest.bench.serving --quick    # shorter loads, for a smoke check
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadtest.harness.machine import machine_info
from loadtest.harness.processes import pss_bytes, spawned
from loadtest.traffic.payloads import SENTENCE
from loadtest.traffic.wrk import PORT, body, run_wrk, wait_first_200, wrk_script

MIXED = [
    "hi",
    SENTENCE,
    "short one",
    " ".join([SENTENCE] * 6),
    "a medium length sentence about serving models",
    " ".join([SENTENCE] * 3),
    "ok",
    "batching short sentences with long ones wastes padding",
]


@dataclass
class Scenario:
    """One served configuration: AppConfig changes plus extra environment."""

    name: str
    why: str
    model: dict[str, Any]
    http: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    mixed: bool = False


BASE_MODEL = {
    "name": "minilm",
    "version": 1,
    "batching": {"max_batch_size": 32, "batch_wait_timeout_s": 0.01},
    "max_ongoing_requests": 64,
    "max_queued_requests": 512,
    "resources": {"num_cpus": 1, "torch_threads": 1},
}


def _model(**changes: Any) -> dict[str, Any]:
    m = json.loads(json.dumps(BASE_MODEL))
    for key, value in changes.items():
        if isinstance(value, dict):
            m.setdefault(key, {}).update(value)
        else:
            m[key] = value
    return m


SCENARIOS = [
    Scenario(
        "baseline",
        "Serve defaults: Python proxy, 1 torch thread (Ray's OMP=1), "
        "batch 32 / 10 ms, access log on",
        _model(),
        http={"ingress": "proxy", "access_log": True},
    ),
    Scenario(
        "+haproxy",
        "HAProxy ingress straight to the replica",
        _model(),
        http={"ingress": "haproxy", "access_log": True},
    ),
    Scenario(
        "+no-access-log",
        "no per-request access log line",
        _model(),
        http={"ingress": "haproxy", "access_log": False},
    ),
    Scenario(
        "+2-threads",
        "torch intra-op threads = cores",
        _model(resources={"torch_threads": 2}),
        http={"ingress": "haproxy", "access_log": False},
    ),
    Scenario(
        "+wait-2ms",
        "batch_wait_timeout_s 0.002: a lone request does not wait 10 ms",
        _model(resources={"torch_threads": 2}, batching={"batch_wait_timeout_s": 0.002}),
        http={"ingress": "haproxy", "access_log": False},
    ),
    Scenario(
        "+onnx",
        "ONNX Runtime export of the same weights (version 2)",
        _model(version=2, resources={"torch_threads": 2}, batching={"batch_wait_timeout_s": 0.002}),
        http={"ingress": "haproxy", "access_log": False},
    ),
    Scenario(
        "+same-loop",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0: user code on the replica's main "
        "event loop, no cross-thread hop per request",
        _model(version=2, resources={"torch_threads": 2}, batching={"batch_wait_timeout_s": 0.002}),
        http={"ingress": "haproxy", "access_log": False},
        env={"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
    ),
    Scenario(
        "2-replicas-x-1-thread",
        "(instead of +same-loop, on +onnx) two replicas with one ONNX thread each",
        _model(
            version=2,
            num_replicas=2,
            resources={"torch_threads": 1, "num_cpus": 1},
            batching={"batch_wait_timeout_s": 0.002},
        ),
        http={"ingress": "haproxy", "access_log": False},
    ),
    Scenario(
        "mixed-lengths",
        "(on +onnx) mixed-length traffic, one forward per batch padded to its longest row",
        _model(version=2, resources={"torch_threads": 2}, batching={"batch_wait_timeout_s": 0.002}),
        http={"ingress": "haproxy", "access_log": False},
        mixed=True,
    ),
    Scenario(
        "mixed+length-aware",
        "mixed-length traffic, max_batch_tokens 1024: rows sorted by length, forwards split",
        _model(
            version=2,
            resources={"torch_threads": 2},
            batching={"batch_wait_timeout_s": 0.002, "max_batch_tokens": 1024},
        ),
        http={"ingress": "haproxy", "access_log": False},
        mixed=True,
    ),
]


def run_scenario(s: Scenario, repo_root: Path, duration_s: float, tmp: Path) -> dict[str, Any]:
    """Start ``serve-app demo`` for the scenario, measure, stop it."""
    app = {
        "repository": {"root": str(repo_root)},
        "http": {"host": "127.0.0.1", "port": PORT, **s.http},
        "models": [s.model],
    }
    cfg = tmp / f"{s.name.strip('+')}.yaml"
    cfg.write_text(yaml.safe_dump(app))
    env = {**os.environ, "SERVE_APP_LOG_TO_DRIVER": "0", **s.env}
    exe = str(Path(sys.executable).parent / "serve-app")
    cmd = [exe, "demo", "--config", str(cfg), "--serve-config", ""]
    result: dict[str, Any] = {"name": s.name, "why": s.why, "app_config": app, "env": s.env}
    t0 = time.monotonic()
    with spawned(cmd, env, tmp / f"{s.name.strip('+')}.log") as proc:
        result["cold_start_s"] = round(wait_first_200(t0 + 240) - t0, 1)
        time.sleep(2)
        loads = {}
        single = (
            [body(MIXED[i : i + 1]) for i in range(len(MIXED))] if s.mixed else [body([SENTENCE])]
        )
        eight = [body(MIXED)] if s.mixed else [body([SENTENCE] * 8)]
        for rows, payloads in ((1, single), (8, eight)):
            script = wrk_script(payloads, tmp / f"rows{rows}.lua")
            for c in (1, 16, 64):
                r = run_wrk(script, c, duration_s)
                r["sentences_per_s"] = round(r["rps"] * rows, 1)
                loads[f"rows{rows}_c{c}"] = r
                print(
                    f"  {s.name:28s} rows={rows} c={c:<3d} {r['rps']:8.1f} req/s "
                    f"p99 {r.get('p99_ms', float('nan')):7.1f} ms errors {r['errors']}",
                    flush=True,
                )
        result["loads"] = loads
        time.sleep(5)
        result["idle_pss_gib"] = round(pss_bytes(proc.pid) / 2**30, 2)
    return result


def raw_baselines(
    repo_root: Path, duration_s: float, versions: tuple[int, ...] = (1, 2)
) -> list[dict[str, Any]]:
    """Raw model numbers for torch (v1) and ONNX (v2), 2 threads, in subprocesses."""
    out = []
    for version in versions:
        line = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loadtest.bench.raw_model",
                    "--repo",
                    str(repo_root),
                    "--version",
                    str(version),
                    "--threads",
                    "2",
                    "--duration-s",
                    str(duration_s),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        out.append(json.loads(line))
        print(f"  raw {out[-1]}", flush=True)
    return out


def render_table(results: dict[str, Any]) -> str:
    """Markdown summary: each scenario against the raw torch batch-32 number."""
    raw = {r["runtime"]: r["sentences_per_s"] for r in results["raw"]}
    ref = raw["pytorch_transformers"]["32"]
    lines = [
        f"# Serving throughput ({results['machine']['date']}, {results['machine']['cpus']} CPUs, "
        f"{results['machine']['cpu_model']}, Ray {results['machine']['ray']})",
        "",
        "Raw in-process (sentences/s, 2 threads): "
        + "; ".join(f"{k}: b1 {v['1']}, b8 {v['8']}, b32 {v['32']}" for k, v in raw.items()),
        "",
        f"Ratio = served sentences/s at c=64 / raw torch batch-32 ({ref}).",
        "",
        "| scenario | c=1 req/s | c=16 req/s | c=64 req/s | c=64 p99 ms | c=64 errors "
        "| 8/req c=64 sent/s | ratio c=64 | cold start s | idle PSS GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results["scenarios"]:
        if "loads" not in s:
            lines.append(f"| {s['name']} | failed: {s.get('error', '')} |")
            continue
        L = s["loads"]
        lines.append(
            f"| {s['name']} | {L['rows1_c1']['rps']:.0f} | {L['rows1_c16']['rps']:.0f} "
            f"| {L['rows1_c64']['rps']:.0f} | {L['rows1_c64'].get('p99_ms', 0):.0f} "
            f"| {L['rows1_c64']['errors']} | {L['rows8_c64']['sentences_per_s']:.0f} "
            f"| {L['rows1_c64']['rps'] / ref:.2f} | {s['cold_start_s']} | {s['idle_pss_gib']} |"
        )
    lines += ["", "Scenarios (each adds to the one above unless it says otherwise):", ""]
    lines += [f"- **{s['name']}**: {s['why']}" for s in results["scenarios"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run raw baselines and every scenario; write JSON and Markdown results."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="4 s loads instead of 10 s")
    p.add_argument("--repo", default="model-repository")
    p.add_argument("--only", default="", help="comma-separated scenario names")
    p.add_argument("--out", default="loadtest/results/serving")
    a = p.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    from serve_app.local.demo import ensure_demo_models

    repo_root = Path(a.repo).resolve()
    ensure_demo_models(repo_root, progress=False)
    duration_s = 4.0 if a.quick else 8.0
    results: dict[str, Any] = {"machine": machine_info(), "duration_s": duration_s}
    print("raw model:", flush=True)
    results["raw"] = raw_baselines(repo_root, 3.0 if a.quick else 5.0)
    wanted = {n for n in a.only.split(",") if n}
    results["scenarios"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in SCENARIOS:
            if wanted and s.name not in wanted:
                continue
            print(f"scenario {s.name}:", flush=True)
            try:
                results["scenarios"].append(run_scenario(s, repo_root, duration_s, Path(tmp)))
            except Exception as e:  # keep going: one failed scenario is a result too
                results["scenarios"].append({"name": s.name, "why": s.why, "error": repr(e)})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    table = render_table(results)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
