"""Fused nodes (``placement: fused``): declaration rules, and the executor taking their
outputs from their host's one call (no Ray)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest
from graph_doubles import SPECS, FakeBackend, pipeline, run
from pydantic import ValidationError

from serve_app.config import AppConfig
from serve_app.errors import ConfigError, InvalidInput, NodeError, ServiceUnavailable
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.fused import FusedCall, FusedStep, node_answer, run_fused
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.tensor_types import infer_specs


def fused(*names: str, **changes: Any) -> dict[str, Any]:
    """The base pipeline with ``names`` fused into their upstream."""
    p = pipeline(**changes)
    for node in p["nodes"]:
        if node["name"] in names:
            node["placement"] = "fused"
    return p


def test_fused_heads_come_back_in_their_hosts_one_call() -> None:
    separate = run(pipeline(), FakeBackend())
    backend = FakeBackend()
    result = run(fused("a", "b"), backend)
    started = [name for kind, name in backend.events if kind == "start"]
    assert started == ["embed"]  # one call: the heads never left embed's replica
    assert [name for kind, name in backend.events if kind == "fused"] == ["a", "b"]
    assert backend.fused_calls == {"embed": FusedCall("p", ("a", "b"))}
    assert result.outputs["label"].tolist() == separate.outputs["label"].tolist()
    np.testing.assert_array_equal(result.outputs["mean"], separate.outputs["mean"])
    assert result.parameters() == {}


def test_a_fused_node_may_read_another_fused_node() -> None:
    p = fused("a", "c")
    p["nodes"].append({"name": "c", "model": "head2", "inputs": {"input": "a.probabilities"}})
    p["nodes"][-1]["placement"] = "fused"
    p["outputs"]["c"] = "c.label"
    backend = FakeBackend()
    result = run(p, backend)
    assert backend.fused_calls["embed"] == FusedCall("p", ("a", "c"))
    assert result.outputs["c"].tolist() == ["yes", "yes"]


def test_an_optional_fused_node_that_fails_degrades_only_itself() -> None:
    p = fused("a", "b")
    p["nodes"][2]["optional"] = True
    p["outputs"]["b"] = "b.label"
    result = run(p, FakeBackend(fail={"head2": InvalidInput("bad rows")}))
    assert result.outputs["label"].tolist() == ["yes", "yes"]  # its fused sibling answered
    assert result.degraded == {"b": "node 'b' (model 'head2', fused into 'embed'): bad rows"}
    assert result.omitted_why["b"].startswith("node 'b'")


def test_a_required_fused_node_that_fails_fails_the_request_with_its_status() -> None:
    failure = ServiceUnavailable("head is busy", 2)
    with pytest.raises(NodeError) as info:
        run(fused("a", "b"), FakeBackend(fail={"head2": failure}))
    assert (info.value.node, info.value.status_code) == ("b", 503)
    assert info.value.message == "node 'b' (model 'head2', fused into 'embed'): head is busy"


def test_a_gated_fused_node_runs_in_the_host_but_counts_only_when_chosen() -> None:
    p = fused("a", "b")
    p["nodes"].append(
        {
            "name": "sw",
            "kind": "switch",
            "source": "a.confidence",
            "cases": [{"below": 0.5, "to": "b"}],
        }
    )
    backend = FakeBackend()
    result = run(p, backend)
    assert ("fused", "b") in backend.events  # computed with the batch ...
    assert result.skipped["b"] == "not chosen by switch 'sw'"  # ... and dropped
    assert "mean" not in result.outputs


def test_a_separate_node_reads_a_fused_nodes_output() -> None:
    p = fused("a")
    p["nodes"].append({"name": "after", "model": "head2", "inputs": {"input": "a.probabilities"}})
    p["outputs"]["after"] = "after.label"
    backend = FakeBackend()
    result = run(p, backend)
    np.testing.assert_array_equal(
        backend.received["after"]["input"], np.tile([0.9, 0.1], (2, 1)).astype(np.float32)
    )
    assert result.outputs["after"].tolist() == ["yes", "yes"]


def test_timing_and_node_observations_name_fused_nodes() -> None:
    seen: list[tuple[str, str]] = []
    executor = GraphExecutor(
        PipelineConfig.model_validate(fused("a", "b")),
        backend := FakeBackend(),
        observe_node=lambda node, outcome, _s: seen.append((node, outcome)),
    )
    backend.graph = executor.pipeline
    text = np.array(["x"], dtype=object)
    result = asyncio.run(executor.run({"text": text}, {"timing": True}))
    assert sorted(seen) == [("a", "ok"), ("b", "ok"), ("embed", "ok")]
    timing = result.timing_ms
    assert timing is not None and timing["a"]["start"] == timing["embed"]["start"]
    assert timing["a"]["end"] >= timing["embed"]["end"]


def _two_sources(p: dict[str, Any]) -> None:
    p["nodes"][3] = {
        "name": "both",
        "model": "head",
        "placement": "fused",
        "inputs": {"input": "a.probabilities", "x": "b.probabilities"},
    }
    p["outputs"]["mean"] = "both.label"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["nodes"][0].update(placement="fused"),
            "fused node 'embed' must read only one model node's outputs (it runs inside that "
            "node's replica); it reads ['request']",
        ),
        (_two_sources, "fused node 'both' must read only one model node's outputs"),
        (
            lambda p: p["nodes"][1].update(placement="fused", timeout_s=1.0),
            "node 'a': a fused node runs inside its host's call and has no deadline of its own",
        ),
    ],
)
def test_fused_declarations_that_cannot_run_are_refused(change: Any, message: str) -> None:
    p = pipeline()
    change(p)
    with pytest.raises(ValidationError, match=re.escape(message)):
        PipelineConfig.model_validate(p)


def app(p: dict[str, Any], **models: dict[str, Any]) -> AppConfig:
    declared = [{"name": n} | models.get(n, {}) for n in SPECS]
    return AppConfig.model_validate({"models": declared, "pipelines": [p]})


def test_a_model_without_a_deployment_must_be_fused_everywhere() -> None:
    assert app(fused("a", "b"), head={"standalone": False}).model("head").standalone is False
    with pytest.raises(ValidationError, match=r"nodes \['p/a'\] call it as a separate"):
        app(pipeline(), head={"standalone": False})
    with pytest.raises(ValidationError, match="no pipeline runs it"):
        app(fused("a", "b"), urgent={"standalone": False})


def test_staged_hosts_cannot_fuse() -> None:
    stages = {"stages": [{"layers": [0, 3]}, {"layers": [3, 6]}]}
    with pytest.raises(ValidationError, match="host model 'enc' is staged; fusing needs plain"):
        app(fused("a", "b"), enc=stages)


def test_fused_nodes_are_type_checked_like_any_node() -> None:
    p = fused("a", "b")
    p["nodes"][1]["model"] = "small"  # wants 8 features, gets embed's 4
    with pytest.raises(ConfigError, match="pipeline 'p' node 'a': input 'input' of model 'small'"):
        infer_specs(PipelineConfig.model_validate(p), SPECS)


def test_run_fused_keys_outputs_and_failures_per_node() -> None:
    host = {"embedding": np.ones((3, 4), dtype=np.float32)}
    steps = [
        FusedStep("ok", {"input": "embed.embedding"}),
        FusedStep("bad", {"input": "embed.embedding"}),
        FusedStep("after-bad", {"input": "bad.out"}),
    ]

    def step(s: FusedStep, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if s.node == "bad":
            raise InvalidInput("no")
        return {"out": values["input"].sum(axis=1)}

    answer = run_fused(steps, "embed", host, step, lambda e: (400, str(e)))
    assert sorted(answer) == ["bad!", "ok/out"]  # after-bad left to the router
    assert node_answer(answer, "ok")["out"].tolist() == [4.0, 4.0, 4.0]  # type: ignore[index]
    assert node_answer(answer, "bad") == (400, "no")
    assert len(answer["bad!"]) == 3  # one entry per row: splits like any output
