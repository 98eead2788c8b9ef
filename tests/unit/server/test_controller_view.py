"""The cached controller view: reads off the loop, bounded, and stale when the
controller stops answering (no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

from serve_app.server.controller_view import ControllerView


def test_first_get_waits_for_one_read_then_refreshes() -> None:
    calls = []

    def reader() -> int:
        calls.append(threading.get_ident())
        return len(calls)

    async def scenario() -> tuple[object, object]:
        view = ControllerView(reader, period_s=0.02, timeout_s=1)
        first = await view.get()
        await asyncio.sleep(0.1)
        return first, view.latest()

    main_thread = threading.get_ident()
    first, later = asyncio.run(scenario())
    assert first is not None and first[0] == 1
    assert later is not None and later[0] > 1 and later[1] < 0.1
    assert main_thread not in calls  # never read on the event loop's thread


def test_a_hung_controller_does_not_block_the_loop() -> None:
    gate = threading.Event()

    def reader() -> int:
        gate.wait(0.5)
        return 7

    async def scenario() -> tuple[object, float, float]:
        view = ControllerView(reader, period_s=0.01, timeout_s=0.1)
        t0 = time.perf_counter()
        first = await view.get()
        waited = time.perf_counter() - t0
        t1 = time.perf_counter()
        await asyncio.sleep(0.05)  # the loop keeps running while the read hangs
        return first, waited, time.perf_counter() - t1

    first, waited, slept = asyncio.run(scenario())
    gate.set()
    assert first is None and waited < 0.5 and slept < 0.2


def test_a_hung_controller_holds_one_thread_at_most() -> None:
    """A read that outlives its timeout keeps its thread; the next reads wait for it
    instead of starting more (one stuck thread, not one per refresh)."""
    gate = threading.Event()
    calls: list[int] = []

    def reader() -> int:
        calls.append(1)
        gate.wait(5)
        return len(calls)

    async def scenario() -> object:
        view = ControllerView(reader, period_s=0.01, timeout_s=0.02)
        view.start()
        await asyncio.sleep(0.3)  # ~10 refreshes while the controller hangs
        stuck_calls = len(calls)
        gate.set()
        await asyncio.sleep(0.1)
        assert stuck_calls == 1
        return view.latest()

    latest = asyncio.run(scenario())
    assert latest is not None and latest[0] >= 1  # it answers again once the controller does
