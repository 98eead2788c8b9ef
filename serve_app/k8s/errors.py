"""Typed errors of the RayService client.

They derive from :class:`serve_app.errors.ServeAppError`, so the CLI's single handler
prints them, and they keep what the API server said: ``status_code`` (the HTTP code of
the ``Status`` object), ``reason`` (``NotFound``, ``AlreadyExists``, ``Conflict``...) and
``message`` (the server's own text, e.g. ``rayservices.ray.io "demo" not found``).

Every constructor passes all of its arguments to ``super().__init__``, and the base
stores them as ``args``, so a pickled error is rebuilt with the same fields.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from serve_app.errors import ServeAppError

if TYPE_CHECKING:
    from serve_app.k8s.status import RayServiceStatus


class KubernetesError(ServeAppError):
    """Base of every error raised by :mod:`serve_app.k8s`."""

    status_code = 500

    def __init__(self, message: str, *details: Any) -> None:
        super().__init__(message)
        # ServeAppError keeps only the message; pickle rebuilds from ``args``.
        self.args = (message, *details)


class KubernetesApiError(KubernetesError):
    """The API server answered with an error ``Status`` (or could not be reached)."""

    def __init__(self, message: str, status_code: int = 500, reason: str = "") -> None:
        super().__init__(message, status_code, reason)
        self.status_code = status_code
        self.reason = reason


class RayServiceNotFound(KubernetesApiError):
    """The RayService does not exist (HTTP 404, reason ``NotFound``)."""

    def __init__(self, message: str, status_code: int = 404, reason: str = "NotFound") -> None:
        super().__init__(message, status_code, reason)


class RayServiceConflict(KubernetesApiError):
    """HTTP 409: a stale ``resourceVersion`` (reason ``Conflict``) or a duplicate name."""

    def __init__(self, message: str, status_code: int = 409, reason: str = "Conflict") -> None:
        super().__init__(message, status_code, reason)


class RayServiceAlreadyExists(RayServiceConflict):
    """HTTP 409 with reason ``AlreadyExists``: create found an object of that name."""

    def __init__(self, message: str, status_code: int = 409, reason: str = "AlreadyExists") -> None:
        super().__init__(message, status_code, reason)


class KubernetesUnreachable(KubernetesApiError):
    """No HTTP answer at all: connection refused, DNS, TLS or read timeout."""

    def __init__(
        self, message: str, status_code: int = 503, reason: str = "ServiceUnavailable"
    ) -> None:
        super().__init__(message, status_code, reason)


class KubeConfigError(KubernetesError):
    """Neither the kubeconfig (file, context) nor the in-cluster config could be loaded."""


class InvalidManifest(KubernetesError):
    """A document that is not a ``ray.io/v1`` RayService with a name."""

    status_code = 400


class RayServiceWaitTimeout(KubernetesError):
    """``wait_ready`` ran out of time. ``last_status`` is the last status read, if any."""

    status_code = 504

    def __init__(
        self,
        message: str,
        name: str,
        timeout_s: float,
        last_status: RayServiceStatus | None = None,
    ) -> None:
        super().__init__(message, name, timeout_s, last_status)
        self.name = name
        self.timeout_s = timeout_s
        self.last_status = last_status


class RayServiceTerminating(KubernetesApiError):
    """The RayService is being deleted (``deletionTimestamp`` set, finalizers pending)."""

    def __init__(self, message: str, status_code: int = 409, reason: str = "Terminating") -> None:
        super().__init__(message, status_code, reason)

    @classmethod
    def of(cls, obj: dict[str, Any]) -> RayServiceTerminating:
        """The error for an object that carries ``deletionTimestamp``."""
        meta = obj["metadata"]
        finalizers = ", ".join(meta.get("finalizers") or ()) or "none"
        return cls(
            f"rayservice {meta.get('namespace')}/{meta['name']} is being deleted (since "
            f"{meta['deletionTimestamp']}, finalizers: {finalizers}); wait until it is gone "
            "(`serve-app k8s delete --wait`), then apply again"
        )


class RayServiceDeleteTimeout(KubernetesError):
    """``wait_deleted`` ran out of time: finalizers still hold the object."""

    status_code = 504

    def __init__(self, message: str, name: str, timeout_s: float) -> None:
        super().__init__(message, name, timeout_s)
        self.name = name
        self.timeout_s = timeout_s


class RayServiceFailed(KubernetesError):
    """The RayService reached a state that waiting cannot fix (e.g. ``InitializingTimeout``)."""

    def __init__(self, message: str, name: str, last_status: RayServiceStatus) -> None:
        super().__init__(message, name, last_status)
        self.name = name
        self.last_status = last_status


class UpgradeStalled(KubernetesError):
    """A new cluster did not come to serve in time; the active cluster still serves.

    ``previous_path`` is the file holding the spec from before the upgrade (``None``:
    not saved), which aborts the upgrade when applied."""

    status_code = 504

    def __init__(
        self, message: str, name: str, last_status: RayServiceStatus, previous_path: str | None
    ) -> None:
        super().__init__(message, name, last_status, previous_path)
        self.name = name
        self.last_status = last_status
        self.previous_path = previous_path


class KubeRayTooOld(KubernetesError):
    """The installed KubeRay CRD lacks fields the manifests use (an older operator)."""

    status_code = 412


def error_from_api_exception(exc: Any) -> KubernetesApiError:
    """Map a ``kubernetes.client.ApiException`` to the matching typed error.

    The body of an API error is a ``Status`` object; its ``message``, ``reason`` and
    ``code`` are kept verbatim. A body that is not a ``Status`` (a proxy's HTML page)
    still yields an error with the HTTP code and the start of the body.

    Args:
        exc: The exception (anything with ``status``, ``reason`` and ``body``).

    Returns:
        The typed error; the caller raises it ``from exc``.
    """
    status_code = int(getattr(exc, "status", 0) or 0)
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    reason = str(getattr(exc, "reason", "") or "")
    message = ""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    details: dict[str, Any] = {}
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        message = str(parsed.get("message") or "")
        reason = str(parsed.get("reason") or reason)
        status_code = int(parsed.get("code") or status_code)
        details = parsed.get("details") or {}
    if not message:
        snippet = (body or "").strip()[:200]
        message = f"HTTP {status_code} {reason}" + (f": {snippet}" if snippet else "")
    if status_code == 404:
        if details.get("name"):
            return RayServiceNotFound(message, status_code, reason)
        # No object named: the path itself is unknown, i.e. the CRD is not served.
        hint = " (is the KubeRay CRD rayservices.ray.io/v1 installed?)"
        return KubernetesApiError(message + hint, status_code, reason)
    if status_code == 409:
        cls = RayServiceAlreadyExists if reason == "AlreadyExists" else RayServiceConflict
        return cls(message, status_code, reason)
    return KubernetesApiError(message, status_code, reason)
