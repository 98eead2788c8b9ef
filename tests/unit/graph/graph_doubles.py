"""Stand-ins shared by the graph tests: tensor specs of a few models, a base pipeline,
and a backend that runs numpy per model (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from serve_app.config import AppConfig
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.fused import FusedCall, FusedStep, run_fused
from serve_app.graph.nodes import ModelNode
from serve_app.graph.result import classify_error
from serve_app.graph.spec import PipelineConfig
from serve_app.models.base import ModelSpecs, TensorSpec

TEXT = (TensorSpec("text", "BYTES", (-1,)),)
EMB = (TensorSpec("embedding", "FP32", (-1, 4)),)
HEAD_IN = (TensorSpec("input", "FP32", (-1, 4)),)
CLASSIFY = (
    TensorSpec("probabilities", "FP32", (-1, 2)),
    TensorSpec("label", "BYTES", (-1,)),
    TensorSpec("confidence", "FP32", (-1,)),
)
SPECS = {
    "enc": ModelSpecs(TEXT, EMB),
    "head": ModelSpecs(HEAD_IN, CLASSIFY),
    "head2": ModelSpecs(HEAD_IN, CLASSIFY),
    "small": ModelSpecs((TensorSpec("input", "FP32", (-1, 8)),), CLASSIFY),
    "urgent": ModelSpecs(HEAD_IN, (TensorSpec("urgent", "BOOL", (-1,)),)),
    "mixed": ModelSpecs(HEAD_IN, CLASSIFY),
}


def pipeline(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "p",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "nodes": [
            {"name": "embed", "model": "enc", "inputs": {"text": "request.text"}},
            {"name": "a", "model": "head", "inputs": {"input": "embed.embedding"}},
            {"name": "b", "model": "head2", "inputs": {"input": "embed.embedding"}},
            {
                "name": "both",
                "kind": "combine",
                "mode": "mean",
                "inputs": {"a": "a.probabilities", "b": "b.probabilities"},
            },
        ],
        "outputs": {"label": "a.label", "mean": "both.output"},
    }
    base.update(changes)
    return base


def app_with(p: dict[str, Any]) -> AppConfig:
    return AppConfig.model_validate({"models": [{"name": n} for n in SPECS], "pipelines": [p]})


class FakeBackend:
    """Runs a numpy function per model after resolving a chained upstream, like Ray does;
    records what each call received and when it started."""

    def __init__(self, fail: dict[str, Exception] | None = None, delay_s: float = 0.02) -> None:
        self.fail = fail or {}
        self.delay_s = delay_s
        self.received: dict[str, Any] = {}
        self.events: list[tuple[str, str]] = []
        self.delays_s: dict[str, float] = {}
        """Model -> its own delay (else ``delay_s``)."""
        self.cancelled: list[str] = []
        self.graph: PipelineConfig | None = None
        """The pipeline being run (set by ``run``): where fused nodes are looked up."""
        self.fused_calls: dict[str, FusedCall] = {}
        """Host node -> the fused nodes its call ran."""

    def submit(
        self,
        node: ModelNode,
        tensors: Any,
        rename: dict[str, str],
        fused: FusedCall | None = None,
    ) -> asyncio.Task[Any]:
        self.received[node.name] = tensors
        if fused is not None:
            self.fused_calls[node.name] = fused
        return asyncio.get_running_loop().create_task(
            self._run(node, tensors, rename, fused), name=node.name
        )

    def cancel(self, pending: asyncio.Task[Any]) -> None:
        self.cancelled.append(pending.get_name())
        pending.cancel()

    async def _run(
        self, node: ModelNode, tensors: Any, rename: dict[str, str], fused: FusedCall | None
    ) -> dict[str, Any]:
        if not isinstance(tensors, dict):
            tensors = await tensors  # a chained upstream result
        inputs = {k: tensors[v] for k, v in rename.items()}
        self.events.append(("start", node.name))
        await asyncio.sleep(self.delays_s.get(node.model, self.delay_s))
        self.events.append(("end", node.name))
        outputs = self.compute(node.model, inputs)
        if fused is None:
            return outputs
        assert self.graph is not None
        graph = self.graph
        steps = [FusedStep(n, graph.node(n).inputs) for n in fused.nodes]  # type: ignore[union-attr]

        def run_step(step: FusedStep, values: dict[str, np.ndarray]) -> dict[str, Any]:
            self.events.append(("fused", step.node))
            return self.compute(graph.node(step.node).model, values)  # type: ignore[union-attr]

        return outputs | run_fused(steps, node.name, outputs, run_step, classify_error)

    def compute(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """The stand-in model's answer (or its configured failure)."""
        if model in self.fail:
            raise self.fail[model]
        if model == "enc":
            n = len(inputs["text"])
            return {"embedding": np.arange(n * 4, dtype=np.float32).reshape(n, 4)}
        x = inputs["input"]
        if model == "urgent":
            return {"urgent": np.ones(len(x), dtype=bool)}
        if model == "mixed":  # sure of the even rows (0.9), unsure of the odd ones (0.3)
            conf_rows = np.where(np.arange(len(x)) % 2 == 0, 0.9, 0.3).astype(np.float32)
            probs = np.stack([conf_rows, 1 - conf_rows], axis=1)
        else:
            conf = 0.9 if model == "head" else 0.6
            probs = np.tile(np.array([conf, 1 - conf], dtype=np.float32), (len(x), 1))
        label = np.array(["yes"] * len(x), dtype=object)
        return {"probabilities": probs, "label": label, "confidence": probs[:, 0]}


def run(p: dict[str, Any], backend: FakeBackend, **params: Any) -> Any:
    backend.graph = PipelineConfig.model_validate(p)
    executor = GraphExecutor(backend.graph, backend)
    text = np.array(["one", "two"], dtype=object)
    return asyncio.run(executor.run({"text": text}, params))
