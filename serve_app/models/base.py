"""The adapter contract between the serving layer and a model runtime.

An adapter never sees HTTP. ``prepare`` turns one request's decoded input tensors into
rows (items); ``forward`` runs any number of rows and returns stacked outputs in the
same order. The deployment batches rows of many requests in between.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, OIP datatype and shape (-1 for a variable dimension) of an input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """OIP metadata form."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpecs:
    """A model's declared inputs and outputs (what its metadata endpoint publishes)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass
class ModelInfo:
    """Static facts about a loaded model, for metadata and logs."""

    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str
    extra: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(ABC):
    """A loaded model. Subclasses load in ``__init__`` from a verified version folder."""

    info: ModelInfo

    @abstractmethod
    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """Validate one request's inputs and split them into rows.

        Raises:
            InvalidInput: on a missing input or a wrong datatype or shape.
        """

    def item_length(self, item: Any) -> int:
        """Cost of one row for length-aware batching (token count for text)."""
        return 1

    @abstractmethod
    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Run rows; each returned array has ``len(items)`` rows, in order."""

    @abstractmethod
    def warmup_items(self, n: int) -> list[Any]:
        """``n`` representative rows of the largest size a request may have."""
