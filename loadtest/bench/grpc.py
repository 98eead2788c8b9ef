"""OIP over gRPC vs HTTP on ``serve-app demo`` (configs/app.yaml with ``grpc.enabled``).

One demo, one sentence per request, closed loops at c=1/16/64:
- ``http``: wrk posting the OIP JSON body to ``/v2/models/minilm/infer`` (as
  loadtest/bench/serving.py does), through HAProxy to the model replica;
- ``grpc``: ``inference.GRPCInferenceService/ModelInfer`` without metadata, as a stock
  tritonclient sends it: HAProxy's default gRPC backend is the server application, which
  forwards to the model through a DeploymentHandle (one more hop);
- ``grpc+app``: the same call with the metadata ``application: minilm``, straight to the
  model replica.

The gRPC client is a grpc.aio process (one HTTP/2 channel, ``c`` concurrent calls) that
sends a pre-serialized ``ModelInferRequest`` (what tritonclient puts on the wire:
BYTES in ``raw_input_contents``) and does not decode answers. Client and server share
the 2 cores, so the client's CPU seconds and the demo's are recorded for every run.

Usage: ``python -m loadtest.bench.grpc [--quick]`` (needs ``wrk``; 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.serving import SENTENCE
from loadtest.harness.demo_process import REPO_ROOT, cpu_used_s, start_demo, stop_demo, tree_cpu_s
from loadtest.harness.machine import free_port, machine_info
from loadtest.reports.files import write_results
from loadtest.traffic.wrk import body, run_wrk, wrk_script

MODEL = "minilm"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
CONCURRENCY = (1, 16, 64)


def infer_request(text: str) -> bytes:
    """The serialized ``ModelInferRequest`` tritonclient sends for one text."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2 as pb

    inp = grpcclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.extend([inp._get_tensor()])
    request.raw_input_contents.extend([inp._get_content()])
    return bytes(request.SerializeToString())


