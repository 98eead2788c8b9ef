"""serve_app against its peers, in one run on one machine (issue 17): raw ONNX Runtime
in-process, PyTriton (Triton's dynamic batcher) serving the same ``model.onnx``, and
``serve-app demo`` with ``configs/app.yaml`` as shipped.

For each server: cold start (spawn to the first 200), closed-loop wrk at c=1/16/64 with
one ~12-word sentence per request (the same sentence and OIP JSON body; Triton's needs
the batch dimension, shape ``[1, 1]``), the server's own CPU per request at c=64 (its
process tree, from ``/proc``) and its idle PSS after the loads.

    python -m loadtest.bench.peers                  # results/peers.json + peers.md
    python -m loadtest.bench.peers --duration-s 5   # a quick look

PyTriton runs in its own virtual environment (its numpy/protobuf pins clash with Ray's):

    python3.11 -m venv .venv-pytriton
    .venv-pytriton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.32.0 tokenizers

(``--pytriton-python`` or ``PYTRITON_PYTHON`` points elsewhere). Needs ``wrk``; traffic
goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtest.bench.serving import raw_baselines
from loadtest.harness.demo_process import REPO_ROOT, cpu_used_s, tree_cpu_s, user_environment
from loadtest.harness.machine import free_port, machine_info, machine_line
from loadtest.harness.processes import pss_bytes, spawned
from loadtest.reports.files import write_results
from loadtest.traffic.payloads import SENTENCE
from loadtest.traffic.wrk import INFER, body, run_wrk, wait_first_200, wrk_script

RESULTS = REPO_ROOT / "loadtest" / "results"
CONCURRENCY = (1, 16, 64)


def measure(
    name: str, proc: subprocess.Popen[bytes], t0: float, url: str, payload: str, duration_s: float,
    tmp: Path,
) -> dict[str, Any]:  # fmt: skip
    """Cold start, wrk at each concurrency (with the server's CPU per request) and idle
    PSS of a server started at ``t0``."""
    result: dict[str, Any] = {"name": name}
    result["cold_start_s"] = round(wait_first_200(t0 + 300, url, payload.encode()) - t0, 1)
    time.sleep(2)
    script = wrk_script([payload], tmp / f"{name}.lua")
    loads = {}
    for c in CONCURRENCY:
        run_wrk(script, c, 3, url=url)  # warm-up, not measured
        cpu_0 = tree_cpu_s(proc.pid)
        r = run_wrk(script, c, duration_s, warmup=False, url=url)
        cpu_s = cpu_used_s(cpu_0, tree_cpu_s(proc.pid))
        r["server_cores"] = round(cpu_s / duration_s, 2)
        r["server_cpu_ms_per_request"] = round(cpu_s * 1e3 / max(1.0, r["rps"] * duration_s), 2)
        loads[f"c{c}"] = r
        print(
            f"  {name:10s} c={c:<3d} {r['rps']:8.1f} req/s p50 {r.get('p50_ms', 0):7.1f} ms "
            f"p99 {r.get('p99_ms', 0):7.1f} ms errors {r['errors']} "
            f"server {r['server_cpu_ms_per_request']} ms CPU/req",
            flush=True,
        )
    result["loads"] = loads
    time.sleep(5)
    result["idle_pss_gib"] = round(pss_bytes(proc.pid) / 2**30, 2)
    return result


def run_pytriton(python: str, repo: Path, duration_s: float, tmp: Path) -> dict[str, Any]:
    """PyTriton serving ``minilm`` version 2's ``model.onnx``: 2 ONNX threads, dynamic
    batching to 32 rows with a 10 ms queue delay."""
    port = free_port()
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {**user_environment(), "LD_LIBRARY_PATH": libdir}
    cmd = [
        python, str(REPO_ROOT / "loadtest" / "pytriton_peer.py"),
        "--folder", str(repo / "minilm" / "2"), "--http-port", str(port),
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        "--threads", "2", "--max-batch", "32", "--delay-us", "10000",
    ]  # fmt: skip
    payload = json.dumps(
        {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [SENTENCE]}]}
    )
    t0 = time.monotonic()
    with spawned(cmd, env, tmp / "pytriton.log") as proc:
        url = f"http://127.0.0.1:{port}/v2/models/minilm/infer"
        result = measure("pytriton", proc, t0, url, payload, duration_s, tmp)
    result["settings"] = "2 ONNX Runtime threads, max batch 32, max queue delay 10 ms"
    return result


def run_demo(
    duration_s: float, tmp: Path, name: str = "serve_app", minilm: dict[str, int] | None = None
) -> dict[str, Any]:
    """``serve-app demo`` on ``configs/app.yaml`` as committed (models already published),
    or with MiniLM's ``num_replicas`` / ``threads`` replaced (``minilm``)."""
    config = "configs/app.yaml"
    settings = "configs/app.yaml (HAProxy ingress, 2 MiniLM replicas x 1 thread)"
    if minilm:
        app = yaml.safe_load((REPO_ROOT / config).read_text())
        app["repository"]["root"] = str(REPO_ROOT / app["repository"]["root"])
        model = next(m for m in app["models"] if m["name"] == "minilm")
        model["num_replicas"] = minilm["replicas"]
        model["resources"] = {"num_cpus": minilm["threads"], "torch_threads": minilm["threads"]}
        config = str(tmp / f"{name}.yaml")
        Path(config).write_text(yaml.safe_dump(app))
        settings = f"configs/app.yaml with {minilm['replicas']} MiniLM replica(s) x " \
            f"{minilm['threads']} thread(s)"  # fmt: skip
    env = {**user_environment(), "SERVE_APP_LOG_TO_DRIVER": "0"}
    cmd = [str(Path(sys.executable).parent / "serve-app"), "demo", "--config", config]
    t0 = time.monotonic()
    with spawned(cmd, env, tmp / f"{name}.log") as proc:
        result = measure(name, proc, t0, INFER, body([SENTENCE]), duration_s, tmp)
    result["settings"] = settings
    return result


def parse_variant(text: str) -> tuple[str, dict[str, int]]:
    """``NAME:replicas=R,threads=T`` -> (NAME, {"replicas": R, "threads": T})."""
    name, _, spec = text.partition(":")
    values = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    if set(values) != {"replicas", "threads"}:
        raise SystemExit(f"--variant {text!r}: expected NAME:replicas=R,threads=T")
    return name, values


def raw_mean(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The raw baseline measured before and after the servers (this shared machine's
    speed drifts): their mean is the baseline, both runs are kept."""
    sps = {
        b: round((before["sentences_per_s"][b] + after["sentences_per_s"][b]) / 2, 1)
        for b in before["sentences_per_s"]
    }
    return {**before, "sentences_per_s": sps, "runs": [before, after]}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """serve_app / PyTriton at each concurrency and serve_app c=64 / raw ORT batch 32."""
    ours, peer = r["serve_app"]["loads"], r["pytriton"]["loads"]
    raw_b32 = r["raw_onnxruntime"]["sentences_per_s"]["32"]
    out = {f"vs_pytriton_c{c}": round(ours[f"c{c}"]["rps"] / peer[f"c{c}"]["rps"], 2)
           for c in CONCURRENCY}  # fmt: skip
    out["c64_vs_raw_b32"] = round(ours["c64"]["rps"] / raw_b32, 2)
    return out


def markdown(r: dict[str, Any]) -> str:
    """The run as a Markdown report."""
    m, raw = r["machine"], r["raw_onnxruntime"]["sentences_per_s"]
    lines = [
        f"# serve_app vs PyTriton vs raw ONNX Runtime ({m['date']})",
        "",
        f"{machine_line(m, 'onnxruntime')} One run of `python -m "
        f"loadtest.bench.peers`: closed-loop wrk (one thread, same machine), "
        f"{r['duration_s']:.0f} s per point, one ~12-word sentence per request; the same "
        "`model.onnx` (minilm version 2) everywhere.",
        "",
        f"Raw ONNX Runtime in-process, 2 threads, forward only (sentences/s, mean of a run "
        f"before and one after the servers): batch 1 {raw['1']}, batch 8 {raw['8']}, "
        f"batch 32 {raw['32']} (batch 32 before / after: "
        + " / ".join(str(x["sentences_per_s"]["32"]) for x in r["raw_onnxruntime"]["runs"])
        + ").",
        "",
        "| server | c=1 req/s (p50 ms) | c=16 req/s (p99 ms) | c=64 req/s (p99 ms) "
        "| CPU ms/req at c=64 | cold start s | idle PSS GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("pytriton", "serve_app", *r.get("variants", {})):
        s = r[key] if key in r else r["variants"][key]
        load = s["loads"]
        lines.append(
            f"| {key} ({s['settings']}) | {load['c1']['rps']:.1f} ({load['c1']['p50_ms']:.0f}) "
            f"| {load['c16']['rps']:.1f} ({load['c16']['p99_ms']:.0f}) "
            f"| {load['c64']['rps']:.1f} ({load['c64']['p99_ms']:.0f}) "
            f"| {load['c64']['server_cpu_ms_per_request']} | {s['cold_start_s']} "
            f"| {s['idle_pss_gib']} |"
        )
    q = r["ratios"]
    lines += [
        "",
        f"serve_app / PyTriton: c=1 {q['vs_pytriton_c1']}x, c=16 {q['vs_pytriton_c16']}x, "
        f"c=64 {q['vs_pytriton_c64']}x. serve_app at c=64 / raw batch 32: "
        f"{q['c64_vs_raw_b32']}x.",
        "",
        "Errors (non-200 or socket errors) over all loads: "
        + ", ".join(
            f"{k} {sum(v['errors'] for v in r[k]['loads'].values())}"
            for k in ("pytriton", "serve_app")
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m loadtest.bench.peers``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(REPO_ROOT / "model-repository"))
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument(
        "--pytriton-python",
        default=os.environ.get("PYTRITON_PYTHON", str(REPO_ROOT / ".venv-pytriton/bin/python")),
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also serve_app with MiniLM changed: NAME:replicas=R,threads=T (repeatable)",
    )
    p.add_argument("--out", default=str(RESULTS / "peers"))
    a = p.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    repo = Path(a.repo).resolve()
    ensure_demo_models(str(repo), progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    result: dict[str, Any] = {"machine": machine_info(), "duration_s": a.duration_s}
    print("raw ONNX Runtime", flush=True)
    raw_before = raw_baselines(repo, 4.0, versions=(2,))[0]
    print("PyTriton", flush=True)
    result["pytriton"] = run_pytriton(a.pytriton_python, repo, a.duration_s, tmp)
    print("serve-app demo", flush=True)
    result["serve_app"] = run_demo(a.duration_s, tmp)
    for text in a.variant:
        name, minilm = parse_variant(text)
        print(f"serve-app demo, {name}", flush=True)
        result.setdefault("variants", {})[name] = run_demo(a.duration_s, tmp, name, minilm)
    print("raw ONNX Runtime again", flush=True)
    raw_after = raw_baselines(repo, 4.0, versions=(2,))[0]
    result["raw_onnxruntime"] = raw_mean(raw_before, raw_after)
    result["ratios"] = ratios(result)
    write_results(Path(a.out), result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
