"""Rows routed by a ``per_row`` switch: one row's value, the routed rows of a tensor, and
a mean that places several branches' rows back by row. Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_app.errors import InvalidInput, NodeError
from serve_app.graph.nodes import split_ref


def row_value(item: Any) -> Any:
    """One row's value as a switch case reads it (text, boolean or number)."""
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return item.item() if isinstance(item, np.generic) else item


def take_rows(value: np.ndarray, rows: tuple[np.ndarray, int], ref: str) -> np.ndarray:
    """The routed rows of a tensor that holds every row of the request.

    Raises:
        NodeError: the tensor does not have one row per request row.
    """
    indices, count = rows
    if value.ndim == 0 or len(value) != count:
        raise NodeError(
            f"{ref!r} has shape {list(value.shape)}, not one row per each of the request's "
            f"{count} rows, so rows routed by a per_row switch cannot be taken from it",
            split_ref(ref)[0],
            400,
        )
    return value[indices]


def mean_by_row(
    values: dict[str, np.ndarray], placed: dict[str, tuple[np.ndarray, int]]
) -> np.ndarray:
    """Element-wise mean per row of the inputs that answered for that row: a placed input
    (routed rows only) counts at its rows, any other at every row.

    Raises:
        InvalidInput: the inputs' shapes do not fit together.
    """
    count = next(iter(placed.values()))[1]
    first = next(iter(values.values()))
    total = np.zeros((count, *first.shape[1:]), dtype=np.float64)
    seen = np.zeros(count, dtype=np.int64)
    for key, value in values.items():
        indices = placed[key][0] if key in placed else np.arange(count)
        if value.shape[1:] != first.shape[1:] or len(value) != len(indices):
            shapes = {k: list(v.shape) for k, v in values.items()}
            raise InvalidInput(f"cannot mean tensors of shapes {shapes} by row")
        total[indices] += value
        seen[indices] += 1
    if (seen == 0).any():
        missing = np.flatnonzero(seen == 0).tolist()
        raise InvalidInput(f"no input answered for rows {missing}")
    shape = (count,) + (1,) * (first.ndim - 1)
    return (total / seen.reshape(shape)).astype(first.dtype)
