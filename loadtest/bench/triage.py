"""The demo pipeline against its bottleneck model, heads fused or separate, in one run on
one local Ray (issue 25's goals).

``configs/app.yaml`` served from a temporary repository (``triage``: the heads fused into
minilm's replicas, a router of its own), plus two twins: ``triage-inline``, the same
graph with ``router: host`` (its own two replicas load MiniLM and the heads and run the
graph in-process: one HTTP hop), ``triage-same-loop``, whose router's handles route on
the replica's own event loop (``handle_loop: same``), and ``triage-separate``, every
head on its own
deployment (``placement: separate``, coalesced calls; the heads then served standalone,
idle while the others are loaded). The requests cycle through a ticket mix from the
demo's data set in which a quarter take the second-opinion branch (each ticket's branch
is read from ``triage`` before the loads; the share is reported). wrk at c=64 and c=1 on
each of ``TARGETS`` (``minilm`` alone is the bottleneck node), in that order each time,
``--rounds`` times.

Results: ``loadtest/results/triage-fused.{json,md}``. Needs ``wrk``; 127.0.0.1 only.

    python -m loadtest.bench.triage            # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench.graph import routed_script, serving
from loadtest.bench.graph_apps import demo_app_config, separate_heads, with_host_router
from loadtest.harness.demo_process import REPO_ROOT
from loadtest.harness.machine import machine_info, machine_line
from loadtest.reports.files import write_results
from loadtest.traffic.http_load import infer_path, wait_ok
from loadtest.traffic.wrk import body, run_wrk

TARGETS = ("triage", "triage-same-loop", "triage-inline", "triage-separate", "minilm")
UNSURE_SHARE = 0.25
"""Share of the mix's tickets that take the second-opinion branch."""


def demo_apps(root: Path) -> dict[str, Any]:
    """The demo's config on ``root`` with the two twins of ``triage``."""
    app = separate_heads(demo_app_config(root), name="triage-separate")
    triage = next(p for p in app["pipelines"] if p["name"] == "triage")
    app["pipelines"].append({**triage, "name": "triage-same-loop", "handle_loop": "same"})
    return with_host_router(app, "triage", "triage-inline")


def ticket_mix(size: int) -> tuple[list[str], dict[str, Any]]:
    """Request bodies of ``size`` tickets, ``UNSURE_SHARE`` of them taking the second
    opinion (as ``triage`` routes them now), and how the mix was drawn."""
    from serve_app.local.demo_heads import load_tickets

    unsure: list[str] = []
    sure: list[str] = []
    for ticket in load_tickets():
        payload = body([ticket["text"]])
        answer = json.loads(wait_ok(infer_path("triage"), payload.encode()))
        branch = next(o["data"][0] for o in answer["outputs"] if o["name"] == "route")
        (unsure if branch == "second-opinion" else sure).append(payload)
        n_unsure = round(size * UNSURE_SHARE)
        if len(unsure) >= n_unsure and len(sure) >= size - n_unsure:
            break
    n_unsure = min(len(unsure), round(size * UNSURE_SHARE))
    mix = unsure[:n_unsure] + sure[: size - n_unsure]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(mix))
    facts = {"tickets": len(mix), "second_opinion": n_unsure, "share": n_unsure / len(mix)}
    return [mix[i] for i in order], facts


def main(argv: list[str] | None = None) -> None:
    """Serve the demo with the plain twin, load each route, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=15.0, help="each c=64 load")
    parser.add_argument("--rounds", type=int, default=2, help="loads per route, interleaved")
    parser.add_argument(
        "--mix", type=int, default=28, help="tickets in the mix (the data set has 7 unsure)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "loadtest/results/triage-fused")
    a = parser.parse_args(argv)
    from serve_app.local import cluster as local
    from serve_app.local.demo import ensure_demo_models

    local.prepare_environment({"SERVE_APP_LOG_TO_DRIVER": "0"})
    loads: dict[str, list[dict[str, Any]]] = {f"{t}_c{c}": [] for t in TARGETS for c in (64, 1)}
    with tempfile.TemporaryDirectory(prefix="bench-triage-") as root:
        ensure_demo_models(root, progress=False)
        with serving(demo_apps(Path(root))):
            payloads, mix = ticket_mix(a.mix)
            for target in TARGETS:
                wait_ok(infer_path(target), payloads[0].encode())
            for _ in range(a.rounds):
                for target in TARGETS:
                    script = routed_script(payloads, infer_path(target), Path(root) / "l.lua")
                    for c, duration_s in ((64, a.duration_s), (1, a.duration_s / 3)):
                        r = run_wrk(script, c, duration_s)
                        loads[f"{target}_c{c}"].append(r)
                        line = f"{target:13s} c={c:2d} {r['rps']:7.1f} req/s p50 {r.get('p50_ms')}"
                        print(f"  {line} ms errors {r['errors']}", flush=True)
            # Written before Serve shuts down: a slow shutdown has taken the driver with it.
            results = {"machine": machine_info(), "mix": mix, "duration_s": a.duration_s,
                       "rounds": a.rounds, "loads": loads}  # fmt: skip
            write_results(a.out, results, report(results))


def median(runs: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over a route's rounds."""
    return float(np.median([r[key] for r in runs]))


def report(results: dict[str, Any]) -> str:
    """The Markdown table and ratios of a run."""
    loads, mix = results["loads"], results["mix"]
    lines = [
        "# The demo pipeline against its bottleneck model, heads fused and separate",
        "",
        f"`python -m loadtest.bench.triage`, {results['machine']['date']}. "
        f"{machine_line(results['machine'])}",
        f"Ticket mix: {mix['tickets']} tickets, {mix['second_opinion']} "
        f"({mix['share']:.0%}) taking the second-opinion branch; wrk -t1, "
        f"{results['duration_s']:.0f} s at c=64 and a third of it at c=1, "
        f"{results['rounds']} interleaved rounds (medians).",
        "",
        "| route | c=64 req/s | c=64 p50 ms | c=64 p99 ms | c=1 p50 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for target in TARGETS:
        hi, lo = loads[f"{target}_c64"], loads[f"{target}_c1"]
        errors = sum(r["errors"] for r in hi + lo)
        lines.append(
            f"| {target} | {median(hi, 'rps'):.1f} | {median(hi, 'p50_ms'):.1f} | "
            f"{median(hi, 'p99_ms'):.1f} | {median(lo, 'p50_ms'):.2f} | {errors} |"
        )
    rps = {t: median(loads[f"{t}_c64"], "rps") for t in TARGETS}
    p50 = {t: median(loads[f"{t}_c1"], "p50_ms") for t in TARGETS}
    lines += [
        "",
        f"- triage (heads fused) / minilm at c=64: **{rps['triage'] / rps['minilm']:.2f}x** "
        f"(handles on the same loop {rps['triage-same-loop'] / rps['minilm']:.2f}x, "
        f"router: host {rps['triage-inline'] / rps['minilm']:.2f}x, heads separate "
        f"{rps['triage-separate'] / rps['minilm']:.2f}x); fusing gains "
        f"{rps['triage'] / rps['triage-separate']:.2f}x.",
        f"- c=1 p50: triage {p50['triage']:.2f} ms, minilm {p50['minilm']:.2f} ms "
        f"({p50['triage'] - p50['minilm']:+.2f} ms); router: host "
        f"{p50['triage-inline']:.2f} ms ({p50['triage-inline'] - p50['minilm']:+.2f} ms); "
        f"handles on the same loop {p50['triage-same-loop']:.2f} ms; "
        f"heads separate {p50['triage-separate']:.2f} ms.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
