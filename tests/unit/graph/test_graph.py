"""Pipeline declaration, structure and type checks, and the executor (no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from graph_doubles import SPECS, FakeBackend, app_with, pipeline, run
from pydantic import ValidationError

from serve_app.config import AppConfig, load_app_config
from serve_app.errors import ConfigError, InvalidInput, NodeError
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.nodes import CombineNode
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.staged import staged_pipeline
from serve_app.graph.structure import edges, gates, may_be_missing, topological_order
from serve_app.graph.tensor_types import infer_specs

ROOT = Path(__file__).resolve().parents[3]

# --- declaration and structure -------------------------------------------------------


def test_demo_config_declares_the_triage_pipeline() -> None:
    app = load_app_config(ROOT / "configs/app.yaml")
    triage = app.pipeline("triage")
    assert topological_order(triage) == [
        "embed",
        "topic",
        "urgency",
        "route",
        "second-opinion",
        "consensus",
        "verdict",
    ]
    assert ("route", "second-opinion") in edges(triage)
    assert ("embed", "topic") in edges(triage) and ("embed", "urgency") in edges(triage)


def test_cycle_is_rejected_naming_the_nodes() -> None:
    nodes = [
        {"name": "x", "model": "head", "inputs": {"input": "y.probabilities"}},
        {"name": "y", "model": "head", "inputs": {"input": "x.probabilities"}},
    ]
    with pytest.raises(ValidationError, match=r"pipeline 'p': cycle through nodes \['x', 'y'\]"):
        PipelineConfig.model_validate(pipeline(nodes=nodes, outputs={"o": "x.label"}))


def test_dangling_references_name_the_node() -> None:
    bad = pipeline()
    bad["nodes"][1]["inputs"] = {"input": "nope.embedding"}
    with pytest.raises(ValidationError, match="node 'a' reads 'nope.embedding' from unknown node"):
        PipelineConfig.model_validate(bad)
    bad = pipeline()
    bad["nodes"][0]["inputs"] = {"text": "request.txt"}
    with pytest.raises(ValidationError, match="declares no input 'txt'"):
        PipelineConfig.model_validate(bad)
    bad = pipeline()
    bad["nodes"][3]["inputs"]["a"] = "a.probs"  # model outputs are known only with specs
    with pytest.raises(ConfigError, match="node 'both': reads 'a.probs', which does not exist"):
        infer_specs(PipelineConfig.model_validate(bad), SPECS)
    with pytest.raises(ValidationError, match=r"output 'x' reads 'both.nope', but node 'both'"):
        PipelineConfig.model_validate(pipeline(outputs={"x": "both.nope"}))


def test_unused_nodes_and_bad_switches_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"nodes \['b', 'both'\] feed no pipeline output"):
        PipelineConfig.model_validate(pipeline(outputs={"label": "a.label"}))
    sw = {
        "name": "sw",
        "kind": "switch",
        "source": "a.confidence",
        "cases": [{"below": 0.5, "to": "zz"}],
    }
    p = pipeline()
    p["nodes"].append(sw)
    with pytest.raises(ValidationError, match="switch 'sw' targets unknown node 'zz'"):
        PipelineConfig.model_validate(p)
    with pytest.raises(ValidationError, match="exactly one of below/at_least/equals"):
        PipelineConfig.model_validate(
            pipeline(nodes=[*pipeline()["nodes"], {**sw, "cases": [{"to": "b"}]}])
        )


def test_unknown_model_and_version_mismatch_name_the_node() -> None:
    p = pipeline()
    p["nodes"][1]["model"] = "ghost"
    with pytest.raises(ValidationError, match="pipeline 'p' node 'a': unknown model 'ghost'"):
        app_with(p)
    p = pipeline()
    p["nodes"][1]["version"] = 3
    with pytest.raises(ValidationError, match="node 'a': wants 'head' version 3, but the model"):
        app_with(p)
    with pytest.raises(ValidationError, match="duplicate model/pipeline names"):
        AppConfig.model_validate(
            {
                "models": [{"name": "enc"}, {"name": "head"}, {"name": "head2"}],
                "pipelines": [pipeline(name="enc")],
            }
        )


def test_unknown_keys_rejected_in_nodes() -> None:
    p = pipeline()
    p["nodes"][0]["batch"] = 3
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PipelineConfig.model_validate(p)


# --- datatypes and shapes ------------------------------------------------------------


def test_types_flow_through_combinators() -> None:
    specs = infer_specs(PipelineConfig.model_validate(pipeline()), SPECS)
    assert [s.to_json() for s in specs.outputs] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "mean", "datatype": "FP32", "shape": [-1, 2]},
    ]
    cat = pipeline()
    cat["nodes"][3]["mode"] = "concat"
    specs = infer_specs(PipelineConfig.model_validate(cat), SPECS)
    assert specs.outputs[1].shape == (-1, 4)


def test_datatype_and_shape_mismatches_name_node_and_specs() -> None:
    p = pipeline()
    p["nodes"][1]["inputs"] = {"input": "request.text"}
    with pytest.raises(
        ConfigError,
        match=r"pipeline 'p' node 'a': input 'input' of model 'head' is FP32 \[-1, 4\], "
        r"but 'request.text' is BYTES \[-1\]",
    ):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = pipeline()
    p["nodes"][1]["model"] = "small"
    with pytest.raises(
        ConfigError, match=r"node 'a': input 'input' of model 'small' is FP32 \[-1, 8\]"
    ):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = pipeline()
    p["nodes"][1]["inputs"] = {"inp": "embed.embedding"}
    with pytest.raises(ConfigError, match=r"takes inputs \['input'\]; the node maps \['inp'\]"):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = pipeline()
    p["nodes"][3]["inputs"] = {"a": "a.probabilities", "b": "b.label"}
    with pytest.raises(
        ConfigError, match=r"node 'both': mean of mixed datatypes \['BYTES', 'FP32'\]"
    ):
        infer_specs(PipelineConfig.model_validate(p), SPECS)
    p = pipeline()
    p["nodes"].append(
        {"name": "sw", "kind": "switch", "source": "a.label", "cases": [{"below": 1, "to": "b"}]}
    )
    with pytest.raises(
        ConfigError, match="node 'sw': compares 'a.label' \\(BYTES\\) with a threshold"
    ):
        infer_specs(PipelineConfig.model_validate(p), SPECS)


# --- executor ------------------------------------------------------------------------


def test_sequence_is_chained_and_fan_out_runs_concurrently() -> None:
    backend = FakeBackend()
    result = run(pipeline(), backend)
    # a and b got embed's pending result, not values the router had to wait for
    assert not isinstance(backend.received["a"], dict)
    assert backend.received["a"] is backend.received["b"]
    assert isinstance(backend.received["embed"], dict)
    starts = [e for e in backend.events if e[1] in ("a", "b")]
    assert starts[:2] == [("start", "a"), ("start", "b")]  # both began before either ended
    assert result.outputs["label"].tolist() == ["yes", "yes"]
    np.testing.assert_allclose(result.outputs["mean"], [[0.75, 0.25], [0.75, 0.25]])
    assert result.parameters() == {}


def test_switch_runs_the_chosen_branch_only() -> None:
    p = pipeline()
    p["nodes"].append(
        {
            "name": "sw",
            "kind": "switch",
            "source": "a.confidence",
            "reduce": "min",
            "cases": [{"below": 0.95, "to": "b"}],
        }
    )
    result = run(p, FakeBackend())
    assert result.outputs["mean"].shape == (2, 2)
    p["nodes"][-1]["cases"] = [{"below": 0.5, "to": "b"}]
    result = run(p, FakeBackend())
    assert sorted(result.outputs) == ["label"]
    assert result.parameters() == {
        "skipped": {
            "b": "not chosen by switch 'sw'",
            "both": "mean needs 'b.probabilities', which is missing",
        },
        "omitted_outputs": ["mean"],
    }


def test_switch_on_a_request_parameter() -> None:
    p = pipeline()
    p["nodes"].append(
        {
            "name": "sw",
            "kind": "switch",
            "source": "parameters.mode",
            "cases": [{"equals": "thorough", "to": "b"}],
        }
    )
    assert "mean" in run(p, FakeBackend(), mode="thorough").outputs
    assert "mean" not in run(p, FakeBackend(), mode="fast").outputs
    assert "mean" not in run(p, FakeBackend()).outputs


def test_required_node_failure_keeps_its_status_and_names_the_node() -> None:
    backend = FakeBackend(fail={"head2": InvalidInput("rows must be 4 wide")})
    with pytest.raises(NodeError) as e:
        run(pipeline(), backend)
    assert (e.value.status_code, e.value.node, e.value.message) == (
        400,
        "b",
        "node 'b' (model 'head2'): rows must be 4 wide",
    )
    with pytest.raises(NodeError) as e:
        run(pipeline(), FakeBackend(fail={"head2": RuntimeError("secret detail")}))
    assert (e.value.status_code, e.value.message) == (
        500,
        "node 'b' (model 'head2'): internal error",
    )


def test_a_chained_failure_is_blamed_on_the_upstream_node() -> None:
    with pytest.raises(NodeError) as e:
        run(pipeline(), FakeBackend(fail={"enc": InvalidInput("not UTF-8")}))
    assert (e.value.node, e.value.status_code) == ("embed", 400)


def test_optional_node_failure_degrades_the_answer() -> None:
    p = pipeline()
    p["nodes"][2]["optional"] = True
    p["nodes"][3]["mode"] = "dict"
    p["outputs"] = {"label": "a.label", "a": "both.a", "b": "both.b"}
    result = run(p, FakeBackend(fail={"head2": InvalidInput("bad rows")}))
    assert sorted(result.outputs) == ["a", "label"]
    assert result.parameters() == {
        "degraded": {"b": "node 'b' (model 'head2'): bad rows"},
        "omitted_outputs": ["b"],
    }


def test_missing_pipeline_input_is_a_400() -> None:
    executor = GraphExecutor(PipelineConfig.model_validate(pipeline()), FakeBackend())
    with pytest.raises(InvalidInput, match=r"pipeline 'p': missing input\(s\) \['text'\]"):
        asyncio.run(executor.run({"txt": np.array(["x"], dtype=object)}))


def test_unserving_models_fail_fast_or_degrade() -> None:
    backend = FakeBackend()
    executor = GraphExecutor(PipelineConfig.model_validate(pipeline()), backend)
    text = np.array(["x"], dtype=object)
    with pytest.raises(NodeError) as e:
        asyncio.run(executor.run({"text": text}, None, {"head2": "DEPLOY_FAILED: bad sha256"}))
    assert (e.value.status_code, e.value.message) == (
        503,
        "node 'b' (model 'head2') is not ready: DEPLOY_FAILED: bad sha256",
    )
    assert "b" not in backend.received
    p = pipeline()
    p["nodes"][2]["optional"] = True
    p["nodes"][3]["mode"] = "dict"
    p["outputs"] = {"a": "both.a", "b": "both.b"}
    executor = GraphExecutor(PipelineConfig.model_validate(p), FakeBackend())
    result = asyncio.run(executor.run({"text": text}, None, {"head2": "UNHEALTHY"}))
    assert sorted(result.outputs) == ["a"]
    assert result.degraded == {"b": "node 'b' (model 'head2') is not ready: UNHEALTHY"}


def test_the_demo_verdict_names_the_topic_heads_labels_in_their_order() -> None:
    """``verdict``'s labels are written in the config: they must be the heads' own."""
    from serve_app.local.demo_heads import HEADS

    verdict = load_app_config(ROOT / "configs/app.yaml").pipeline("triage").node("verdict")
    heads = {h.name: h.labels for h in HEADS}
    assert isinstance(verdict, CombineNode)
    assert tuple(verdict.labels or ()) == heads["ticket-topic"] == heads["ticket-topic-large"]


def test_a_partial_mean_averages_what_ran_and_argmax_names_the_winner() -> None:
    p = pipeline()
    p["nodes"][3]["partial"] = True
    p["nodes"].append(
        {
            "name": "sw",
            "kind": "switch",
            "source": "a.confidence",
            "cases": [{"below": 0.5, "to": "b"}],  # a is sure (0.9): b never runs
        }
    )
    p["nodes"].append(
        {
            "name": "best",
            "kind": "combine",
            "mode": "argmax",
            "labels": ["yes", "no"],
            "inputs": {"scores": "both.output"},
        }
    )
    p["outputs"] |= {"best": "best.label", "best_score": "best.confidence"}
    result = run(p, FakeBackend())
    np.testing.assert_allclose(result.outputs["mean"], [[0.9, 0.1], [0.9, 0.1]])  # a alone
    assert result.outputs["best"].tolist() == ["yes", "yes"]
    np.testing.assert_allclose(result.outputs["best_score"], [0.9, 0.9])
    assert result.skipped == {"b": "not chosen by switch 'sw'"}
    p["nodes"][4]["cases"] = [{"below": 0.95, "to": "b"}]  # now b runs: 0.9 and 0.6
    result = run(p, FakeBackend())
    np.testing.assert_allclose(result.outputs["mean"], [[0.75, 0.25], [0.75, 0.25]])
    specs = infer_specs(PipelineConfig.model_validate(p), SPECS)
    assert specs.tensors["best.label"].datatype == "BYTES"
    assert specs.tensors["best.confidence"].shape == (-1,)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"mode": "concat", "partial": True}, "partial applies to mode mean only"),
        ({"mode": "argmax"}, "labels go with mode argmax, and only there"),
        ({"mode": "mean", "labels": ["x"]}, "labels go with mode argmax, and only there"),
        (
            {"mode": "argmax", "labels": ["x", "x"], "inputs": {"s": "a.probabilities"}},
            "labels must be distinct and not empty",
        ),
        ({"mode": "argmax", "labels": ["x"]}, "argmax reads one tensor of scores"),
    ],
)
def test_combine_options_that_do_not_fit_the_mode_are_refused(
    node: dict[str, object], message: str
) -> None:
    p = pipeline()
    p["nodes"][3].update(node)
    with pytest.raises(ValidationError, match=message):
        PipelineConfig.model_validate(p)


def test_argmax_with_the_wrong_number_of_labels_is_refused_at_config_time() -> None:
    p = pipeline()
    p["nodes"][3] = {
        "name": "both",
        "kind": "combine",
        "mode": "argmax",
        "labels": ["a", "b", "c"],
        "inputs": {"scores": "a.probabilities"},
    }
    p["outputs"] = {"label": "both.label", "other": "b.label"}
    with pytest.raises(ConfigError, match="argmax over 2 scores per row with 3 labels"):
        infer_specs(PipelineConfig.model_validate(p), SPECS)


@pytest.mark.parametrize("stages", [2, 3])
def test_a_staged_model_as_a_node_has_no_details_to_lose(stages: int) -> None:
    """A staged model answers a pipeline node with its outputs only (``infer_tensors``):
    that loses nothing, because its graph is a chain of required stages, so every run
    either produces every output or fails with the stage's error."""
    graph = staged_pipeline("m", stages)
    assert may_be_missing(graph, topological_order(graph)) == {}
    assert not gates(graph)
