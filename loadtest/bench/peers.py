"""serve_app against its peers, like with like, in one run on one machine (issues 17, 29):
raw ONNX Runtime in-process, PyTriton (Triton's dynamic batcher) serving ``minilm``'s
``model.onnx``, and serve_app serving that one model with its committed settings (a
one-model config derived from ``configs/app.yaml``: the ``minilm`` entry as it is, no
other model, pipeline or jobs). ``--demo`` adds the whole demo (``configs/app.yaml``,
every model and pipeline), reported on its own line, never in the ratios.

For each server: cold start (spawn to the first 200), closed-loop wrk at c=1/16/64 with
one ~12-word sentence per request (the same sentence and OIP JSON body; Triton's needs
the batch dimension, shape ``[1, 1]``), the server's own CPU per request at c=64 (its
process tree, from ``/proc``), then idle: CPU and PSS of the tree over ``--idle-s`` with
nothing in flight, by group of processes.

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
import copy
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
from loadtest.harness.processes import spawned
from loadtest.observe.idle import idle_profile
from loadtest.reports.files import write_results
from loadtest.traffic.payloads import SENTENCE
from loadtest.traffic.wrk import INFER, body, run_wrk, wait_first_200, wrk_script

RESULTS = REPO_ROOT / "loadtest" / "results"
CONCURRENCY = (1, 16, 64)
APP_CONFIG = REPO_ROOT / "configs" / "app.yaml"
MODEL = "minilm"


def measure(
    name: str, proc: subprocess.Popen[bytes], t0: float, url: str, payload: str, duration_s: float,
    idle_s: float, tmp: Path,
) -> dict[str, Any]:  # fmt: skip
    """Cold start, wrk at each concurrency (with the server's CPU per request), then the
    idle tree (CPU and PSS by group over ``idle_s``) of a server started at ``t0``."""
    result: dict[str, Any] = {"name": name}
    result["cold_start_s"] = round(wait_first_200(t0 + 300, url, payload.encode()) - t0, 1)
    time.sleep(2)
    script = wrk_script([payload], tmp / f"{name}.lua")
    loads = {}
    for c in CONCURRENCY if duration_s > 0 else ():
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
    time.sleep(5)  # let the last load's stragglers and metric pushes settle
    idle = idle_profile(proc.pid, idle_s)
    result["idle"] = idle
    result["idle_pss_gib"] = idle["pss_gib"]
    result["idle_cores"] = idle["cores"]
    print(f"  {name:10s} idle {idle['cores']} cores, {idle['pss_gib']} GiB PSS", flush=True)
    return result


def run_pytriton(
    python: str, repo: Path, duration_s: float, idle_s: float, tmp: Path,
    threads: int = 2, instances: int = 1, name: str = "pytriton",
) -> dict[str, Any]:  # fmt: skip
    """PyTriton serving ``minilm`` version 2's ``model.onnx``: ``instances`` model
    instances of ``threads`` ONNX threads each behind one dynamic batcher (32 rows,
    10 ms queue delay)."""
    port = free_port()
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {**user_environment(), "LD_LIBRARY_PATH": libdir}
    cmd = [
        python, str(REPO_ROOT / "loadtest" / "bench" / "pytriton_peer.py"),
        "--folder", str(repo / MODEL / "2"), "--http-port", str(port),
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        "--threads", str(threads), "--instances", str(instances),
        "--max-batch", "32", "--delay-us", "10000",
    ]  # fmt: skip
    payload = json.dumps(
        {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": [SENTENCE]}]}
    )
    t0 = time.monotonic()
    with spawned(cmd, env, tmp / f"{name}.log") as proc:
        url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        result = measure(name, proc, t0, url, payload, duration_s, idle_s, tmp)
    per = f"{instances} instances x " if instances > 1 else ""
    result["settings"] = f"{per}{threads} ONNX Runtime threads, max batch 32, max queue delay 10 ms"
    return result


def parse_layout(text: str) -> tuple[int, int]:
    """``THREADSxINSTANCES`` (e.g. ``1x2``) -> (threads, instances)."""
    threads, _, instances = text.partition("x")
    try:
        return int(threads), int(instances or 1)
    except ValueError:
        raise SystemExit(f"--pytriton-layout {text!r}: expected THREADSxINSTANCES") from None


def one_model_config(app: dict[str, Any]) -> dict[str, Any]:
    """``app`` (an AppConfig dict) serving ``minilm`` alone, as committed: the other
    models, the pipelines and the jobs removed."""
    one = copy.deepcopy(app)
    one["models"] = [m for m in app["models"] if m["name"] == MODEL]
    one.pop("pipelines", None)
    one.pop("jobs", None)
    return one


BATCHING_KNOBS = (
    "batch_wait_timeout_s", "max_batch_size", "max_concurrent_batches", "split_min_rows",
)  # fmt: skip
"""``batching`` keys a ``--variant`` may set."""


def apply_variant(app: dict[str, Any], minilm: dict[str, float]) -> dict[str, Any]:
    """``app`` with ``minilm``'s replicas, threads (model threads; CPUs too unless
    ``cpus`` is given) and batching knobs replaced."""
    app = copy.deepcopy(app)
    model = next(m for m in app["models"] if m["name"] == MODEL)
    if "replicas" in minilm:
        model["num_replicas"] = int(minilm["replicas"])
    if "threads" in minilm or "cpus" in minilm:
        threads = int(minilm.get("threads", model["resources"]["torch_threads"]))
        model["resources"] = {"num_cpus": minilm.get("cpus", threads), "torch_threads": threads}
    for knob in set(BATCHING_KNOBS) & set(minilm):
        value = minilm[knob]
        if knob == "split_min_rows":  # 0: never cut a batch
            model["batching"][knob] = int(value) or None
        elif knob == "batch_wait_timeout_s":
            model["batching"][knob] = value
        else:
            model["batching"][knob] = int(value)
    return app


def run_serve_app(
    name: str, app: dict[str, Any], settings: str, duration_s: float, idle_s: float, tmp: Path,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``serve-app demo --config`` on the AppConfig ``app`` (models already published),
    with ``extra_env`` added to the user's environment."""
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump(app))
    env = {**user_environment(), "SERVE_APP_LOG_TO_DRIVER": "0", **(extra_env or {})}
    cmd = [str(Path(sys.executable).parent / "serve-app"), "demo", "--config", str(config)]
    t0 = time.monotonic()
    with spawned(cmd, env, tmp / f"{name}.log") as proc:
        result = measure(name, proc, t0, INFER, body([SENTENCE]), duration_s, idle_s, tmp)
    result["settings"] = settings
    return result


