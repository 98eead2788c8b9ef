"""Serve's own failures of a handle call get a status and a message that says what to do
(no Ray cluster: the exceptions are built as Serve raises them)."""

from __future__ import annotations

import grpc
import pytest
from ray.serve.exceptions import BackPressureError

from serve_app.errors import InvalidInput
from serve_app.server.serve_errors import TOO_LARGE_FOR_TRANSPORT, classify_serve_error

TOO_LARGE = "Received message larger than max (6291520 vs. 4194304)"


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details)


@pytest.mark.parametrize(
    "exc",
    [
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE),
        RuntimeError(f"Unexpected error (StatusCode.RESOURCE_EXHAUSTED): {TOO_LARGE}."),
    ],
)
def test_an_answer_above_the_grpc_cap_is_a_413_that_says_what_to_do(exc: Exception) -> None:
    assert classify_serve_error(exc) == (413, TOO_LARGE_FOR_TRANSPORT)


INTERNAL = (500, "internal error")
OTHERS = [
    (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams"), INTERNAL),
    (RuntimeError("something else"), INTERNAL),
    (
        BackPressureError(num_queued_requests=3, max_queued_requests=2),
        (503, "overloaded, retry later"),
    ),
    (InvalidInput("bad"), (400, "bad")),
]


@pytest.mark.parametrize(("exc", "expected"), OTHERS)
def test_other_failures_keep_their_classification(exc: Exception, expected: tuple) -> None:
    assert classify_serve_error(exc) == expected
