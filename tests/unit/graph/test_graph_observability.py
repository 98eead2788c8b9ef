"""What a graph tells about itself: per-node timing in the answer (opt-in) and each
model node call's outcome and duration for the pipeline's metrics."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from graph_doubles import FakeBackend, pipeline, run

from serve_app.errors import InvalidInput, NodeError
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.spec import PipelineConfig


def test_timing_on_request_shows_each_node_that_ran() -> None:
    p = pipeline()
    p["nodes"].append({"name": "sw", "kind": "switch", "source": "a.confidence",
                       "cases": [{"below": 0.5, "to": "b"}]})  # fmt: skip
    assert "timing_ms" not in run(p, FakeBackend()).parameters()
    backend = FakeBackend()
    backend.delays_s["enc"] = 0.1
    timing = run(p, backend, timing=True).parameters()["timing_ms"]
    assert sorted(timing) == ["a", "embed", "sw"]  # 'b' and 'both' did not run
    assert all(set(t) == {"start", "end"} and t["end"] >= t["start"] for t in timing.values())
    assert timing["embed"]["end"] - timing["embed"]["start"] >= 100
    # 'a' is chained to 'embed': called at once, answered only after embed's 100 ms
    assert timing["a"]["start"] < timing["embed"]["end"] <= timing["a"]["end"]
    assert timing["sw"]["start"] >= timing["a"]["end"]


def test_each_model_node_call_is_observed_with_its_outcome() -> None:
    seen: list[tuple[str, str, float]] = []
    p = pipeline()
    p["nodes"][2].update(optional=True)
    p["nodes"][3]["mode"] = "dict"
    p["outputs"] = {"label": "a.label", "a": "both.a", "b": "both.b"}
    backend = FakeBackend(fail={"head2": InvalidInput("bad rows")})
    executor = GraphExecutor(
        PipelineConfig.model_validate(p), backend, observe_node=lambda *a: seen.append(a)
    )
    asyncio.run(executor.run({"text": np.array(["x"], dtype=object)}))
    assert sorted((n, o) for n, o, _ in seen) == [("a", "ok"), ("b", "degraded"), ("embed", "ok")]
    assert all(s >= backend.delay_s for _, _, s in seen)
    seen.clear()
    p["nodes"][2].update(optional=False, timeout_s=0.1)
    backend = FakeBackend()
    backend.delays_s["head2"] = 30.0
    executor = GraphExecutor(
        PipelineConfig.model_validate(pipeline(nodes=p["nodes"][:3] + [pipeline()["nodes"][3]])),
        backend,
        observe_node=lambda *a: seen.append(a),
    )
    with pytest.raises(NodeError):
        asyncio.run(executor.run({"text": np.array(["x"], dtype=object)}))
    assert sorted((n, o) for n, o, _ in seen) == [("a", "ok"), ("b", "timeout"), ("embed", "ok")]
