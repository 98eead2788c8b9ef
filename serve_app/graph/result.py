"""What a pipeline run produces (``GraphResult``), the outcome of a node that produced
nothing (``Skipped``), and the one default error classifier. Pure, free of Ray."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.errors import OutputNotProduced, ServeAppError

Tensors = dict[str, np.ndarray]

Classifier = Callable[[BaseException], tuple[int, str]]
"""Maps an exception raised by a model call to ``(http_status, message)``."""


def classify_error(exc: BaseException) -> tuple[int, str]:
    """Status and message of an error: ours keep theirs, anything else is a masked 500."""
    if isinstance(exc, ServeAppError):
        return exc.status_code, exc.message
    return 500, "internal error"


@dataclass(frozen=True)
class Skipped:
    """A node that produced nothing: not chosen, upstream missing, or degraded."""

    reason: str
    degraded: bool = False


@dataclass
class GraphResult:
    """What a pipeline run produced."""

    outputs: Tensors
    skipped: dict[str, str] = field(default_factory=dict)
    """Node -> why it did not run (switch, missing upstream)."""
    degraded: dict[str, str] = field(default_factory=dict)
    """Optional node -> the error it failed with."""
    omitted_why: dict[str, str] = field(default_factory=dict)
    """Omitted output -> why its node produced nothing."""
    rows: dict[str, list[int]] = field(default_factory=dict)
    """Output -> the request rows it answers for, when a ``per_row`` switch routed only
    some rows to its node (its rows are those, in order)."""
    timing_ms: dict[str, dict[str, float]] | None = None
    """Node -> ``{"start", "end"}`` in ms since the request started (``timing: true``):
    a model node from its call to its answer (so chained and fan-out overlap shows), a
    combine or switch from when its inputs were there; a node that did not run is absent."""

    @property
    def omitted_outputs(self) -> list[str]:
        """Pipeline outputs not produced on this request, in declaration order."""
        return list(self.omitted_why)

    def check_requested(self, requested: Iterable[str]) -> None:
        """Raise ``OutputNotProduced`` naming each requested output that was omitted."""
        missing = [
            f"{out!r} ({self.omitted_why[out]})" for out in requested if out in self.omitted_why
        ]
        if missing:
            raise OutputNotProduced(
                f"requested output(s) not produced on this request: {', '.join(missing)}; "
                "leave them out of 'outputs' to get what was produced"
            )

    def parameters(self) -> dict[str, Any]:
        """Response parameters describing degradation (empty when nothing was skipped)."""
        params: dict[str, Any] = {}
        if self.degraded:
            params["degraded"] = self.degraded
        if self.skipped:
            params["skipped"] = self.skipped
        if self.omitted_outputs:
            params["omitted_outputs"] = self.omitted_outputs
        if self.rows:
            params["rows"] = self.rows
        if self.timing_ms is not None:
            params["timing_ms"] = self.timing_ms
        return params


Outcome = Tensors | Skipped
