"""Status and message for a failed call through a DeploymentHandle: Serve's own errors
(back-pressure, an unavailable deployment or a dead replica) and ours (``classify_error``).
Used by the pipeline router over HTTP, by the gRPC methods, and by a model's canary hop
(``refusal_reason``: which failures another version may answer instead)."""

from __future__ import annotations

from serve_app.errors import ServeAppError
from serve_app.graph.result import classify_error

TOO_LARGE_FOR_TRANSPORT = (
    "its answer is larger than Serve's replica gRPC message cap "
    "(RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH, 4 MiB by default): send fewer rows per "
    "request, or declare the pipeline with transport: object_store"
)
"""Message of a call whose answer did not fit the by-value transport."""


def classify_serve_error(exc: BaseException) -> tuple[int, str]:
    """Status and message of a failed model call, including Serve's own errors."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, BackPressureError):
        return 503, "overloaded, retry later"
    if isinstance(exc, (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError)):
        return 503, "model unavailable, retry later"
    if is_message_too_large(exc):
        return 413, TOO_LARGE_FOR_TRANSPORT
    return classify_error(exc)


def is_message_too_large(exc: BaseException) -> bool:
    """Whether a handle call failed because a message passed the gRPC cap: the caller's
    channel refuses the answer with RESOURCE_EXHAUSTED (``grpc.aio.AioRpcError``, or the
    ``RuntimeError`` Serve raises for an error on a request the replica had accepted)."""
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in str(
            exc.details()
        )
    text = str(exc)
    return (
        isinstance(exc, RuntimeError) and "RESOURCE_EXHAUSTED" in text and "larger than max" in text
    )


def refusal_reason(exc: BaseException) -> str | None:
    """Why a handle call got no answer because its callee could not take it, or None.

    ``"overloaded"``: Serve's back-pressure, or the callee's own 429. ``"unavailable"``:
    no replica (the deployment failed, or the chosen replica is gone), a dead or
    unreachable actor, or the callee's own 503 (not ready, stuck). ``"too_large"``: the
    request or the answer passed the by-value transport's gRPC cap. None: the callee
    answered with an error of its own (a 4xx, or a 500 that another try would repeat).
    """
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    if isinstance(exc, BackPressureError):
        return "overloaded"
    if isinstance(exc, (DeploymentUnavailableError, ReplicaUnavailableError, RayActorError)):
        return "unavailable"
    if is_message_too_large(exc):
        return "too_large"
    status = exc.status_code if isinstance(exc, ServeAppError) else None
    if status == 429:
        return "overloaded"
    if status == 503:
        return "unavailable"
    return None
