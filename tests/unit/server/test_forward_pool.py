"""A batch that finds several forward threads idle is cut across them and computed at
once; under load batches stay whole; the busy count survives cancellation. No Ray."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from serve_app.server.forward_pool import ForwardPool, concat_outputs, split_bounds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_split_bounds_cuts_near_equal_chunks_of_at_least_min_rows() -> None:
    assert split_bounds(16, 2, 4) == [(0, 8), (8, 16)]
    assert split_bounds(9, 2, 4) == [(0, 5), (5, 9)]
    assert split_bounds(7, 2, 4) == [(0, 7)]  # two chunks would hold fewer than 4
    assert split_bounds(12, 4, 4) == [(0, 4), (4, 8), (8, 12)]
    assert split_bounds(1, 2, 1) == [(0, 1)]


def test_concat_outputs_keeps_row_order() -> None:
    parts = [{"y": np.array([[1], [2]])}, {"y": np.array([[3]])}]
    np.testing.assert_array_equal(concat_outputs(parts)["y"], [[1], [2], [3]])


def echo(rows: list[Any]) -> dict[str, np.ndarray]:
    return {"y": np.array(rows, dtype=np.int64)[:, None] * 10}


def held(release: threading.Event) -> Callable[[list[Any]], dict[str, np.ndarray]]:
    """A forward that runs until ``release`` is set (at most 5 s)."""

    def forward(rows: list[Any]) -> dict[str, np.ndarray]:
        release.wait(5)
        return echo(rows)

    return forward


@pytest.mark.anyio
async def test_an_idle_pool_computes_the_chunks_of_one_batch_at_once() -> None:
    pool = ForwardPool(threads=2, min_split_rows=4)
    both_running = threading.Barrier(2, timeout=5)  # breaks unless two forwards overlap
    seen: list[list[int]] = []

    def forward(rows: list[Any]) -> dict[str, np.ndarray]:
        seen.append(list(rows))
        both_running.wait()
        return echo(rows)

    outputs, chunks = await pool.run(forward, list(range(8)))
    assert chunks == 2
    assert sorted(seen) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    np.testing.assert_array_equal(outputs["y"][:, 0], np.arange(8) * 10)
    assert pool.busy == 0
    pool.shutdown()


@pytest.mark.anyio
async def test_a_batch_arriving_while_a_thread_is_busy_stays_whole() -> None:
    pool = ForwardPool(threads=2, min_split_rows=1)
    release = threading.Event()
    slow = held(release)

    first = asyncio.ensure_future(pool.run(slow, [0]))  # one row: one chunk
    await asyncio.sleep(0.05)
    assert pool.busy == 1
    assert pool.plan(8) == [(0, 8)]
    outputs, chunks = await pool.run(echo, list(range(8)))
    assert chunks == 1
    np.testing.assert_array_equal(outputs["y"][:, 0], np.arange(8) * 10)
    release.set()
    assert (await first)[1] == 1
    assert pool.busy == 0
    pool.shutdown()


def test_min_split_rows_none_never_cuts() -> None:
    pool = ForwardPool(threads=4, min_split_rows=None)
    assert pool.plan(64) == [(0, 64)]
    pool.shutdown()


@pytest.mark.anyio
async def test_a_cancelled_batch_counts_its_chunks_until_they_really_end() -> None:
    pool = ForwardPool(threads=1, min_split_rows=1)
    release = threading.Event()
    slow = held(release)

    running = asyncio.ensure_future(pool.run(slow, [0]))
    queued = asyncio.ensure_future(pool.run(slow, [1]))  # waits for the only thread
    await asyncio.sleep(0.05)
    assert pool.busy == 2
    queued.cancel()  # never started: no longer counted
    running.cancel()  # its forward still runs on the thread: still counted
    await asyncio.sleep(0.05)
    assert pool.busy == 1
    release.set()
    for _ in range(100):
        if pool.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert pool.busy == 0
    pool.shutdown()
