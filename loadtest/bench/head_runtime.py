"""A pipeline head on numpy against the same head on torch (issue 25, lever 4): what a
replica process pays to load it and to run it, measured in fresh processes, one run.

For each runtime a new Python process imports what a model replica imports, loads the
demo head's architecture (384 -> 128 -> 8, random weights, published to a temporary
repository) through ``load_adapter`` and reports: seconds to import and load, the
process's memory after loading (RSS and PSS), whether torch got imported, and the median
forward time at 1 and 32 rows. The outputs of both runtimes on the same rows are
compared. Results: ``loadtest/results/head-runtime.{json,md}``.

    python -m loadtest.bench.head_runtime
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.harness.demo_process import REPO_ROOT
from loadtest.harness.machine import machine_info, machine_line
from loadtest.reports.files import write_results

RUNTIMES = ("torch", "auto")
"""``ModelConfig.runtime`` values: ``auto`` runs this head on numpy on a CPU replica."""
CHILD = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
from serve_app.models.registry import load_adapter
from serve_app.repository import ModelRepository
root, runtime, rows_file = sys.argv[1], sys.argv[2], sys.argv[3]
adapter = load_adapter(ModelRepository(root).verify("head", "latest"), "cpu", runtime)
load_s = time.perf_counter() - start
import psutil
mem = psutil.Process().memory_full_info()
x = np.load(rows_file)
forward_ms = {}
for n in (1, 32):
    items = adapter.prepare({"input": x[:n]})
    adapter.forward(items)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        adapter.forward(items)
        times.append((time.perf_counter() - t0) * 1e3)
    forward_ms[str(n)] = float(np.median(times))
out = adapter.forward(adapter.prepare({"input": x}))
np.save(rows_file + f".{runtime}.npy", out["probabilities"])
print(json.dumps({"load_s": load_s, "rss_mib": mem.rss / 2**20, "pss_mib": mem.pss / 2**20,
                  "torch_imported": "torch" in sys.modules, "forward_ms": forward_ms,
                  "adapter": type(adapter).__name__}))
"""


def publish_head(root: Path) -> None:
    """The demo head's architecture with seeded random weights, as ``head`` version 1."""
    import torch
    from safetensors.torch import save_file

    from serve_app.local.demo import MLP_HEAD_ARCH
    from serve_app.models.architectures import MLP
    from serve_app.repository import publish

    torch.manual_seed(0)
    weights = root.parent / "head.safetensors"
    save_file(MLP(**MLP_HEAD_ARCH.kwargs).state_dict(), str(weights))
    labels = [f"label-{i}" for i in range(MLP_HEAD_ARCH.kwargs["out_features"])]
    publish(weights, root, "head", architecture=MLP_HEAD_ARCH, task="classification",
            metadata={"labels": labels})  # fmt: skip


def measure(root: Path, rows: Path, runtime: str, repeats: int) -> dict[str, Any]:
    """The child's numbers for ``runtime``: medians over ``repeats`` fresh processes."""
    runs = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), runtime, str(rows)],
            capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        )  # fmt: skip
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = {k: float(np.median([r[k] for r in runs])) for k in ("load_s", "rss_mib", "pss_mib")}
    forward = {n: float(np.median([r["forward_ms"][n] for r in runs])) for n in ("1", "32")}
    return {**med, "forward_ms": forward, "torch_imported": runs[0]["torch_imported"],
            "adapter": runs[0]["adapter"], "processes": repeats}  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    t, n = results["runtimes"]["torch"], results["runtimes"]["auto"]
    lines = [
        "# A pipeline head on numpy vs torch (`python -m loadtest.bench.head_runtime`)",
        "",
        f"{results['machine']['date']}. {machine_line(results['machine'], 'torch')}",
        f"Head: MLP 384 -> 128 -> 8 with softmax, as the demo's; medians of "
        f"{t['processes']} fresh processes each.",
        "",
        "| runtime | adapter | torch imported | import + load | RSS | PSS | forward, 1 row "
        "| forward, 32 rows |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("torch", t), ("auto (numpy)", n)):
        lines.append(
            f"| {name} | {r['adapter']} | {r['torch_imported']} | {r['load_s']:.2f} s "
            f"| {r['rss_mib']:.0f} MiB | {r['pss_mib']:.0f} MiB | {r['forward_ms']['1']:.3f} ms "
            f"| {r['forward_ms']['32']:.3f} ms |"
        )
    lines += [
        "",
        f"numpy / torch: import + load {n['load_s'] / t['load_s']:.2f}x, PSS "
        f"{n['pss_mib'] / t['pss_mib']:.2f}x, forward at 32 rows "
        f"{n['forward_ms']['32'] / t['forward_ms']['32']:.2f}x. Largest difference of the "
        f"probabilities on {results['rows']} rows: {results['max_abs_diff']:.2e}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run both runtimes and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per runtime")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "loadtest/results/head-runtime")
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        publish_head(root)
        rows = Path(tmp) / "rows.npy"
        np.save(rows, np.random.default_rng(0).normal(size=(256, 384)).astype(np.float32))
        runtimes = {r: measure(root, rows, r, a.repeats) for r in RUNTIMES}
        probs = {r: np.load(f"{rows}.{r}.npy") for r in RUNTIMES}
    results = {
        "machine": machine_info(),
        "runtimes": runtimes,
        "rows": 256,
        "max_abs_diff": float(np.abs(probs["torch"] - probs["auto"]).max()),
    }
    write_results(a.out, results, report(results))


if __name__ == "__main__":
    main()
