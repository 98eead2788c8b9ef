"""The router's coalescing without Ray: concurrent requests' rows share one call and each
gets its own slice; a bad request fails alone; caps, cancellation and what cannot be
stacked."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from serve_app.errors import InvalidInput
from serve_app.server.coalesce import NodeCoalescer, rows_of, split


class FakeModel:
    """Doubles ``x``; refuses a call holding a NaN; records each call's rows."""

    def __init__(self, delay_s: float = 0.02, rowless_output: bool = False) -> None:
        self.delay_s = delay_s
        self.rowless_output = rowless_output
        self.calls: list[int] = []
        self.cancelled = 0

    def __call__(self, tensors: dict[str, np.ndarray]) -> asyncio.Task[Any]:
        self.calls.append(len(tensors["x"]))
        task = asyncio.get_running_loop().create_task(self._run(tensors))
        task.add_done_callback(lambda t: setattr(self, "cancelled", self.cancelled + t.cancelled()))
        return task

    async def _run(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        await asyncio.sleep(self.delay_s)
        x = tensors["x"]
        if np.isnan(x).any():
            raise InvalidInput("x holds a NaN")
        out = {"y": x * 2}
        if self.rowless_output:
            out["total"] = np.array(x.sum())
        return out


def rows(value: float, n: int = 1, width: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.full((n, width), value, dtype=np.float32)}


async def gather(c: NodeCoalescer, segments: list[dict[str, np.ndarray]]) -> list[Any]:
    futures = [c.submit(s) for s in segments]
    return await asyncio.gather(*futures, return_exceptions=True)


def test_concurrent_requests_share_a_call_and_each_gets_its_rows() -> None:
    model = FakeModel()

    async def go() -> list[Any]:
        c = NodeCoalescer(model, max_in_flight=1)
        return await gather(c, [rows(i, n=1 + i % 3) for i in range(10)])

    answers = asyncio.run(go())
    assert model.calls == [1, sum(1 + i % 3 for i in range(1, 10))]  # one alone, then the rest
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], np.full((1 + i % 3, 3), 2.0 * i))


def test_a_bad_request_fails_alone() -> None:
    model = FakeModel()

    async def go() -> list[Any]:
        c = NodeCoalescer(model, max_in_flight=1)
        return await gather(c, [rows(1), rows(2), rows(float("nan")), rows(4)])

    first, second, bad, fourth = asyncio.run(go())
    assert isinstance(bad, InvalidInput) and bad.message == "x holds a NaN"
    assert [a["y"][0, 0] for a in (first, second, fourth)] == [2.0, 4.0, 8.0]
    assert model.calls == [1, 3, 1, 1, 1]  # the coalesced call failed: each retried alone


def test_calls_stay_within_the_row_cap_and_below_the_in_flight_limit() -> None:
    model = FakeModel()

    async def go() -> int:
        c = NodeCoalescer(model, max_in_flight=2, max_rows=4)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, c.in_flight)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        await gather(c, [rows(i, n=2) for i in range(9)] + [rows(9, n=5)])
        watcher.cancel()
        return peak

    assert asyncio.run(go()) == 2
    assert max(model.calls[:-1]) <= 4 and 5 in model.calls  # a larger segment goes alone


def test_a_cancelled_request_is_not_sent_and_a_lone_call_is_cancelled() -> None:
    model = FakeModel(delay_s=0.2)

    async def go() -> None:
        c = NodeCoalescer(model, max_in_flight=1)
        lone = c.submit(rows(1))
        waiting = c.submit(rows(2))
        await asyncio.sleep(0.01)
        waiting.cancel()
        lone.cancel()
        await asyncio.sleep(0.05)
        assert c.in_flight == 0 and model.calls == [1]

    asyncio.run(go())
    assert model.cancelled == 1


def test_answers_that_cannot_be_split_are_asked_for_one_by_one() -> None:
    model = FakeModel(rowless_output=True)

    async def go() -> list[Any]:
        c = NodeCoalescer(model, max_in_flight=1)
        return await gather(c, [rows(1), rows(2), rows(3)])

    answers = asyncio.run(go())
    assert [float(a["total"]) for a in answers] == [3.0, 6.0, 9.0]
    assert model.calls == [1, 2, 1, 1]
    with pytest.raises(ValueError, match=r"output 'total' has shape \[\], not 2 rows"):
        split({"total": np.array(1.0)}, [1, 1])


def test_what_cannot_be_stacked_goes_in_its_own_call() -> None:
    model = FakeModel()

    async def go() -> list[Any]:
        c = NodeCoalescer(model, max_in_flight=1)
        return await gather(c, [rows(1), rows(2, width=3), rows(3, width=5), rows(4, width=5)])

    answers = asyncio.run(go())
    assert [a["y"].shape for a in answers] == [(1, 3), (1, 3), (1, 5), (1, 5)]
    assert sorted(model.calls) == [1, 1, 2]  # widths 3 and 5 never share a call
    assert rows_of({"x": np.zeros((2, 3)), "mask": np.zeros(3)}) is None
