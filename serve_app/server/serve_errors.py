"""Status and message for a failed call through a DeploymentHandle: Serve's own errors
(back-pressure, an unavailable deployment or a dead replica) and ours (``classify_error``).
Used by the pipeline router over HTTP and by the gRPC methods."""

from __future__ import annotations

from serve_app.graph.executor import classify_error


def classify_serve_error(exc: BaseException) -> tuple[int, str]:
    """Status and message of a failed model call, including Serve's own errors."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, BackPressureError):
        return 503, "overloaded, retry later"
    if isinstance(exc, (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError)):
        return 503, "model unavailable, retry later"
    return classify_error(exc)
