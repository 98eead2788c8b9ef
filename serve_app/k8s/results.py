"""What the RayService client's apply and delete report back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ApplyResult:
    """What :meth:`RayServiceClient.apply` did and the object the server returned."""

    action: Literal["created", "configured", "unchanged"]
    """``configured``: the spec (``generation`` moved) or the labels/annotations changed."""
    object: dict[str, Any]
    """The object as stored after the apply."""
    spec_changed: bool = False
    """``generation`` moved: KubeRay will reconcile a new spec."""
    warnings: tuple[str, ...] = ()
    """The API server's ``Warning`` headers (deprecations, ignored fields)."""

    @property
    def name(self) -> str:
        """metadata.name of the applied object."""
        return str(self.object["metadata"]["name"])

    @property
    def namespace(self) -> str:
        """metadata.namespace of the applied object."""
        return str(self.object["metadata"]["namespace"])

    @property
    def generation(self) -> int:
        """metadata.generation after the call (bumped by every spec change)."""
        return int(self.object["metadata"].get("generation", 0))


@dataclass(frozen=True)
class DeleteResult:
    """What :meth:`RayServiceClient.delete` left behind."""

    deleted: bool
    """Gone at once (no finalizer held it)."""
    object: dict[str, Any]
    """The API server's answer: the object being deleted, or a ``Status``."""

    @property
    def finalizers(self) -> tuple[str, ...]:
        """Finalizers still holding the object (KubeRay's, while it cleans up)."""
        return tuple((self.object.get("metadata") or {}).get("finalizers") or ())
