"""Cold start and idle cost of the one-model config under Ray settings, interleaved.

Each round starts ``serve-app demo`` on bench peers' one-model config (minilm alone, as
committed) once per variant, in turn, so that a drift of this shared machine hits every
variant alike: seconds to the first 200, then CPU and PSS of the process tree by group
over ``--idle-s`` of idleness (``loadtest/observe/idle.py``). Prints and writes the mean
and each round's value.

    python -m loadtest.bench.idle_ab --rounds 3 \\
        --variant base: \\
        --variant loop-0.5s:RAY_SERVE_CONTROL_LOOP_INTERVAL_S=0.5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import yaml

from loadtest.bench.peers import APP_CONFIG, one_model_config, run_serve_app
from loadtest.harness.demo_process import REPO_ROOT
from loadtest.harness.machine import machine_info, machine_line
from loadtest.reports.files import write_results

RESULTS = REPO_ROOT / "loadtest" / "results" / "idle-ab"


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:K=V,K=V`` (``NAME:`` for none) -> (NAME, environment)."""
    name, _, spec = text.partition(":")
    env = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:K=V,...")
    return name, env


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean cold start, idle cores and PSS of one variant's runs, and by group."""
    groups = sorted({g for r in runs for g in r["idle"]["by_group"]})
    return {
        "cold_start_s": [r["cold_start_s"] for r in runs],
        "idle_cores": [r["idle_cores"] for r in runs],
        "idle_pss_gib": [r["idle_pss_gib"] for r in runs],
        "mean_cold_start_s": round(statistics.mean(r["cold_start_s"] for r in runs), 1),
        "mean_idle_cores": round(statistics.mean(r["idle_cores"] for r in runs), 3),
        "mean_idle_pss_gib": round(statistics.mean(r["idle_pss_gib"] for r in runs), 2),
        "mean_cores_by_group": {
            g: round(
                statistics.mean(r["idle"]["by_group"].get(g, {}).get("cores", 0.0) for r in runs),
                3,
            )
            for g in groups
        },
    }


def markdown(r: dict[str, Any]) -> str:
    """The result as a page: one line per variant, then idle CPU by group."""
    variants = r["variants"]
    lines = [
        f"# Cold start and idle cost under Ray settings ({r['machine']['date']})",
        "",
        f"Machine: {machine_line(r['machine'])}. `python -m loadtest.bench.idle_ab`, "
        f"{r['rounds']} interleaved rounds, idle window {r['idle_s']} s; minilm alone "
        "(bench peers' one-model config, as committed).",
        "",
        "| variant | environment | cold start s (mean; each) | idle cores (mean; each) "
        "| idle PSS GiB |",
        "|---|---|---|---|---:|",
    ]
    for name, v in variants.items():
        env = ", ".join(f"`{k}={val}`" for k, val in r["environments"][name].items()) or "-"
        cold = ", ".join(map(str, v["cold_start_s"]))
        cores = ", ".join(map(str, v["idle_cores"]))
        lines.append(
            f"| {name} | {env} | {v['mean_cold_start_s']} ({cold}) | {v['mean_idle_cores']} "
            f"({cores}) | {v['mean_idle_pss_gib']} |"
        )
    groups = sorted(
        {g for v in variants.values() for g in v["mean_cores_by_group"]},
        key=lambda g: -max(v["mean_cores_by_group"].get(g, 0.0) for v in variants.values()),
    )
    lines += ["", "Mean idle CPU by process group (cores):", ""]
    lines.append("| group | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---:|" * len(variants))
    for g in groups:
        cells = " | ".join(str(v["mean_cores_by_group"].get(g, 0.0)) for v in variants.values())
        lines.append(f"| {g} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", required=True, help="NAME:K=V,... (repeat)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-s", type=float, default=20.0)
    p.add_argument("--repo", default=str(REPO_ROOT / "model-repository"))
    p.add_argument("--out", default=str(RESULTS / "idle-ab"))
    a = p.parse_args(argv)
    variants = dict(parse_variant(v) for v in a.variant)
    from serve_app.local.demo import ensure_demo_models

    repo = Path(a.repo).resolve()
    ensure_demo_models(str(repo), progress=False)
    app = one_model_config(yaml.safe_load(APP_CONFIG.read_text()))
    app["repository"]["root"] = str(repo)
    tmp = Path(tempfile.mkdtemp(prefix="idle-ab-"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_ in range(a.rounds):
        for name, env in variants.items():
            print(f"round {round_ + 1}: {name} {env}", flush=True)
            runs[name].append(run_serve_app(name, app, name, 0, a.idle_s, tmp, env))
    result = {
        "machine": machine_info(),
        "rounds": a.rounds,
        "idle_s": a.idle_s,
        "environments": variants,
        "variants": {name: summarize(r) for name, r in runs.items()},
        "runs": runs,
    }
    page = markdown(result)
    print(page)
    write_results(Path(a.out), result, page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
