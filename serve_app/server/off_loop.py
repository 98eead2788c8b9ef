"""What a replica does with a request before its forward: decode the body and prepare
(tokenize, validate) its rows, on the event loop when that is quick and in a worker
thread when the request is large, so one large request does not stall the replica's
other requests, its health checks and its metrics pushes. Shared by ``ModelDeployment``
and ``MultiplexedDeployment``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serve_app.protocol import oip
from serve_app.protocol.limits import RequestLimits

PREPARE_OFF_LOOP_BYTES = 64 * 1024
"""Requests with more input bytes than this are prepared (tokenized) in a worker thread.
The largest request the default limits admit (1024 texts of 16 KB, a 16 MiB body)
took 4.8 s to tokenize on this project's 2-core machine: on the event loop that would
stall every other request of the replica. A small request (0.02 ms) stays on the loop."""
DECODE_OFF_LOOP_BYTES = 64 * 1024
"""Bodies larger than this are decoded in a worker thread (with their rows prepared in
the same hop). A 1 MiB JSON FP32 body took 10 ms to decode here
(``loadtest/results/json-decode.md``), a 55 KB one 0.8 ms: below this, the loop is
held no longer than the hop would cost."""

Prepare = Callable[[dict[str, np.ndarray]], list[Any]]


def input_bytes(inputs: dict[str, np.ndarray]) -> int:
    """Bytes of a request's inputs (element lengths for BYTES)."""
    total = 0
    for array in inputs.values():
        if array.dtype == object:
            total += sum(len(x) for x in array.reshape(-1))
        else:
            total += array.nbytes
    return total


async def prepare_rows(
    prepare: Prepare, inputs: dict[str, np.ndarray], executor: ThreadPoolExecutor
) -> list[Any]:
    """``prepare(inputs)`` on the event loop for a small request, in ``executor`` for
    one above ``PREPARE_OFF_LOOP_BYTES``."""
    if input_bytes(inputs) <= PREPARE_OFF_LOOP_BYTES:
        return prepare(inputs)
    return await asyncio.get_running_loop().run_in_executor(executor, prepare, inputs)


async def decode_and_prepare(
    body: bytes,
    header_length: int | None,
    limits: RequestLimits,
    prepare: Prepare,
    executor: ThreadPoolExecutor,
) -> tuple[oip.DecodedRequest, list[Any]]:
    """Decode an OIP request body and prepare its rows: on the loop for a body of at most
    ``DECODE_OFF_LOOP_BYTES`` (its rows as :func:`prepare_rows` decides), both in
    ``executor`` in one hop for a larger one.

    Raises:
        ServeAppError: what ``oip.decode_request`` or ``prepare`` raise (400/413/422).
    """
    if len(body) <= DECODE_OFF_LOOP_BYTES:
        decoded = oip.decode_request(body, header_length, limits)
        return decoded, await prepare_rows(prepare, decoded.inputs, executor)

    def work() -> tuple[oip.DecodedRequest, list[Any]]:
        decoded = oip.decode_request(body, header_length, limits)
        return decoded, prepare(decoded.inputs)

    return await asyncio.get_running_loop().run_in_executor(executor, work)
