"""Raw in-process throughput of a repository model version: the baseline the served
numbers are divided by. Prints one JSON line.

    python -m loadtest.bench.raw_model --repo model-repository --name minilm --version 1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np

from loadtest.traffic.payloads import SENTENCE


def closed_loop(adapter: Any, batch: int, duration_s: float, workers: int = 1) -> dict[str, float]:
    """``workers`` threads calling ``forward`` on ``batch`` copies of ``SENTENCE``
    (tokenized once) until ``duration_s`` has passed: sentences/s and CPU ms per sentence."""
    items = adapter.prepare({"text": np.array([SENTENCE] * batch, dtype=object)})
    adapter.forward(items)
    done = [0] * workers
    stop_s = time.perf_counter() + duration_s

    def loop(i: int) -> None:
        while time.perf_counter() < stop_s:
            adapter.forward(items)
            done[i] += batch

    cpu_0, wall_0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s, cpu_s = time.perf_counter() - wall_0, time.process_time() - cpu_0
    total = sum(done)
    return {"sentences_per_s": total / wall_s, "cpu_ms_per_sentence": cpu_s / total * 1000}


def sentences_per_s(adapter: Any, batch: int, duration_s: float) -> float:
    """Closed loop of ``forward`` on ``batch`` copies of ``SENTENCE`` from one thread."""
    return closed_loop(adapter, batch, duration_s)["sentences_per_s"]


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
