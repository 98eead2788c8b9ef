"""The built-in combinators and switch rules, on numpy arrays. Pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_app.errors import InvalidInput
from serve_app.graph.nodes import ARGMAX_OUTPUTS, COMBINE_OUTPUT, SwitchNode


def combine(
    mode: str, values: dict[str, np.ndarray], labels: list[str] | None = None
) -> dict[str, np.ndarray]:
    """``concat`` (last axis), ``mean`` (element-wise), ``dict`` (pass through) or
    ``argmax`` (the label of the highest score per row, from ``labels``).

    Raises:
        InvalidInput: the tensors' shapes do not fit together at run time (e.g. a
            different number of rows), or scores of another width than ``labels``.
    """
    if mode == "dict":
        return dict(values)
    arrays = list(values.values())
    if mode == "argmax":
        return _argmax(arrays[0], labels or [])
    try:
        if mode == "concat":
            return {COMBINE_OUTPUT: np.concatenate(arrays, axis=-1)}
        if mode == "mean":
            return {COMBINE_OUTPUT: np.mean(np.stack(arrays), axis=0).astype(arrays[0].dtype)}
    except ValueError:
        shapes = {k: list(v.shape) for k, v in values.items()}
        raise InvalidInput(f"cannot {mode} tensors of shapes {shapes}") from None
    raise InvalidInput(f"unknown combine mode {mode!r}")


def _argmax(scores: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    if scores.ndim == 0 or scores.shape[-1] != len(labels):
        raise InvalidInput(
            f"argmax over scores of shape {list(scores.shape)} with {len(labels)} labels "
            "(the last axis must have one score per label)"
        )
    best = np.argmax(scores, axis=-1)
    label = np.empty(best.shape, dtype=object)
    label[...] = np.asarray(labels, dtype=object)[best]
    confidence = np.take_along_axis(scores, best[..., None], axis=-1)[..., 0]
    return {ARGMAX_OUTPUTS[0]: label, ARGMAX_OUTPUTS[1]: confidence}


def reduce_value(array: np.ndarray, how: str) -> Any:
    """One value out of a tensor for a switch: ``min``/``max``/``mean``/``first``.

    BYTES tensors only support ``first`` (decoded as UTF-8 text). A BOOL tensor's
    ``min``/``max``/``first`` is a boolean (``min``: every row true), its ``mean`` the
    share of true rows.

    Raises:
        InvalidInput: the tensor is empty, or a BYTES tensor with a numeric reduction.
    """
    if array.size == 0:
        raise InvalidInput("cannot switch on an empty tensor")
    flat = array.reshape(-1)
    if array.dtype == object:
        if how != "first":
            raise InvalidInput(f"cannot take the {how} of a BYTES tensor; use reduce: first")
        item = flat[0]
        return item.decode("utf-8", "replace") if isinstance(item, bytes) else item
    if how == "first":
        return flat[0].item()
    if array.dtype == np.bool_ and how in ("min", "max"):
        return bool(getattr(np, how)(flat))  # min: all rows true, max: any row true
    return float(getattr(np, how)(flat))


def switch_target(node: SwitchNode, value: Any) -> str | None:
    """The target of the first case that ``value`` matches, else the default."""
    for case in node.cases:
        if case.equals is not None:
            if _equal(value, case.equals):
                return case.to
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if case.below is not None and value < case.below:
            return case.to
        if case.at_least is not None and value >= case.at_least:
            return case.to
    return node.default


def _equal(value: Any, expected: bool | str | float) -> bool:
    """Equal and of the same kind: a boolean matches only a boolean, a string only a
    string, a number only a number (``True`` is not ``1``)."""
    if isinstance(expected, bool):
        return isinstance(value, bool) and value is expected
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == expected
