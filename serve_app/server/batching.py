"""Collate and split helpers for dynamic batching, free of Ray and torch.

A Serve batch is a list of requests, each with one or more rows. ``flatten_rows``
concatenates the rows, ``plan_forwards`` groups them by length so that short rows do
not pay for long ones, and ``split_rows`` gives each request its slice of the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def flatten_rows(requests: Sequence[Sequence[Any]]) -> tuple[list[Any], list[int]]:
    """Concatenate the rows of several requests; returns ``(rows, counts)``."""
    rows: list[Any] = []
    counts: list[int] = []
    for r in requests:
        rows.extend(r)
        counts.append(len(r))
    return rows, counts


def split_rows(
    outputs: dict[str, np.ndarray], counts: Sequence[int]
) -> list[dict[str, np.ndarray]]:
    """Inverse of ``flatten_rows`` for stacked outputs: one dict per request."""
    total = sum(counts)
    for name, array in outputs.items():
        if len(array) != total:
            raise ValueError(f"output {name!r} has {len(array)} rows, expected {total}")
    result = []
    start = 0
    for n in counts:
        result.append({name: array[start : start + n] for name, array in outputs.items()})
        start += n
    return result


def plan_forwards(lengths: Sequence[int], max_batch_tokens: int | None) -> list[list[int]]:
    """Group row indices into forwards, each padded to its own longest row.

    Rows are sorted by length; a forward is closed when adding the next row would make
    ``rows x longest`` exceed ``max_batch_tokens``. ``None`` keeps one forward in the
    original order. A single row longer than the budget still gets its own forward.
    """
    n = len(lengths)
    if n == 0:
        return []
    if max_batch_tokens is None:
        return [list(range(n))]
    order = sorted(range(n), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the newcomer is the longest
        if current and (len(current) + 1) * longest > max_batch_tokens:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return groups


def run_planned(
    rows: Sequence[Any],
    groups: list[list[int]],
    forward: Any,
) -> dict[str, np.ndarray]:
    """Run ``forward`` on each group and reassemble outputs in the original row order."""
    if len(groups) == 1 and groups[0] == list(range(len(rows))):
        return forward(list(rows))
    parts = [(g, forward([rows[i] for i in g])) for g in groups]
    names = parts[0][1].keys()
    out: dict[str, np.ndarray] = {}
    for name in names:
        first = parts[0][1][name]
        array = np.empty((len(rows),) + first.shape[1:], dtype=first.dtype)
        for g, res in parts:
            array[g] = res[name]
        out[name] = array
    return out
