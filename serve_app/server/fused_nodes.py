"""The pipeline nodes fused into a model's replicas (``placement: fused``), loaded and run
by the host replica. Free of Ray: loaders and metrics are injected.

Each fused model is verified (sha256) and loaded from the repository like any model,
through the same ``ModelRuntime``, once per replica however many nodes use it; a
missing or corrupt file fails the host's start with a message naming the file. A call
runs the fused nodes on the host's outputs for the call's rows, after the host's
forward (``serve_app.graph.fused`` says how their outputs and failures come back).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from serve_app.deploy.app_args import FusedNodeArgs
from serve_app.errors import ServiceUnavailable
from serve_app.graph.fused import FusedCall, FusedStep, run_fused
from serve_app.graph.result import Tensors, classify_error
from serve_app.repository.loader import ModelRepository
from serve_app.server.metrics import ModelMetricsSink
from serve_app.server.runtime import AdapterLoader, ModelRuntime

LoaderFor = Callable[[FusedNodeArgs], AdapterLoader]
"""The adapter loader of a fused node's model (its ``runtime``)."""
MetricsFor = Callable[[str, str], ModelMetricsSink]
"""Metrics of a fused model, by model name and version."""
RETRY_AFTER_S = 1
"""Retry-After of a call that reached a replica of another config mid-deploy."""


def default_loader(args: FusedNodeArgs) -> AdapterLoader:
    """Loads the fused model whole with its configured runtime."""
    from serve_app.models.registry import adapter_loader_for

    return adapter_loader_for(None, args.runtime)


class FusedNodes:
    """The fused nodes of one host replica.

    Args:
        nodes: What the app args declare (possibly of several pipelines).
        repository: The host's repository.
        device: Where the host runs (fused models run there too).
        loader_for: Adapter loader per node's model (injected for tests).
        metrics_for: Metrics per fused model: batches and compute under its own name.
    """

    def __init__(
        self,
        nodes: list[FusedNodeArgs],
        repository: ModelRepository,
        device: str,
        loader_for: LoaderFor = default_loader,
        metrics_for: MetricsFor | None = None,
    ) -> None:
        self.repository = repository
        self.device = device
        self.loader_for = loader_for
        self.metrics_for = metrics_for
        self.nodes = {(n.pipeline, n.node): n for n in nodes}
        self.runtimes: dict[tuple[str, str, str], ModelRuntime] = {}
        """(folder, version policy, runtime) -> the loaded model (shared by nodes)."""
        self.metrics: dict[str, ModelMetricsSink] = {}
        self.steps: dict[FusedCall, list[FusedStep]] = {}

    def load(self) -> None:
        """Verify and load every fused model (raises ``RepositoryError`` naming the file)."""
        for args in self.nodes.values():
            key = (args.folder, str(args.version), args.runtime)
            if key in self.runtimes:
                continue
            runtime = ModelRuntime(
                self.repository, args.folder, args.version, self.loader_for(args), self.device
            )
            runtime.load(cap_to_memory=False)
            self.runtimes[key] = runtime
            if self.metrics_for is not None and args.model not in self.metrics:
                assert runtime.version is not None
                self.metrics[args.model] = self.metrics_for(
                    args.model, str(runtime.version.version)
                )

    def _runtime(self, args: FusedNodeArgs) -> ModelRuntime:
        return self.runtimes[(args.folder, str(args.version), args.runtime)]

    def run(self, call: FusedCall, host_outputs: Tensors) -> Tensors:
        """Run ``call``'s nodes on the host's outputs (blocking; call it off the loop).

        Raises:
            ServiceUnavailable: a node of ``call`` was not declared for this replica (the
                router's config and this replica's disagree while a deploy is half
                applied: a retry reaches a replica of the same config).
        """
        steps = self.steps.get(call)
        if steps is None:
            missing = [n for n in call.nodes if (call.pipeline, n) not in self.nodes]
            if missing:
                raise ServiceUnavailable(
                    f"pipeline {call.pipeline!r}: nodes {missing} are not fused into this "
                    "replica (its config is older or newer than the router's)",
                    RETRY_AFTER_S,
                )
            steps = [FusedStep(n, self.nodes[(call.pipeline, n)].inputs) for n in call.nodes]
            self.steps[call] = steps
        host = self.nodes[(call.pipeline, call.nodes[0])].host
        return run_fused(
            steps, host, host_outputs, lambda s, v: self._step(call, s, v), classify_error
        )

    def _step(self, call: FusedCall, step: FusedStep, inputs: Tensors) -> dict[str, np.ndarray]:
        args = self.nodes[(call.pipeline, step.node)]
        runtime = self._runtime(args)
        start_s = time.perf_counter()
        rows = runtime.prepare(inputs)
        outputs = runtime.forward_rows(rows)
        metrics = self.metrics.get(args.model)
        if metrics is not None:
            metrics.observe_batch(len(rows), [0.0], time.perf_counter() - start_s)
        return outputs
