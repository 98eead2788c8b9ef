"""The forward threads of one replica, shared by its concurrent batches (issue 29).

A replica computes up to ``max_concurrent_batches`` batches at once, each forward on a
thread of this pool. On a CPU a forward with several intra-op threads loses time at
every operator's barrier when the cores are shared (the event loop, HAProxy and the
other batch preempt one of its threads and the rest wait); one intra-op thread per
forward does not, but a batch running alone then uses one core. ``ForwardPool`` gets
both: a batch that finds several threads idle is cut into equal chunks computed at once
(data parallel, one intra-op thread each); under load each batch stays whole and the
threads work on different batches. Measured on the 2-core benchmark machine, ONNX
Runtime at batch 32: two 1-thread forwards at once 520-539 sentences/s, one 2-thread
forward 455-465 (``loadtest/results/raw-parallel.md``; ``docs/performance.md``, round 3).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

Forward = Callable[[list[Any]], dict[str, np.ndarray]]


def split_bounds(n_rows: int, ways: int, min_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of at most ``ways`` contiguous chunks of near-equal size, each
    of at least ``min_rows`` rows (one chunk when the rows are too few to cut)."""
    k = max(1, min(ways, n_rows // max(1, min_rows)))
    base, extra = divmod(n_rows, k)
    bounds = []
    start = 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def concat_outputs(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of consecutive chunks, joined along the row axis."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class ForwardPool:
    """``threads`` forward threads; ``run`` computes one batch's rows on them.

    Args:
        threads: Forward threads (the replica's ``max_concurrent_batches``).
        min_split_rows: Smallest chunk a batch is cut into when threads are idle;
            ``None`` never cuts (GPU replicas: one bigger forward is cheaper there).
    """

    def __init__(self, threads: int, min_split_rows: int | None) -> None:
        self.threads = threads
        self.min_split_rows = min_split_rows
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="forward")
        self._lock = threading.Lock()
        self._busy = 0
        """Chunks submitted and not finished on their thread (a cancelled batch's chunks
        count until their forward really ends)."""

    @property
    def busy(self) -> int:
        """Forward chunks submitted and still running or waiting for a thread."""
        return self._busy

    def plan(self, n_rows: int) -> list[tuple[int, int]]:
        """How a batch of ``n_rows`` submitted now is cut: across the idle threads."""
        idle = self.threads - self._busy
        if self.min_split_rows is None or idle < 2:
            return [(0, n_rows)]
        return split_bounds(n_rows, idle, self.min_split_rows)

    async def run(self, forward: Forward, rows: list[Any]) -> tuple[dict[str, np.ndarray], int]:
        """``forward`` over ``rows`` (cut per ``plan``); returns the outputs in row order
        and the number of chunks."""
        futures = []
        for a, b in self.plan(len(rows)):
            with self._lock:
                self._busy += 1
            try:
                work = self._executor.submit(forward, rows[a:b])
            except BaseException:
                self._done(None)
                raise
            # Fires when the forward ends on its thread, or when it is cancelled before
            # it started (a cancelled batch): the count never leaks either way.
            work.add_done_callback(self._done)
            futures.append(asyncio.wrap_future(work))
        parts = await asyncio.gather(*futures)
        return concat_outputs(parts), len(parts)

    def _done(self, _: object) -> None:
        with self._lock:
            self._busy -= 1

    def shutdown(self) -> None:
        """Stop taking work; running forwards finish, then the threads exit."""
        self._executor.shutdown(wait=False)
