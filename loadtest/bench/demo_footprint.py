"""What the demo costs a machine before it serves anything: cold start to the first 200 on
every route, and the idle process tree (PSS, processes, which replicas loaded torch), with
the triage heads on deployments of their own (``placement: separate``, numpy runtime,
as before fused nodes) and fused into minilm's replicas (``configs/app.yaml`` as
committed), one after the other in one run.

Each variant is ``serve-app demo`` on ``configs/app.yaml`` (its repository in a temporary
folder, published once), started as a user starts it. Cold start: from launching the
command until every model and pipeline route has answered an inference with 200. The
tree is sampled after ``--settle-s`` of idleness. Results:
``loadtest/results/demo-footprint-fused.{json,md}`` (the torch vs numpy heads run of
before is ``demo-footprint.{json,md}``); 127.0.0.1 only.

    python -m loadtest.bench.demo_footprint     # ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from loadtest.bench.graph_apps import separate_heads
from loadtest.harness.demo_process import REPO_ROOT, descendants, start_demo, stop_demo
from loadtest.harness.machine import machine_info, machine_line
from loadtest.observe.proc_sampler import group_of
from loadtest.reports.files import write_results
from loadtest.traffic.payloads import generated_body, model_metadata

VARIANTS = ("separate heads", "fused heads")


def variant_config(base: dict[str, Any], root: Path, variant: str) -> dict[str, Any]:
    """The demo's AppConfig on ``root``, its heads separate or (as committed) fused."""
    config = copy.deepcopy(base)
    config["repository"]["root"] = str(root)
    return separate_heads(config) if variant == "separate heads" else config


def routes(config: dict[str, Any]) -> list[str]:
    """Every model and pipeline name the demo serves (multiplexed families excluded:
    their routes are their tenants; models without a deployment have no route)."""
    models = [
        m["name"]
        for m in config["models"]
        if not m.get("multiplex") and m.get("standalone", True) is not False
    ]
    return models + [p["name"] for p in config.get("pipelines", [])]


def first_200_s(url: str, names: list[str], started: float, timeout_s: float = 300) -> float:
    """Seconds from ``started`` until each route has answered one inference with 200."""
    left = list(names)
    with httpx.Client(base_url=url, timeout=30) as client:
        while left:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"no 200 from {left} after {timeout_s:.0f} s")
            name = left[0]
            try:
                body = generated_body(model_metadata(url, name))
                if client.post(f"/v2/models/{name}/infer", content=body).status_code == 200:
                    left.pop(0)
                    continue
            except (httpx.HTTPError, OSError, KeyError, ValueError):
                pass
            time.sleep(0.2)
    return time.monotonic() - started


def has_torch(p: psutil.Process) -> bool:
    """Whether the process mapped libtorch (it imported torch)."""
    try:
        return any("libtorch" in m.path for m in p.memory_maps())
    except psutil.Error:
        return False


def footprint(root_pid: int) -> dict[str, Any]:
    """PSS by group, processes, and the replicas that loaded torch, of the demo's tree."""
    pss: dict[str, float] = {}
    torch_replicas: list[str] = []
    procs = [psutil.Process(root_pid), *descendants(root_pid)]
    for p in procs:
        try:
            group = group_of(p.name(), p.cmdline(), p.pid == root_pid)
            pss[group] = pss.get(group, 0.0) + p.memory_full_info().pss / 2**20
        except psutil.Error:
            continue
        if group.startswith("replica:") and has_torch(p):
            torch_replicas.append(group.removeprefix("replica:"))
    replicas = [g for g in pss if g.startswith("replica:")]
    return {
        "processes": len(procs),
        "pss_mib": round(sum(pss.values()), 1),
        "replica_pss_mib": round(sum(pss[g] for g in replicas), 1),
        "replica_groups": len(replicas),
        "torch_replicas": sorted(torch_replicas),
        "pss_by_group_mib": {g: round(v, 1) for g, v in sorted(pss.items())},
    }


def run_variant(config: dict[str, Any], folder: Path, settle_s: float) -> dict[str, Any]:
    """Start the demo on ``config``, time its routes' first 200, sample it idle, stop it."""
    started = time.monotonic()
    demo = start_demo(config, folder)
    try:
        cold_start_s = first_200_s(demo.url, routes(config), started)
        time.sleep(settle_s)
        return {"cold_start_s": round(cold_start_s, 1), **footprint(demo.proc.pid)}
    finally:
        stop_demo(demo)


def report(results: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    m = results["machine"]
    lines = [
        "# The demo's cold start and idle footprint, triage heads separate vs fused",
        "",
        f"`python -m loadtest.bench.demo_footprint`, {m['date']}. {machine_line(m)}",
        f"configs/app.yaml; idle tree sampled {results['settle_s']:.0f} s after every route "
        "answered 200.",
        "",
        "| variant | cold start to every route's first 200 | processes | PSS, whole tree "
        "| PSS, replicas | replicas that loaded torch |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in results["variants"].items():
        torch_list = ", ".join(r["torch_replicas"]) or "none"
        lines.append(
            f"| {name} | {r['cold_start_s']} s | {r['processes']} | {r['pss_mib']:.0f} MiB | "
            f"{r['replica_pss_mib']:.0f} MiB | {torch_list} |"
        )
    t, n = results["variants"]["separate heads"], results["variants"]["fused heads"]
    lines += [
        "",
        f"fused vs separate heads: cold start {n['cold_start_s'] - t['cold_start_s']:+.1f} s, "
        f"PSS {n['pss_mib'] - t['pss_mib']:+.0f} MiB ({n['pss_mib'] / t['pss_mib']:.2f}x), "
        f"processes {n['processes'] - t['processes']:+d}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run both variants and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle-s", type=float, default=10.0, help="idle time before sampling")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "loadtest/results/demo-footprint-fused"
    )
    a = parser.parse_args(argv)
    from serve_app.local.demo import ensure_demo_models

    base = yaml.safe_load((REPO_ROOT / "configs" / "app.yaml").read_text())
    results: dict[str, Any] = {"settle_s": a.settle_s, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        root = Path(tmp) / "repo"
        ensure_demo_models(root, progress=False)
        for name in VARIANTS:
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            results["variants"][name] = run_variant(
                variant_config(base, root, name), folder, a.settle_s
            )
            print(f"{name}: {results['variants'][name]}", flush=True)
    results["machine"] = machine_info()
    write_results(a.out, results, report(results))


if __name__ == "__main__":
    main()
