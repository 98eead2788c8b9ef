"""The canary hop of a stable replica (no Ray: stand-in handle and stable model; Serve's
errors built as Serve raises them): a canary that cannot take a request is answered by
the stable version and counted; the canary's own errors keep their status."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import HttpConfig
from serve_app.deploy.app_args import CanaryArgs
from serve_app.errors import InvalidInput, ServeAppError, ServiceUnavailable
from serve_app.server.canary import CANARY_NODE, CanaryForwarder

TOO_LARGE = "Received message larger than max (6291520 vs. 4194304)"
BODY = orjson.dumps(
    {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
)


class Overloaded(ServeAppError):
    status_code = 429


class StandInHandle:
    """Answers like the canary's ``infer_tensors``, or raises ``error``; keeps each
    call's ``via``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls = 0
        self.vias: list[str] = []

    async def remote(
        self, tensors: dict[str, np.ndarray], rename: dict[str, str], *, via: str
    ) -> Any:
        self.calls += 1
        self.vias.append(via)
        if self.error is not None:
            raise self.error
        return {"y": tensors["x"] * 3}


class StandInStable:
    """The stable replica: version 2, doubles its input."""

    version = "2"

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls = 0
        self.vias: list[str] = []

    async def infer_tensors(
        self, tensors: dict[str, np.ndarray], rename: dict[str, str], *, via: str
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        self.vias.append(via)
        if self.error is not None:
            raise self.error
        return {"y": tensors[rename["x"]] * 2}


def request_of(body: bytes) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    return Request(scope, receive)


def forward(
    handle: StandInHandle, stable: StandInStable, body: bytes = BODY
) -> tuple[Response, list[tuple[str, str, str, str]]]:
    """One forward; returns the response and the observed (model, version, node, outcome)."""
    observed: list[tuple[str, str, str, str]] = []

    def observer(model: str, version: str) -> Any:
        return lambda node, outcome, _s: observed.append((model, version, node, outcome))

    forwarder = CanaryForwarder(
        CanaryArgs(app="m-v3", version=3, percent=50),
        HttpConfig(),
        stable=stable,
        handle_factory=lambda app: handle,
        draw=lambda: 0.0,
        observer_factory=observer,
    )
    return asyncio.run(forwarder.forward("m", request_of(body))), observed


def answer(response: Response) -> tuple[int, Any]:
    return response.status_code, orjson.loads(bytes(response.body))


def test_the_canary_answers_its_share_with_its_version() -> None:
    handle, stable = StandInHandle(), StandInStable()
    response, observed = forward(handle, stable)
    status, body = answer(response)
    assert (status, body["model_name"], body["model_version"]) == (200, "m", "3")
    assert body["outputs"][0]["data"] == [3.0, 6.0]
    assert (handle.calls, stable.calls) == (1, 0)
    assert handle.vias == ["canary"]  # the canary counts it as a client's, not a pipeline's
    assert observed == [("m", "2", CANARY_NODE, "ok")]


REFUSALS = [
    (BackPressureError(num_queued_requests=3, max_queued_requests=2), "overloaded"),
    (Overloaded("canary queue full"), "overloaded"),
    (DeploymentUnavailableError(DeploymentID(name="ModelDeployment", app_name="m")), "unavailable"),
    (ReplicaUnavailableError("m-v3#abc"), "unavailable"),
    (ActorDiedError(), "unavailable"),
    (ActorUnavailableError("node gone", None), "unavailable"),
    (RayActorError(), "unavailable"),
    (ServiceUnavailable("model 'm' is not loaded yet"), "unavailable"),
    (RuntimeError(f"Unexpected error (StatusCode.RESOURCE_EXHAUSTED): {TOO_LARGE}."), "too_large"),
]


@pytest.mark.parametrize(("error", "reason"), REFUSALS)
def test_a_canary_that_cannot_take_the_request_falls_back_to_stable(
    error: BaseException, reason: str
) -> None:
    handle, stable = StandInHandle(error), StandInStable()
    response, observed = forward(handle, stable)
    status, body = answer(response)
    assert (status, body["model_name"], body["model_version"]) == (200, "m", "2")
    assert body["outputs"][0]["data"] == [2.0, 4.0]
    assert (handle.calls, stable.calls) == (1, 1)
    assert (handle.vias, stable.vias) == (["canary"], ["http"])  # the stable's own request
    assert observed == [("m", "2", CANARY_NODE, f"fallback_{reason}")]


def test_the_canarys_own_client_error_keeps_its_status_without_fallback() -> None:
    handle, stable = StandInHandle(InvalidInput("input 'x': expected 3 columns")), StandInStable()
    response, observed = forward(handle, stable)
    status, body = answer(response)
    assert (status, body["error"]) == (400, "input 'x': expected 3 columns")
    assert (handle.calls, stable.calls) == (1, 0)
    assert observed == [("m", "2", CANARY_NODE, "failed")]


def test_the_canarys_internal_error_is_a_masked_500_counted_as_failed() -> None:
    handle, stable = StandInHandle(RuntimeError("secret traceback")), StandInStable()
    response, observed = forward(handle, stable)
    status, body = answer(response)
    assert status == 500
    assert body["error"] == f"internal error, request id {body['request_id']}"
    assert stable.calls == 0
    assert observed == [("m", "2", CANARY_NODE, "failed")]


def test_a_failed_fallback_answers_with_the_stables_error_and_retry_after() -> None:
    stable = StandInStable(ServiceUnavailable("model 'm' is not loaded yet", 7))
    response, observed = forward(StandInHandle(BackPressureError(3, 2)), stable)
    status, body = answer(response)
    assert (status, body["error"]) == (503, "model 'm' is not loaded yet")
    assert response.headers["retry-after"] == "7"
    assert observed == [("m", "2", CANARY_NODE, "fallback_overloaded")]


def test_a_malformed_request_is_refused_before_any_hop() -> None:
    handle, stable = StandInHandle(), StandInStable()
    response, observed = forward(handle, stable, body=b"{not json")
    status, body = answer(response)
    assert (status, body["error"]) == (
        422,
        "invalid inference request: body: Invalid JSON: key must be a string at line 1 column 2",
    )
    assert (handle.calls, stable.calls, observed) == (0, 0, [])