async def closed_loop(
    target: str, payload: bytes, concurrency: int, duration_s: float, application: str | None
) -> dict[str, Any]:
    """``concurrency`` callers, each sending the next call when the last one answered."""
    import grpc

    metadata = (("application", application),) if application else None
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out: no client-side (de)coding

        async def caller(stop_s: float, record: bool) -> None:
            while time.perf_counter() < stop_s:
                start = time.perf_counter()
                try:
                    await call(payload, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError as e:
                    if record:
                        errors[e.code().name] = errors.get(e.code().name, 0) + 1
                    continue
                if record:
                    latencies.append(time.perf_counter() - start)

        warm = time.perf_counter() + 2.0
        await asyncio.gather(*(caller(warm, False) for _ in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(caller(start + duration_s, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": sum(errors.values()),
        "error_codes": errors,
    }


def measured(pid: int, run: Any) -> dict[str, Any]:
    """``run()`` with the CPU seconds the demo's processes and the client children used."""
    before_tree = tree_cpu_s(pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = dict(run())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_tree = tree_cpu_s(pid)
    server = cpu_used_s(before_tree, after_tree)
    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["server_cpu_s"] = round(server, 2)
    result["client_cpu_s"] = round(client, 2)  # includes the client's 2 s warm-up
    return result


def grpc_run(port: int, c: int, duration_s: float, application: str | None) -> dict[str, Any]:
    """One gRPC closed loop in a child process (its CPU is counted apart)."""
    cmd = [sys.executable, "-m", "loadtest.bench.grpc", "--client", f"127.0.0.1:{port}"]
    cmd += ["-c", str(c), "--duration", str(duration_s)]
    if application:
        cmd += ["--application", application]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def check_answers(http_port: int, grpc_port: int) -> float:
    """Both protocols answer the same embedding; returns the largest difference."""
    import httpx
    import tritonclient.grpc as grpcclient

    r = httpx.post(
        f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer", content=body([SENTENCE])
    )
    r.raise_for_status()
    http = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
        inp = grpcclient.InferInput("text", [1], "BYTES")
        inp.set_data_from_numpy(np.array([SENTENCE.encode()], dtype=object))
        grpc_out = client.infer(MODEL, [inp]).as_numpy("embedding")
    return float(np.abs(grpc_out.reshape(-1) - http).max())


def demo_config(http_port: int, grpc_port: int) -> dict[str, Any]:
    """configs/app.yaml with gRPC on, on free ports."""
    import yaml

    app = yaml.safe_load((REPO_ROOT / "configs/app.yaml").read_text())
    app["repository"]["root"] = str(REPO_ROOT / "model-repository")
    app["http"] |= {"port": http_port, "admin_ports": [free_port(), free_port()]}
    app["grpc"] = {"enabled": True, "port": grpc_port}
    return dict(app)


def bench(duration_s: float) -> dict[str, Any]:
    """Start the demo, run every protocol at every concurrency, stop it."""
    http_port, grpc_port = free_port(), free_port()
    config = demo_config(http_port, grpc_port)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "duration_s": duration_s,
        "payload": {"text": SENTENCE, "rows": 1},
        "app_config": "configs/app.yaml with grpc.enabled (ports free ones)",
        "loads": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        demo = start_demo(config, Path(tmp))
        try:
            results["max_abs_diff_grpc_vs_http"] = check_answers(http_port, grpc_port)
            script = wrk_script([body([SENTENCE])], Path(tmp) / "one.lua")
            url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"
            runs = {
                "http": lambda c: run_wrk(script, c, duration_s, url=url),
                "grpc": lambda c: grpc_run(grpc_port, c, duration_s, None),
                "grpc+app": lambda c: grpc_run(grpc_port, c, duration_s, MODEL),
            }
            for c in CONCURRENCY:
                for name, run in runs.items():
                    r = measured(demo.proc.pid, lambda run=run, c=c: run(c))
                    results["loads"][f"{name}_c{c}"] = r
                    print(
                        f"{name:9s} c={c:<3d} {r['rps']:8.1f} req/s p99 "
                        f"{r.get('p99_ms', float('nan')):7.1f} ms errors {r['errors']} "
                        f"cpu server {r['server_cpu_s']:.1f} s client {r['client_cpu_s']:.1f} s",
                        flush=True,
                    )
                    time.sleep(1)
        finally:
            results["leftover_processes"] = stop_demo(demo)
    return results


def render(results: dict[str, Any]) -> str:
    """Markdown table of the results."""
    m = results["machine"]
    lines = [
        "# OIP over gRPC vs HTTP (loadtest/bench/grpc.py)",
        "",
        f"{m['date']}, {m['cpus']} CPUs ({m.get('cpu_model')}), Ray {m['ray']}; "
        f"`serve-app demo` of configs/app.yaml with gRPC on (HAProxy ingress), one sentence "
        f"per request, {results['duration_s']:.0f} s per run after a 2 s warm-up; clients "
        "(wrk for HTTP, a grpc.aio process for gRPC) on the same 2 cores, their CPU counted "
        "with the warm-up. Largest |gRPC - HTTP| embedding difference: "
        f"{results['max_abs_diff_grpc_vs_http']:.2e}.",
        "",
        "| protocol | c | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| client CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results["loads"].items():
        name, c = key.rsplit("_c", 1)
        n = max(r["rps"] * results["duration_s"], 1.0)
        lines.append(
            f"| {name} | {c} | {r['rps']:.1f} | {r.get('p50_ms', float('nan')):.1f} | "
            f"{r.get('p99_ms', float('nan')):.1f} | {r['errors']} | "
            f"{1e3 * r['server_cpu_s'] / n:.1f} | {1e3 * r['client_cpu_s'] / n:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Benchmark (default) or, with ``--client``, one gRPC closed loop (JSON on stdout)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 s runs instead of 10 s")
    p.add_argument("--out", default="loadtest/results/grpc")
    p.add_argument("--client", metavar="HOST:PORT", help="run one gRPC closed loop")
    p.add_argument("-c", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--application", default=None)
    a = p.parse_args()
    if a.client:
        payload = infer_request(SENTENCE)
        r = asyncio.run(closed_loop(a.client, payload, a.c, a.duration, a.application))
        print(json.dumps(r))
        return
    results = bench(4.0 if a.quick else 10.0)
    write_results(Path(a.out), results, render(results))


if __name__ == "__main__":
    main()