def parse_variant(text: str) -> tuple[str, dict[str, float]]:
    """``NAME:key=value,...`` -> (NAME, {key: value}); keys: replicas, threads, cpus,
    and the ``BATCHING_KNOBS`` (``split_min_rows=0``: never cut a batch)."""
    allowed = {"replicas", "threads", "cpus", *BATCHING_KNOBS}
    name, _, spec = text.partition(":")
    values = {k: float(v) for k, v in (kv.split("=") for kv in spec.split(",") if kv)}
    if not name or not values or not set(values) <= allowed:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value,... with keys {allowed}")
    return name, values


def raw_mean(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The raw baseline measured before and after the servers (this shared machine's
    speed drifts): their mean is the baseline, both runs are kept."""
    sps = {
        b: round((before["sentences_per_s"][b] + after["sentences_per_s"][b]) / 2, 1)
        for b in before["sentences_per_s"]
    }
    return {**before, "sentences_per_s": sps, "runs": [before, after]}


def ratios(ours: dict[str, Any], peer: dict[str, Any], raw_b32: float) -> dict[str, float]:
    """serve_app / PyTriton (throughput, p99, cold start, idle PSS) and serve_app's
    c=64 / raw ORT batch 32."""
    a, b = ours["loads"], peer["loads"]
    out = {f"vs_pytriton_c{c}": round(a[f"c{c}"]["rps"] / b[f"c{c}"]["rps"], 2)
           for c in CONCURRENCY}  # fmt: skip
    for c in (16, 64):
        out[f"p99_vs_pytriton_c{c}"] = round(a[f"c{c}"]["p99_ms"] / b[f"c{c}"]["p99_ms"], 2)
    out["c64_vs_raw_b32"] = round(a["c64"]["rps"] / raw_b32, 2)
    out["cold_start_vs_pytriton"] = round(ours["cold_start_s"] / peer["cold_start_s"], 2)
    out["idle_pss_vs_pytriton"] = round(ours["idle_pss_gib"] / peer["idle_pss_gib"], 2)
    return out


def server_row(key: str, s: dict[str, Any]) -> str:
    load = s["loads"]
    return (
        f"| {key} ({s['settings']}) | {load['c1']['rps']:.1f} ({load['c1']['p50_ms']:.0f}) "
        f"| {load['c16']['rps']:.1f} ({load['c16']['p99_ms']:.0f}) "
        f"| {load['c64']['rps']:.1f} ({load['c64']['p99_ms']:.0f}) "
        f"| {load['c64']['server_cpu_ms_per_request']} | {s['cold_start_s']} "
        f"| {s['idle_pss_gib']} | {s['idle_cores']} |"
    )


def idle_table(key: str, s: dict[str, Any]) -> list[str]:
    lines = [
        f"Idle {key}, over {s['idle']['window_s']:.0f} s ({s['idle']['processes']} processes):",
        "",
        "| group | processes | CPU cores | PSS MiB |",
        "|---|---:|---:|---:|",
    ]
    for group, g in s["idle"]["by_group"].items():
        lines.append(f"| {group} | {g['processes']} | {g['cores']} | {g['pss_mib']} |")
    return [*lines, ""]


def markdown(r: dict[str, Any]) -> str:
    """The run as a Markdown report."""
    m, raw = r["machine"], r["raw_onnxruntime"]["sentences_per_s"]
    servers = ["pytriton", "serve_app", *r.get("variants", {}), *(["demo"] if "demo" in r else [])]

    def get(key: str) -> dict[str, Any]:
        return dict(r[key] if key in r else r["variants"][key])

    lines = [
        f"# serve_app vs PyTriton vs raw ONNX Runtime, one model ({m['date']})",
        "",
        f"{machine_line(m, 'onnxruntime')} One run of `python -m loadtest.bench.peers`: "
        f"closed-loop wrk (one thread, same machine), {r['duration_s']:.0f} s per point, one "
        "~12-word sentence per request; the same `model.onnx` (minilm version 2) "
        "everywhere. serve_app serves minilm alone with its committed settings; `demo` is "
        "the whole demo (every model and pipeline), not in the ratios.",
        "",
        f"Raw ONNX Runtime in-process, 2 threads, forward only (sentences/s, mean of a run "
        f"before and one after the servers): batch 1 {raw['1']}, batch 8 {raw['8']}, "
        f"batch 32 {raw['32']} (batch 32 before / after: "
        + " / ".join(str(x["sentences_per_s"]["32"]) for x in r["raw_onnxruntime"]["runs"])
        + ").",
        "",
        "| server | c=1 req/s (p50 ms) | c=16 req/s (p99 ms) | c=64 req/s (p99 ms) "
        "| CPU ms/req at c=64 | cold start s | idle PSS GiB | idle CPU cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(server_row(k, get(k)) for k in servers),
        "",
    ]
    for key in ("serve_app", *r.get("variants", {})):
        q = r["ratios"][key]
        lines.append(
            f"{key} / PyTriton: c=1 {q['vs_pytriton_c1']}x, c=16 {q['vs_pytriton_c16']}x "
            f"(p99 {q['p99_vs_pytriton_c16']}x), c=64 {q['vs_pytriton_c64']}x (p99 "
            f"{q['p99_vs_pytriton_c64']}x); c=64 / raw batch 32: {q['c64_vs_raw_b32']}x; "
            f"cold start {q['cold_start_vs_pytriton']}x; idle PSS {q['idle_pss_vs_pytriton']}x."
        )
    lines.append("")
    for key in ("pytriton", "serve_app"):
        lines += idle_table(key, get(key))
    lines.append(
        "Errors (non-200 or socket errors) over all loads: "
        + ", ".join(f"{k} {sum(v['errors'] for v in get(k)['loads'].values())}" for k in servers)
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m loadtest.bench.peers``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=str(REPO_ROOT / "model-repository"))
    p.add_argument(
        "--duration-s", type=float, default=15.0, help="per load; 0: cold start and idle only"
    )
    p.add_argument("--idle-s", type=float, default=20.0, help="idle window after the loads")
    p.add_argument(
        "--pytriton-python",
        default=os.environ.get("PYTRITON_PYTHON", str(REPO_ROOT / ".venv-pytriton/bin/python")),
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also the one-model config with minilm changed: NAME:key=value,... (keys: "
        f"replicas, threads, cpus, {', '.join(BATCHING_KNOBS)}; split_min_rows=0 never cuts)",
    )
    p.add_argument("--demo", action="store_true", help="also the whole demo, reported apart")
    p.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for every serve_app run (e.g. a Ray setting to try)",
    )
    p.add_argument("--no-pytriton", action="store_true", help="serve_app only (no ratios)")
    p.add_argument(
        "--pytriton-layout",
        action="append",
        default=[],
        help="THREADSxINSTANCES of PyTriton (repeat; default 2x1); the first is the ratios' "
        "baseline, the others are reported as variants",
    )
    p.add_argument("--out", default=str(RESULTS / "peers"))
    a = p.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    repo = Path(a.repo).resolve()
    ensure_demo_models(str(repo), progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    app = yaml.safe_load(APP_CONFIG.read_text())
    app["repository"]["root"] = str(repo)
    one = one_model_config(app)
    serve_env = dict(kv.split("=", 1) for kv in a.serve_env)
    result: dict[str, Any] = {
        "machine": machine_info(), "duration_s": a.duration_s, "idle_s": a.idle_s,
        "serve_env": serve_env,
    }  # fmt: skip
    ratios_wanted = a.duration_s > 0 and not a.no_pytriton
    if ratios_wanted:
        print("raw ONNX Runtime", flush=True)
        raw_before = raw_baselines(repo, 4.0, versions=(2,))[0]
    for i, layout in enumerate([] if a.no_pytriton else a.pytriton_layout or ["2x1"]):
        threads, instances = parse_layout(layout)
        name = "pytriton" if i == 0 else f"pytriton-{layout}"
        print(f"PyTriton {layout}", flush=True)
        run = run_pytriton(
            a.pytriton_python, repo, a.duration_s, a.idle_s, tmp, threads, instances, name
        )
        if i == 0:
            result["pytriton"] = run
        else:
            result.setdefault("variants", {})[name] = run
    runs = [("serve_app", one, "minilm alone, configs/app.yaml's settings", result)]
    for text in a.variant:
        name, minilm = parse_variant(text)
        settings = "minilm alone, " + ", ".join(f"{k}={v:g}" for k, v in minilm.items())
        runs.append((name, apply_variant(one, minilm), settings, result.setdefault("variants", {})))
    if a.demo:
        runs.append(("demo", app, "configs/app.yaml: every model and pipeline", result))
    for name, config, settings, into in runs:
        print(f"serve_app: {name} ({settings})", flush=True)
        into[name] = run_serve_app(name, config, settings, a.duration_s, a.idle_s, tmp, serve_env)
    if not ratios_wanted:  # a quick look: no ratios, nothing written
        print(json.dumps(result, indent=1))
        return 0
    print("raw ONNX Runtime again", flush=True)
    raw_after = raw_baselines(repo, 4.0, versions=(2,))[0]
    result["raw_onnxruntime"] = raw_mean(raw_before, raw_after)
    raw_b32 = result["raw_onnxruntime"]["sentences_per_s"]["32"]
    result["ratios"] = {
        key: ratios(result[key] if key in result else result["variants"][key],
                    result["pytriton"], raw_b32)
        for key in ("serve_app", *result.get("variants", {}))
    }  # fmt: skip
    write_results(Path(a.out), result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
