"""Raw in-process throughput of a repository model version: the baseline the served
numbers are divided by. Prints one JSON line.

    python -m loadtest.bench.raw_model --repo model-repository --name minilm --version 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from loadtest.traffic.payloads import SENTENCE


def sentences_per_s(adapter, batch: int, duration_s: float) -> float:
    """Closed loop of ``forward`` on ``batch`` copies of ``SENTENCE`` (tokenized once)."""
    items = adapter.prepare({"text": np.array([SENTENCE] * batch, dtype=object)})
    adapter.forward(items)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration_s:
        adapter.forward(items)
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Measure batch 1/8/32 and print ``{"runtime": ..., "sentences_per_s": {...}}``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repo", default="model-repository")
    p.add_argument("--name", default="minilm")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--duration-s", type=float, default=4.0)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from serve_app.models.threads import set_intra_op_threads

    set_intra_op_threads(a.threads)
    from serve_app.models import load_adapter
    from serve_app.repository import ModelRepository

    version = ModelRepository(a.repo).verify(a.name, a.version)
    adapter = load_adapter(version, "cpu")
    result = {
        "runtime": adapter.info.platform,
        "version": a.version,
        "threads": a.threads,
        "sentences_per_s": {
            str(b): round(sentences_per_s(adapter, b, a.duration_s), 1) for b in (1, 8, 32)
        },
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
