"""Coalescing in the pipeline router: concurrent requests' rows for one model node travel
in one DeploymentHandle call, so a graph pays one RPC per group of requests instead of
one per request per node (an RPC costs ~3 ms of CPU between router and replica, more than
a tiny head's math). Free of Ray: the call is injected.

A segment (one request's tensors for the node) is sent at once while fewer than
``max_in_flight`` calls to the model are pending; otherwise it waits, and when a call
returns, every waiting segment that fits goes in the next call (up to ``max_rows`` rows
and ``max_bytes`` of tensors, under Serve's gRPC message cap). The answer is split back
by each segment's row count. Segments are grouped by what can be stacked (the same
input names, datatypes and shapes past the first axis).

A bad segment fails alone: when a coalesced call fails, each of its segments is retried
on its own, so every request gets its own answer or its own error. A cancelled segment
is dropped while it waits; a call that carries it alone is cancelled too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger("ray.serve")

Tensors = dict[str, np.ndarray]
Call = Callable[[Tensors], Any]
"""Starts the model on stacked tensors; returns an awaitable with a ``cancel()``
(a ``DeploymentResponse`` in serving)."""

GRPC_MESSAGE_BYTES = 4 * 1024 * 1024
"""Serve's default cap on a replica gRPC message (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH)."""


def rows_of(tensors: Tensors) -> int | None:
    """Rows of a segment: the first axis, which every input shares; None when they do
    not share one (such a segment cannot be stacked and goes alone)."""
    counts = {a.shape[0] if a.ndim else None for a in tensors.values()}
    if len(counts) != 1:
        return None
    return counts.pop()


def size_bytes(tensors: Tensors) -> int:
    """Bytes a segment adds to a message (BYTES tensors: the length of their items)."""
    total = 0
    for array in tensors.values():
        if array.dtype == object:
            total += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in array.flat)
        else:
            total += array.nbytes
    return total


def stack_key(tensors: Tensors) -> tuple[Any, ...]:
    """Segments with equal keys can be stacked along the first axis."""
    return tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in tensors.items()))


@dataclass
class _Segment:
    tensors: Tensors
    rows: int
    nbytes: int
    future: asyncio.Future[Tensors]


class NodeCoalescer:
    """Coalesces one model node's calls (one per model per router replica).

    Args:
        call: Starts the model on a dict of stacked arrays.
        max_in_flight: Calls to the model allowed pending before segments wait.
        max_rows: Most rows in one call (a single larger segment still goes alone).
        max_bytes: Most tensor bytes in one call.
    """

    def __init__(
        self,
        call: Call,
        max_in_flight: int = 2,
        max_rows: int = 256,
        max_bytes: int = GRPC_MESSAGE_BYTES * 3 // 4,
    ) -> None:
        self.call = call
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.in_flight = 0
        self.waiting: dict[tuple[Any, ...], list[_Segment]] = {}
        """Segments waiting for a call, by what they stack with."""

    def submit(self, tensors: Tensors) -> asyncio.Future[Tensors]:
        """Queue one request's tensors; the future resolves to its own outputs."""
        loop = asyncio.get_running_loop()
        rows = rows_of(tensors)
        segment = _Segment(tensors, rows or 0, size_bytes(tensors), loop.create_future())
        # A request that ended first never reads its answer: not an unretrieved error.
        segment.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if rows is None:
            loop.create_task(self._single(segment))
            return segment.future
        self.waiting.setdefault(stack_key(tensors), []).append(segment)
        self._flush()
        return segment.future

    def _flush(self) -> None:
        """Start calls while below the in-flight limit and segments wait."""
        for key in list(self.waiting):
            queue = self.waiting[key]
            while self.in_flight < self.max_in_flight:
                batch = self._take(queue)
                if not batch:
                    break
                self.in_flight += 1
                asyncio.get_running_loop().create_task(self._run(batch))
            if not queue:
                del self.waiting[key]

    def _take(self, queue: list[_Segment]) -> list[_Segment]:
        """The next call's segments from ``queue`` (oldest first, cancelled ones dropped),
        within the caps."""
        queue[:] = [s for s in queue if not s.future.done()]
        batch: list[_Segment] = []
        rows = nbytes = 0
        while queue:
            s = queue[0]
            if batch and (rows + s.rows > self.max_rows or nbytes + s.nbytes > self.max_bytes):
                break
            batch.append(queue.pop(0))
            rows, nbytes = rows + s.rows, nbytes + s.nbytes
        return batch

    async def _run(self, batch: list[_Segment]) -> None:
        try:
            if len(batch) == 1:
                await self._single(batch[0])
            else:
                await self._coalesced(batch)
        finally:
            self.in_flight -= 1
            self._flush()

    async def _single(self, segment: _Segment) -> None:
        try:
            pending = self.call(segment.tensors)
        except Exception as e:
            if not segment.future.done():
                segment.future.set_exception(e)
            return
        # The segment's request may end first (a failure elsewhere, a caller gone).
        segment.future.add_done_callback(lambda f: _cancel_if(f, pending))
        try:
            result = await pending
        except BaseException as e:  # its own answer, whatever it is
            if not segment.future.done():
                segment.future.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        if not segment.future.done():
            segment.future.set_result(result)

    async def _coalesced(self, batch: list[_Segment]) -> None:
        keys = list(batch[0].tensors)
        stacked = {k: np.concatenate([s.tensors[k] for s in batch]) for k in keys}
        try:
            result = await self.call(stacked)
            parts = split(result, [s.rows for s in batch])
        except asyncio.CancelledError:
            raise
        except Exception as e:  # someone's rows may be bad: each answers for itself
            logger.info("coalesced call of %d segments failed (%s); retrying each", len(batch), e)
            await asyncio.gather(*(self._single(s) for s in batch))
            return
        for segment, part in zip(batch, parts, strict=True):
            if not segment.future.done():
                segment.future.set_result(part)


def split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    """Each segment's slice of stacked outputs.

    Raises:
        ValueError: an output does not have one row per input row.
    """
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or len(array) != total:
            raise ValueError(f"output {name!r} has shape {list(array.shape)}, not {total} rows")
    bounds = np.cumsum([0, *rows])
    return [
        {name: array[bounds[i] : bounds[i + 1]] for name, array in outputs.items()}
        for i in range(len(rows))
    ]


def _cancel_if(future: asyncio.Future[Tensors], pending: Any) -> None:
    if future.cancelled():
        cancel: Callable[[], Any] | None = getattr(pending, "cancel", None)
        if cancel is not None:
            cancel()
