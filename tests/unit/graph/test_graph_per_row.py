"""``reduce: per_row``: each row goes to the branch its own value picks, the branch runs
on its rows only, and a partial mean places its answers back by row (no Ray)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from graph_doubles import SPECS, FakeBackend, run
from pydantic import ValidationError

from serve_app.errors import ConfigError
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.tensor_types import infer_specs


def per_row(placement: str = "separate", **switch: Any) -> dict[str, Any]:
    """embed -> a (sure of even rows, unsure of odd ones) -> per-row switch: unsure rows
    also go to b; the consensus is the mean of a and, where it ran, b."""
    return {
        "name": "p",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "nodes": [
            {"name": "embed", "model": "enc", "inputs": {"text": "request.text"}},
            {"name": "a", "model": "mixed", "inputs": {"input": "embed.embedding"}},
            {
                "name": "sw",
                "kind": "switch",
                "source": "a.confidence",
                "reduce": "per_row",
                "cases": [{"below": 0.5, "to": "b"}],
            }
            | switch,
            {
                "name": "b",
                "model": "head2",
                "inputs": {"input": "embed.embedding"},
                "placement": placement,
            },
            {
                "name": "consensus",
                "kind": "combine",
                "mode": "mean",
                "partial": True,
                "inputs": {"first": "a.probabilities", "second": "b.probabilities"},
            },
        ],
        "outputs": {"mean": "consensus.output", "second": "b.label", "route": "sw.branch"},
    }


@pytest.mark.parametrize("placement", ["separate", "fused"])
def test_each_row_takes_its_own_branch(placement: str) -> None:
    backend = FakeBackend()
    result = run(per_row(placement), backend)  # two rows: row 0 sure, row 1 unsure
    assert result.outputs["route"].tolist() == ["", "b"]
    if placement == "separate":  # b computed row 1 only
        assert backend.received["b"]["input"].tolist() == [[4.0, 5.0, 6.0, 7.0]]
    # row 0: a alone; row 1: the mean of a (0.3) and b (0.6)
    np.testing.assert_allclose(result.outputs["mean"], [[0.9, 0.1], [0.45, 0.55]], atol=1e-6)
    assert result.outputs["second"].tolist() == ["yes"]
    assert result.rows == {"second": [1]}
    assert result.parameters()["rows"] == {"second": [1]}
    specs = infer_specs(PipelineConfig.model_validate(per_row(placement)), SPECS)
    assert specs.tensors["sw.branch"].shape == (-1,)


def test_a_branch_no_row_takes_is_skipped() -> None:
    result = run(per_row(cases=[{"below": 0.1, "to": "b"}]), FakeBackend())
    assert result.skipped["b"] == "not chosen by switch 'sw' for any row"
    np.testing.assert_allclose(result.outputs["mean"], [[0.9, 0.1], [0.3, 0.7]], atol=1e-6)
    assert result.outputs["route"].tolist() == ["", ""]
    assert result.rows == {}


def _reads_the_branch(p: dict[str, Any]) -> None:
    p["nodes"].append({"name": "after", "model": "head", "inputs": {"input": "b.probabilities"}})
    p["outputs"]["after"] = "after.label"
    p["nodes"][3]["optional"] = True
    p["nodes"][-1]["optional"] = True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["nodes"][2].update(source="parameters.route"),
            "switch 'sw': reduce: per_row needs a tensor with one value per row; "
            "'parameters.route' is one value per request",
        ),
        (
            _reads_the_branch,
            "node 'after' reads 'b', which answers only the rows switch 'sw' routes to it "
            "(reduce: per_row); only a mean with partial: true (or a pipeline output) can read it",
        ),
        (
            lambda p: p["nodes"][4].update(partial=False),
            "node 'consensus' reads 'b', which answers only the rows switch 'sw' routes",
        ),
    ],
)
def test_what_cannot_read_routed_rows_is_refused(change: Any, message: str) -> None:
    p = per_row()
    change(p)
    with pytest.raises(ValidationError, match=re.escape(message)):
        PipelineConfig.model_validate(p)


def test_per_row_needs_one_value_per_row() -> None:
    p = per_row()
    p["nodes"][2]["source"] = "a.probabilities"  # [-1, 2]
    with pytest.raises(ConfigError, match=re.escape("reduce: per_row needs one value per row")):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
