"""Typed errors that carry their HTTP status.

One pickling rule: every error passes all its constructor arguments, in order, to
``super().__init__`` (they become ``args``, which is what pickle replays), so it
survives the trip across Ray processes (a replica raising in ``__init__``, in a batch
or in a pipeline node reaches the ingress or the controller intact). One mapper in
``serve_app.server.http`` turns them into responses.
"""

from __future__ import annotations


class ServeAppError(Exception):
    """Base error. ``status_code`` is what the HTTP layer answers with."""

    status_code: int = 500

    def __init__(self, message: str, *details: object) -> None:
        super().__init__(message, *details)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServeAppError):
    """Malformed tensor, shape or datatype mismatch (HTTP 400)."""

    status_code = 400


class SchemaViolation(ServeAppError):
    """Request body does not follow the wire schema (HTTP 422)."""

    status_code = 422


class OutputNotProduced(ServeAppError):
    """An output the request named in ``outputs`` was not produced on this request (its
    branch was not chosen, or an optional node degraded): OIP returns every requested
    output, so the request fails instead of dropping it silently."""

    status_code = 422


class ModelNotFound(ServeAppError):
    """Unknown model or version (HTTP 404)."""

    status_code = 404


class PayloadTooLarge(ServeAppError):
    """Request body above the configured limit (HTTP 413)."""

    status_code = 413


class ClientClosedRequest(ServeAppError):
    """The client went away before the answer (HTTP 499, the code Serve's ingress and
    nginx count it under): nobody reads the answer, but the request metrics count it."""

    status_code = 499


class ServiceUnavailable(ServeAppError):
    """Not ready or overloaded (HTTP 503, with ``Retry-After``)."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, retry_after_s)
        self.retry_after_s = retry_after_s


class NodeError(ServeAppError):
    """A pipeline node failed; answered with the node's own status, tagged with its name."""

    def __init__(self, message: str, node: str, status_code: int = 500) -> None:
        super().__init__(message, node, status_code)
        self.node = node
        self.status_code = status_code


class ConfigError(ServeAppError):
    """Configuration that cannot work (raised at build time, never during serving)."""

    status_code = 500


class RepositoryError(ServeAppError):
    """A model repository problem. The message always names model, version and file."""

    status_code = 503


class RepositoryNotMounted(RepositoryError):
    """The repository root does not exist (volume not mounted)."""


class ModelVersionNotFound(RepositoryError):
    """The model or the requested version is absent from the repository."""


class ManifestError(RepositoryError):
    """The manifest is missing or unreadable."""


class IntegrityError(RepositoryError):
    """A weight file is missing, has the wrong size or the wrong sha256."""


class PublishError(ServeAppError):
    """Publishing into the repository failed (bad name, existing version, bad source)."""

    status_code = 400


class DeployError(ServeAppError):
    """A rollout was refused before deploying, or Serve failed it (CLI exit 2)."""
