"""A minimal router for a model deployment's own OIP routes.

The model deployment is on the hot path, so it handles HTTP with Serve's plain
``__call__(request)`` entry point and this table instead of FastAPI's routing,
dependency solving and middleware stack (see loadtest/results for the measured gain).
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.errors import ServeAppError


class NotFound(ServeAppError):
    """No such route (HTTP 404)."""

    status_code = 404


class MethodNotAllowed(ServeAppError):
    """Route exists, method does not (HTTP 405, with ``Allow``)."""

    status_code = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message, allow)
        self.allow = allow


@dataclass(frozen=True)
class Route:
    """A matched model route: ``action`` is ``metadata``, ``ready`` or ``infer``."""

    action: str
    version: str | None


_ACTIONS = {(): ("GET", "metadata"), ("ready",): ("GET", "ready"), ("infer",): ("POST", "infer")}


def match(method: str, path: str, prefix: str) -> Route:
    """Match ``path`` (the full URL path) under the model's route ``prefix``.

    Routes: ``""``, ``/ready``, ``/infer``, each also under ``/versions/{v}``.

    Raises:
        NotFound: unknown path. MethodNotAllowed: known path, wrong method.
    """
    if not (path == prefix or path.startswith(prefix + "/")):
        raise NotFound(f"no route for {path}")
    parts = tuple(p for p in path[len(prefix) :].split("/") if p)
    version = None
    if parts[:1] == ("versions",):
        if len(parts) < 2:
            raise NotFound(f"no route for {path}")
        version, parts = parts[1], parts[2:]
    entry = _ACTIONS.get(parts)
    if entry is None:
        raise NotFound(f"no route for {path}")
    allowed, action = entry
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        allow = "GET, HEAD" if allowed == "GET" else allowed
        raise MethodNotAllowed(f"{method} not allowed on {path}; use {allowed}", allow)
    return Route(action, version)
