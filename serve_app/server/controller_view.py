"""A cached view of something the Serve controller reports, refreshed off the event
loop: a replica never blocks its loop on a controller call, and keeps answering (with
the last known state, then "unknown") when the controller is slow or gone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


class ControllerView(Generic[T]):
    """Calls a blocking ``reader`` in a worker thread every ``period_s`` and keeps the
    last answer.

    Args:
        reader: Blocking call to the controller (injected: tests pass a stand-in).
        period_s: Time between reads.
        timeout_s: A read slower than this is abandoned; the last answer stays.
    """

    def __init__(self, reader: Callable[[], T], period_s: float, timeout_s: float) -> None:
        self.reader = reader
        self.period_s = period_s
        self.timeout_s = timeout_s
        self._value: T | None = None
        self._read_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[T] | None = None
        """The read in flight: a read that outlived ``timeout_s`` keeps its thread (a
        thread cannot be cancelled), so the next read waits for it instead of starting
        another: one thread at most, however long the controller hangs."""

    def start(self) -> None:
        """Start refreshing on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    def latest(self) -> tuple[T, float] | None:
        """The last answer and its age in seconds, or None before the first one."""
        if self._value is None or self._read_at is None:
            return None
        return self._value, time.monotonic() - self._read_at

    async def get(self) -> tuple[T, float] | None:
        """``latest()``, after waiting (bounded by ``timeout_s``) for the first read."""
        self.start()
        if self._read_at is None:
            await self._read_once()
        return self.latest()

    async def _read_once(self) -> None:
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(asyncio.to_thread(self.reader))
            # An abandoned read that fails later is not an unretrieved error.
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            self._value = await asyncio.wait_for(asyncio.shield(self._reading), self.timeout_s)
            self._read_at = time.monotonic()
        except Exception as e:  # keep the last answer; its age tells how stale it is
            logger.warning("reading Serve state failed: %r", e)

    async def _refresh_forever(self) -> None:
        while True:
            await self._read_once()
            await asyncio.sleep(self.period_s)
