"""Collate/split and length-aware planning helpers (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.server.batching import flatten_rows, plan_forwards, run_planned, split_rows


def test_flatten_and_split_roundtrip() -> None:
    rows, counts = flatten_rows([["a"], ["b", "c"], ["d"]])
    assert rows == ["a", "b", "c", "d"]
    assert counts == [1, 2, 1]
    out = {"y": np.arange(4)[:, None]}
    parts = split_rows(out, counts)
    assert [p["y"][:, 0].tolist() for p in parts] == [[0], [1, 2], [3]]


def test_split_rejects_wrong_row_count() -> None:
    with pytest.raises(ValueError, match="output 'y' has 3 rows, expected 4"):
        split_rows({"y": np.zeros((3, 1))}, [2, 2])


def test_plan_none_keeps_one_forward_in_order() -> None:
    assert plan_forwards([5, 1, 3], None) == [[0, 1, 2]]
    assert plan_forwards([], 10) == []


def test_plan_groups_by_length_under_budget() -> None:
    lengths = [100, 10, 12, 11, 90]
    groups = plan_forwards(lengths, max_batch_tokens=200)
    assert groups == [[1, 3, 2], [4, 0]]
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 200


def test_plan_oversized_row_gets_own_forward() -> None:
    assert plan_forwards([500, 5], max_batch_tokens=100) == [[1], [0]]


def test_run_planned_restores_order() -> None:
    rows = [3, 1, 2, 5]
    calls: list[list[int]] = []

    def forward(items: list[int]) -> dict[str, np.ndarray]:
        calls.append(items)
        return {"y": np.array(items, dtype=np.float32)[:, None] * 10}

    out = run_planned(rows, [[1, 2], [0, 3]], forward)
    assert calls == [[1, 2], [3, 5]]
    assert out["y"][:, 0].tolist() == [30, 10, 20, 50]
