"""The graph's defects found in review, each pinned by a test that failed before its fix:
a switch on a BOOL tensor, calls left running after a failure or a caller gone, no
per-node deadline, and a required node silently skipped behind an optional or gated one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from graph_doubles import SPECS, FakeBackend, pipeline, run
from pydantic import ValidationError

from serve_app.errors import ConfigError, InvalidInput, NodeError, OutputNotProduced
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.nodes import SwitchCase
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.tensor_types import infer_specs
from serve_app.models.base import ModelSpecs, TensorSpec
from serve_app.protocol.grpc_codec import GRPC_STATUS


def with_urgency_switch(**case: Any) -> dict[str, Any]:
    p = pipeline()
    p["nodes"] += [
        {"name": "u", "model": "urgent", "inputs": {"input": "embed.embedding"}},
        {"name": "sw", "kind": "switch", "source": "u.urgent", "reduce": "first", "cases": [
            {**case, "to": "b"}]},
    ]  # fmt: skip
    return p


# --- a switch on a BOOL tensor ---------------------------------------------------------


def test_equals_true_stays_a_boolean_and_matches_a_bool_tensor() -> None:
    assert SwitchCase.model_validate({"equals": True, "to": "b"}).equals is True
    assert SwitchCase.model_validate({"equals": 1, "to": "b"}).equals == 1.0
    p = with_urgency_switch(equals=True)
    infer_specs(PipelineConfig.model_validate(p), SPECS)
    result = run(p, FakeBackend())
    assert result.outputs["mean"].shape == (2, 2)  # 'b' was chosen: every row is urgent
    assert "b" not in result.parameters().get("skipped", {})
    p["nodes"][-1]["reduce"] = "min"  # every row urgent: the min of a BOOL is a boolean
    assert "mean" in run(p, FakeBackend()).outputs
    p["nodes"][-1]["cases"][0]["equals"] = False
    assert "mean" not in run(p, FakeBackend()).outputs


def test_equals_must_fit_the_tensor_it_reads() -> None:
    for case, message in [
        ({"equals": "yes"}, r"compares 'u.urgent' \(BOOL\) with 'yes', which only a BYTES"),
        ({"equals": 1}, r"compares 'u.urgent' \(BOOL\) with 1.0, which only a FP16 or FP32"),
    ]:
        p = with_urgency_switch(**case)
        with pytest.raises(ConfigError, match=message):
            infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = with_urgency_switch(equals=True)
    p["nodes"][-1]["reduce"] = "mean"
    with pytest.raises(ConfigError, match=r"compares the mean of 'u.urgent' \(a number\) with"):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = pipeline()
    p["nodes"].append({"name": "sw", "kind": "switch", "source": "a.confidence",
                       "cases": [{"equals": True, "to": "b"}]})  # fmt: skip
    with pytest.raises(ConfigError, match=r"'a.confidence' \(FP32\) with True, which only a BOOL"):
        infer_specs(PipelineConfig.model_validate(p), SPECS)


# --- nothing keeps running for an answer nobody reads ------------------------------------


def test_a_failure_cancels_the_calls_still_in_flight() -> None:
    backend = FakeBackend(fail={"head": InvalidInput("bad rows")})
    backend.delays_s["head2"] = 30.0
    start = time.monotonic()
    with pytest.raises(NodeError) as e:
        run(pipeline(), backend)
    assert (e.value.node, e.value.status_code) == ("a", 400)
    assert time.monotonic() - start < 5
    assert backend.cancelled == ["b"]
    assert ("end", "b") not in backend.events


def test_a_caller_gone_cancels_every_call_in_flight() -> None:
    backend = FakeBackend(delay_s=30.0)
    executor = GraphExecutor(PipelineConfig.model_validate(pipeline()), backend)

    async def call_then_leave() -> None:
        task = asyncio.create_task(executor.run({"text": np.array(["x"], dtype=object)}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        still_running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert still_running == []

    asyncio.run(call_then_leave())
    assert sorted(backend.cancelled) == ["a", "b", "embed"]


# --- per-node deadlines ----------------------------------------------------------------


def test_an_optional_node_past_its_deadline_degrades_and_is_cancelled() -> None:
    p = pipeline()
    p["nodes"][2].update(optional=True, timeout_s=0.2)
    p["nodes"][3]["mode"] = "dict"
    p["outputs"] = {"label": "a.label", "a": "both.a", "b": "both.b"}
    backend = FakeBackend()
    backend.delays_s["head2"] = 30.0
    start = time.monotonic()
    result = run(p, backend)
    assert time.monotonic() - start < 5
    assert sorted(result.outputs) == ["a", "label"]
    assert result.parameters() == {
        "degraded": {"b": "node 'b' (model 'head2'): no answer within 0.2 s"},
        "omitted_outputs": ["b"],
    }
    assert backend.cancelled == ["b"]


def test_a_required_node_past_its_deadline_is_a_504_naming_it() -> None:
    p = pipeline()
    p["nodes"][2]["timeout_s"] = 0.2
    backend = FakeBackend()
    backend.delays_s["head2"] = 30.0
    with pytest.raises(NodeError) as e:
        run(p, backend)
    assert (e.value.node, e.value.status_code, e.value.message) == (
        "b",
        504,
        "node 'b' (model 'head2'): no answer within 0.2 s",
    )
    assert backend.cancelled == ["b"]
    assert GRPC_STATUS[504].name == "DEADLINE_EXCEEDED"
    with pytest.raises(ValidationError, match="greater than 0"):
        PipelineConfig.model_validate(pipeline(nodes=[{**p["nodes"][0], "timeout_s": 0}]))


# --- a required node must not hang off one that may not run ------------------------------


def test_a_required_node_reading_an_optional_or_gated_node_is_refused() -> None:
    p = pipeline()
    p["nodes"][1]["optional"] = True
    p["nodes"].append({"name": "c", "model": "head", "inputs": {"input": "a.probabilities"}})
    p["outputs"]["c"] = "c.label"
    with pytest.raises(
        ValidationError,
        match=r"required node 'c' reads 'a', which may not run \('a' is optional\); make 'c' "
        "optional",
    ):
        PipelineConfig.model_validate(p)
    p["nodes"][-1]["optional"] = True
    PipelineConfig.model_validate(p)  # an optional reader is skipped with it, by design

    p = pipeline()
    p["nodes"] += [
        {"name": "sw", "kind": "switch", "source": "a.confidence", "cases": [
            {"below": 0.5, "to": "b"}]},
        {"name": "c", "model": "head", "inputs": {"input": "both.output"}},
    ]  # fmt: skip
    p["outputs"]["c"] = "c.label"
    with pytest.raises(
        ValidationError,
        match=r"required node 'c' reads 'both', which may not run \('b' runs only when switch "
        r"'sw' chooses it\)",
    ):
        PipelineConfig.model_validate(p)


# --- an output the client asked for is never dropped silently ----------------------------


def test_a_requested_output_that_was_not_produced_is_a_422_naming_it_and_why() -> None:
    p = pipeline()
    p["nodes"].append({"name": "sw", "kind": "switch", "source": "a.confidence",
                       "cases": [{"below": 0.5, "to": "b"}]})  # fmt: skip
    result = run(p, FakeBackend())  # a's confidence is 0.9: 'b' is not chosen
    assert result.omitted_outputs == ["mean"]
    result.check_requested(["label"])  # asked only for what was produced
    with pytest.raises(OutputNotProduced) as e:
        result.check_requested(["label", "mean"])
    assert (e.value.status_code, e.value.message) == (
        422,
        "requested output(s) not produced on this request: 'mean' (node 'both': mean needs "
        "'b.probabilities', which is missing); leave them out of 'outputs' to get what was "
        "produced",
    )


# --- an answer too large for Serve's gRPC message cap is refused at config time -----------


def test_a_node_whose_coalesced_answer_exceeds_the_message_cap_is_refused() -> None:
    wide = {
        **SPECS,
        "head2": ModelSpecs(SPECS["head2"].inputs, (TensorSpec("big", "FP32", (-1, 4096)),)),
    }
    p = pipeline(outputs={"label": "a.label", "big": "b.big"})
    p["nodes"] = p["nodes"][:3]
    with pytest.raises(
        ConfigError,
        match=r"node 'b': model 'head2' answers 4.0 MiB for coalesce.max_rows=256 rows, above "
        r"the 3 MiB a gRPC call may carry .* lower coalesce.max_rows or use transport: "
        "object_store",
    ):
        infer_specs(PipelineConfig.model_validate(p), wide)
    for fix in ({"coalesce": {"max_rows": 128}}, {"transport": "object_store"}, {"coalesce": None}):
        infer_specs(PipelineConfig.model_validate({**p, **fix}), wide)
