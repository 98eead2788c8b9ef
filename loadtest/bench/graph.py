"""What the inference graph costs: latency per DeploymentHandle hop, and the demo
pipeline's throughput against its bottleneck model. One run, two parts, each on its own
fresh local Ray (a child process each, so nothing is shared but the machine):

**Part 1, hops.** Three seeded MLPs 384 -> [384] -> 384 (``chain-a``, ``chain-b``,
``chain-c``; ``num_cpus`` 0, one torch thread, batch wait ``--chain-wait-s``) are served
as models, plus the pipelines ``chain3`` (a -> b -> c) and ``chain1`` (a alone). One
FP32 [1, 384] request, closed loop at c=1 and c=16 (Python threads, one keep-alive
``http.client`` connection each, in the same process on the same cores), over:

- ``graph_chain3`` (a): POST ``/v2/models/chain3/infer``;
- ``graph_chain3_fused``: POST ``/v2/models/chain3-fused/infer``, the same chain with b
  and c fused into a's replica (``placement: fused``: one hop for the three);
- ``graph_chain3_inline``: POST ``/v2/models/chain3-inline/infer``, the fused chain with
  ``router: host``: its own replicas load a (with b and c) and run the graph in-process;
- ``graph_chain1``: POST ``/v2/models/chain1/infer`` (one node);
- ``client_chain`` (b): the same chain as three HTTP calls, the client decoding each
  answer and posting its ``output`` to the next model;
- ``direct`` (c): POST ``/v2/models/chain-a/infer``.

A *hop* is one DeploymentHandle call (submit, run, result back): ``chain3`` makes 3
(router -> a, -> b, -> c; b and c get the upstream result unresolved), ``chain1`` makes
1, ``direct`` none. The router's HTTP decode/encode takes the place of the model's, so
at c=1, with p50 latencies L, mean forward time per request C_n of node n (deltas of
``batch_stats()`` ``compute_s``/``rows`` over the ``graph_chain3`` window) and the batch
wait w (a lone request waits all of it in every node: its batch never fills)::

    hop_single             = L(chain1) - L(direct)
    hop_per_call           = (L(chain3) - L(direct) - C_b - C_c - 2 w) / 3
    hop_per_call_incl_wait = (L(chain3) - L(direct) - C_b - C_c) / 3
    hop_chained            = (L(chain3) - L(chain1) - C_b - C_c - 2 w) / 2

The target is ``hop_per_call`` <= 2 ms. Every raw number is in the JSON to recompute.

**Part 2, demo.** ``configs/app.yaml`` (minilm x2 + triage heads + ``triage``) on models
published into a temporary repository, wrk at c=64: ``/v2/models/triage/infer`` and
``/v2/models/minilm/infer`` (the bottleneck node alone) with one ~12-word ticket.

Results: ``loadtest/results/graph.json`` and ``graph.md``. Needs ``wrk``; traffic goes to
127.0.0.1 only.

    python -m loadtest.bench.graph            # full run, ~5 min on 2 cores
    python -m loadtest.bench.graph --quick    # shorter loads, for a smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.graph_apps import DIM, chain_app_config, demo_app_config, publish_chain
from loadtest.harness.machine import machine_info
from loadtest.reports.graph import CHAIN, HOP_PATHS, derive_hops, render_md
from loadtest.traffic.http_load import (
    Call,
    chained_output,
    closed_loop,
    fp32_body,
    infer_path,
    post,
    wait_ok,
)
from loadtest.traffic.wrk import PORT, body, run_wrk, wrk_script

TICKET = "I was charged twice for my subscription this month, please refund ASAP"
PART_TIMEOUT_S = 900
REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serving(app_dict: dict[str, Any], timeout_s: float = 300) -> Iterator[Any]:
    """Start a local Ray (2 CPUs, 127.0.0.1, the config's ingress), deploy ``app_dict``,
    wait until every application is RUNNING; stop Ray (bounded) on exit."""
    from serve_app.config import AppConfig
    from serve_app.deploy.serve_config import render_serve_config
    from serve_app.local import cluster as local

    app = AppConfig.model_validate(app_dict)
    config = render_serve_config(app)
    local.start_ray(num_cpus=2, http=app.http)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    try:
        local.deploy_config(config)
        local.wait_running([a["name"] for a in config["applications"]], stall_s=timeout_s)
        yield app
    finally:
        # serve.shutdown often needs more than 20 s here; a stop_ray that gives up on it
        # can end this process (see run_part), so it gets a generous bound.
        local.stop_ray(timeout_s=60)


_DRIVER_LOOP: Any = None


def on_driver_loop(make: Callable[[], Any], timeout_s: float = 60) -> Any:
    """Run the coroutine ``make()`` on one long-lived event loop of this driver.

    Handles are used from that loop only, so this works whether or not Serve runs the
    handle router in a loop of its own (``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP``, off
    under ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``)."""
    global _DRIVER_LOOP
    if _DRIVER_LOOP is None:
        import asyncio

        _DRIVER_LOOP = asyncio.new_event_loop()
        threading.Thread(target=_DRIVER_LOOP.run_forever, daemon=True).start()
    import asyncio

    return asyncio.run_coroutine_threadsafe(make(), _DRIVER_LOOP).result(timeout_s)


def node_stats() -> dict[str, dict[str, Any]]:
    """``batch_stats()`` of each chain model (one replica each)."""
    from ray import serve

    from serve_app.deploy.app_args import MODEL_DEPLOYMENT

    async def read() -> dict[str, dict[str, Any]]:
        return {
            n: await serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=n).batch_stats.remote()
            for n in CHAIN
        }

    return on_driver_loop(read)


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per node: batches, rows, mean rows per batch, compute per batch and per row (ms)."""
    out = {}
    for n in CHAIN:
        batches = after[n]["batches"] - before[n]["batches"]
        rows = after[n]["rows"] - before[n]["rows"]
        compute_s = after[n]["compute_s"] - before[n]["compute_s"]
        out[n] = {
            "batches": batches,
            "rows": rows,
            "compute_s": round(compute_s, 4),
            "rows_per_batch": round(rows / batches, 2) if batches else None,
            "compute_per_batch_ms": round(compute_s / batches * 1e3, 4) if batches else None,
            "compute_per_row_ms": round(compute_s / rows * 1e3, 4) if rows else None,
        }
    return out


def bare_handle_ms(calls: int) -> dict[str, float]:
    """p50 of ``calls`` back-to-back ``metadata`` calls (no batcher, no forward) from this
    driver to chain-a, per transport: the hop alone, as a cross-check."""
    from ray import serve

    from serve_app.deploy.app_args import MODEL_DEPLOYMENT

    async def measure() -> dict[str, float]:
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=CHAIN[0])
        out = {}
        grpc = handle.options(_by_reference=False)
        for label, h in (("by_reference", handle), ("grpc", grpc)):
            lat = []
            for i in range(calls + calls // 10):  # the first tenth warms up
                t0 = time.perf_counter()
                await h.metadata.remote()
                if i >= calls // 10:
                    lat.append((time.perf_counter() - t0) * 1e3)
            out[f"{label}_p50_ms"] = round(float(np.percentile(lat, 50)), 3)
        return out

    return on_driver_loop(measure, timeout_s=300)


# --- the two parts -----------------------------------------------------------------


def part_hops(a: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> None:
    """Part 1: serve the chain, measure every path at c=1 and c=16, ``save`` the result."""
    rng = np.random.default_rng(0)
    request = fp32_body(rng.standard_normal(DIM).astype(np.float32).tolist(), [1, DIM])
    calls: dict[str, Call] = {
        "graph_chain3": lambda conn: post(conn, infer_path("chain3"), request) is not None,
        "graph_chain3_fused": lambda conn: (
            post(conn, infer_path("chain3-fused"), request) is not None
        ),
        "graph_chain3_inline": lambda conn: (
            post(conn, infer_path("chain3-inline"), request) is not None
        ),
        "graph_chain1": lambda conn: post(conn, infer_path("chain1"), request) is not None,
        "client_chain": lambda conn: chained_output(conn, request, CHAIN, decode=False) is not None,
        "direct": lambda conn: post(conn, infer_path(CHAIN[0]), request) is not None,
    }
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as root:
        publish_chain(Path(root))
        app = chain_app_config(Path(root), a.chain_wait_s)
        with serving(app):
            graph_out = json.loads(wait_ok(infer_path("chain3"), request))["outputs"][0]
            fused_out = json.loads(wait_ok(infer_path("chain3-fused"), request))["outputs"][0]
            wait_ok(infer_path("chain3-inline"), request)
            wait_ok(infer_path("chain1"), request)
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
            client_out = chained_output(conn, request, CHAIN)
            conn.close()
            # Same numbers both ways, or the comparison means nothing.
            diff = float(np.max(np.abs(np.subtract(graph_out["data"], client_out["data"]))))
            fused_diff = float(np.max(np.abs(np.subtract(fused_out["data"], client_out["data"]))))
            points = {}
            for c in (1, 16):
                for path in HOP_PATHS:
                    summary, before, after = closed_loop(
                        calls[path], c, a.warmup_s, a.duration_s, node_stats
                    )
                    summary["nodes"] = stats_delta(before, after)
                    points[f"{path}_c{c}"] = summary
                    print(
                        f"  {path:14s} c={c:<3d} {summary['rps']:8.1f} req/s "
                        f"p50 {summary['p50_ms']} ms p99 {summary['p99_ms']} ms "
                        f"errors {summary['errors']}",
                        flush=True,
                    )
            bare = bare_handle_ms(100 if a.quick else 500)
            save(
                {
                    "app_config": app,
                    "bare_handle_call": bare,
                    "graph_vs_client_chain_max_abs_diff": diff,
                    "fused_vs_client_chain_max_abs_diff": fused_diff,
                    "warmup_s": a.warmup_s,
                    "duration_s": a.duration_s,
                    "points": points,
                    "derived": derive_hops(points, a.chain_wait_s),
                }
            )


def routed_script(payloads: list[str], route: str, path: Path) -> Path:
    """``wrk_script`` aimed at ``route`` (``run_wrk`` always targets minilm's URL; the
    script's ``wrk.path`` replaces the URL's path)."""
    wrk_script(payloads, path)
    path.write_text(f'wrk.path = "{route}"\n' + path.read_text())
    return path


def part_demo(a: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> None:
    """Part 2: the demo config, wrk at c=64 on triage and on minilm alone; ``save`` it."""
    from serve_app.local.demo import ensure_demo_models

    payload = body([TICKET])
    with tempfile.TemporaryDirectory(prefix="bench-graph-demo-") as root:
        ensure_demo_models(root, progress=False)
        app = demo_app_config(Path(root))
        with serving(app):
            sample = json.loads(wait_ok(infer_path("triage"), payload.encode()))
            wait_ok(infer_path("minilm"), payload.encode())
            loads = {}
            for target in ("triage", "minilm"):
                script = routed_script([payload], infer_path(target), Path(root) / "load.lua")
                r = run_wrk(script, 64, a.demo_duration_s)
                loads[f"{target}_c64"] = r
                print(
                    f"  {target:8s} c=64 {r['rps']:8.1f} req/s p50 {r.get('p50_ms')} ms "
                    f"p99 {r.get('p99_ms')} ms errors {r['errors']}",
                    flush=True,
                )
            save(
                {
                    "app_config": app,
                    "ticket": TICKET,
                    "duration_s": a.demo_duration_s,
                    "sample_outputs": {
                        o["name"]: o.get("data")
                        for o in sample["outputs"]
                        if o["name"] != "consensus_probabilities"
                    },
                    "sample_parameters": sample.get("parameters"),
                    "loads": loads,
                    "triage_over_minilm_rps": round(
                        loads["triage_c64"]["rps"] / loads["minilm_c64"]["rps"], 3
                    ),
                }
            )


PARTS = {"hops": part_hops, "demo": part_demo}


# --- orchestration and report ------------------------------------------------------


def code_fingerprint() -> str:
    """sha256 of every ``serve_app/**/*.py`` (the tree is edited concurrently; no git)."""
    h = hashlib.sha256()
    for f in sorted((REPO_ROOT / "serve_app").rglob("*.py")):
        h.update(f.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def run_part(part: str, a: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run one part in a child process (its own Ray); returns its result or the error.

    The child saves its result before stopping Ray: ``local.stop_ray`` calls
    ``ray.shutdown`` while a timed-out ``serve.shutdown`` thread still runs, and that
    thread's next Ray call can make the core worker end the process (exit status 1)."""
    cmd = [sys.executable, "-m", "loadtest.bench.graph", "--part", part, "--part-out", str(out)]
    cmd += ["--quick"] if a.quick else []
    cmd += ["--chain-wait-s", str(a.chain_wait_s)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT)
    try:
        rc = proc.wait(timeout=PART_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the child's handler stops its Ray (bounded: stop_ray 60 s)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return {"error": f"timed out after {PART_TIMEOUT_S} s"}
    if not out.exists():
        return {"error": f"exit status {rc}"}
    result = json.loads(out.read_text())
    if rc != 0:
        result["child_exit_status"] = rc
    return result


def main() -> None:
    """Run both parts (or one, as a child), then write JSON and Markdown results."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="4 s / 5 s loads instead of 15 s")
    p.add_argument("--chain-wait-s", type=float, default=0.001, help="chain batch wait")
    p.add_argument("--out", default="loadtest/results/graph")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--part-out", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.duration_s = 4.0 if a.quick else 15.0
    a.warmup_s = 1.0 if a.quick else 3.0
    a.demo_duration_s = 5.0 if a.quick else 15.0
    if a.part:
        from serve_app.local import cluster as local

        local.prepare_environment({"SERVE_APP_LOG_TO_DRIVER": "0"})  # before Ray is imported

        def save(result: dict[str, Any]) -> None:
            Path(a.part_out).write_text(json.dumps(result, indent=2))

        PARTS[a.part](a, save)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results: dict[str, Any] = {"quick": a.quick, "started": started}
    results["serve_app_sha256_start"] = code_fingerprint()
    results["loadavg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for part in PARTS:
            print(f"part {part}:", flush=True)
            results[part] = run_part(part, a, Path(tmp) / f"{part}.json")
    results["serve_app_sha256_end"] = code_fingerprint()
    results["loadavg_end"] = os.getloadavg()
    results["machine"] = machine_info()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    table = render_md(results)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
