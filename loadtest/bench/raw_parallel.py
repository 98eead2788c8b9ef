"""Forward layouts of one ONNX model in-process: intra-op threads per forward against
forwards at once (the choice behind ``server/forward_pool.py``). Prints one JSON line.

Each layout runs ``OnnxEmbeddingAdapter.forward`` closed-loop on ``--batch`` copies of
the benchmark sentence (tokenized once) from ``workers`` Python threads sharing one
session with ``threads`` intra-op threads, for ``--duration-s``; the layouts alternate
``--rounds`` times (this machine drifts). Reported: sentences/s and CPU ms per sentence.

    python -m loadtest.bench.raw_parallel --rounds 2   # results/raw-parallel.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loadtest.bench.raw_model import closed_loop
from loadtest.harness.demo_process import REPO_ROOT
from loadtest.harness.machine import machine_info, machine_line
from loadtest.reports.files import write_results

LAYOUTS = ((2, 1), (2, 2), (1, 2), (1, 1))
"""(intra-op threads, forwards at once)."""


def markdown(r: dict[str, Any]) -> str:
    """One line per layout: sentences/s and CPU ms per sentence of each round."""
    lines = [
        f"# Forward layouts of one ONNX model, in-process ({r['machine']['date']})",
        "",
        f"{machine_line(r['machine'], 'onnxruntime')} `python -m loadtest.bench.raw_parallel`: "
        f"minilm version {r['version']}, batch {r['batch']}, {r['duration_s']:g} s per layout "
        "and round, layouts alternating.",
        "",
        "| layout | sentences/s (each round) | CPU ms per sentence (each round) |",
        "|---|---|---|",
    ]
    for key, runs in r["runs"].items():
        sps = ", ".join(str(x["sentences_per_s"]) for x in runs)
        cpu = ", ".join(str(x["cpu_ms_per_sentence"]) for x in runs)
        lines.append(f"| {key} | {sps} | {cpu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default="model-repository")
    p.add_argument("--name", default="minilm")
    p.add_argument("--version", type=int, default=2, help="an ONNX version")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(REPO_ROOT / "loadtest" / "results" / "raw-parallel"))
    a = p.parse_args(argv)
    from serve_app.models.onnx_embedding import OnnxEmbeddingAdapter
    from serve_app.repository import ModelRepository

    version = ModelRepository(a.repo).verify(a.name, a.version)
    folder = Path(version.path)
    adapters = {n: OnnxEmbeddingAdapter(folder, "cpu", threads=n) for n in {t for t, _ in LAYOUTS}}
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(a.rounds):
        for threads, workers in LAYOUTS:
            key = f"{threads} thread(s) x {workers} forward(s) at once"
            m = closed_loop(adapters[threads], a.batch, a.duration_s, workers)
            runs.setdefault(key, []).append({
                "sentences_per_s": round(m["sentences_per_s"], 1),
                "cpu_ms_per_sentence": round(m["cpu_ms_per_sentence"], 2),
            })  # fmt: skip
    result = {
        "machine": machine_info(), "version": a.version, "batch": a.batch,
        "duration_s": a.duration_s, "runs": runs,
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    write_results(Path(a.out), result, markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
