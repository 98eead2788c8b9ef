"""Run a pipeline for one request: concurrent where the graph allows, chained without
waiting where one model feeds the next. Free of Ray; the backend that calls models is
injected (DeploymentHandles in serving, plain coroutines in unit tests).

Every node is a task started at once. A model node whose inputs all come from one
other model node is *chained*: it is submitted with that node's pending result, so it is
queued at once and the router never waits in between. How the tensors travel is the
backend's affair: by reference through Ray's object store (``transport: object_store``,
replica to replica), or by value through the router (``transport: grpc``, the default,
where the upstream result crosses into the router and back out). Other nodes wait for
the values they need. Nodes that read the same tensor run concurrently (fan-out). A
fused node (``placement: fused``) is not called: its host's call runs it, and its outputs
are taken from the host's answer (``serve_app.graph.fused``). A ``per_row`` switch routes
each row on its own: its target runs on its rows only, and a partial mean places them
back by row.

Failures: a required node's failure fails the request with that node's status and
message (the earliest failed node in topological order, so a chained node that failed
because its upstream did is not blamed). An optional node's failure, a switch branch
not taken, or a missing upstream value skips the node; its outputs are omitted and the
response parameters say why. A node with ``timeout_s`` that has not answered in time is
cancelled: degraded when optional, else the request fails with 504 naming it.

When the request ends early (a required node failed, or the caller went away), every
call still in flight is cancelled through the backend, so no replica keeps computing an
answer nobody will read, and every node task is awaited before ``run`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serve_app.errors import InvalidInput, NodeError
from serve_app.graph.combine import combine, reduce_value, switch_target
from serve_app.graph.fused import FusedCall, node_answer
from serve_app.graph.nodes import (
    COMBINE_OUTPUT,
    PARAMETERS,
    REQUEST,
    SWITCH_OUTPUT,
    CombineNode,
    ModelNode,
    SwitchNode,
    split_ref,
)
from serve_app.graph.result import (
    Classifier,
    GraphResult,
    Outcome,
    Skipped,
    Tensors,
    classify_error,
)
from serve_app.graph.rows import mean_by_row, row_value, take_rows
from serve_app.graph.spec import PipelineConfig
from serve_app.graph.structure import (
    dependencies,
    fused_hosts,
    gates,
    row_subsets,
    topological_order,
)

logger = logging.getLogger("ray.serve")


class NodeBackend(Protocol):
    """Calls models. ``submit`` must not block: it starts the call and returns an
    awaitable. ``tensors`` is a dict of arrays, or the pending result of an earlier
    ``submit`` (the backend passes it on unresolved); ``rename`` maps each model input
    to the key it has in ``tensors``."""

    def submit(
        self, node: ModelNode, tensors: Any, rename: dict[str, str], fused: FusedCall | None
    ) -> Awaitable[Tensors]:
        """Start ``node``'s model on ``tensors``; with ``fused``, its replica also runs
        those fused nodes and returns their outputs in the same answer (``graph.fused``)."""
        ...

    def cancel(self, pending: Any) -> None:
        """Best effort: stop a call ``submit`` started whose answer is no longer wanted."""
        ...


TIMING_PARAMETER = "timing"
"""Request parameter that asks for per-node timing (``parameters.timing_ms``)."""

NodeObserver = Callable[[str, str, float], None]
"""Told ``(node, outcome, seconds)`` when a model node's call ends. Outcomes: ``ok``,
``failed``, ``degraded`` (an optional node failed), ``timeout``, ``skipped`` (its
upstream did not run) and ``cancelled`` (the request ended first)."""


class _NodeTimeout(Exception):
    """A node's call outlived its ``timeout_s``."""


async def _resolve(pending: Awaitable[Tensors]) -> Tensors:
    return await pending


@dataclass
class _Run:
    inputs: Tensors
    parameters: Mapping[str, Any]
    unavailable: Mapping[str, str]
    tasks: dict[str, asyncio.Task[Outcome]] = field(default_factory=dict)
    submitted: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    started_s: float = field(default_factory=time.perf_counter)
    called_s: dict[str, float] = field(default_factory=dict)
    """Model node -> ``time.perf_counter()`` when its call started."""
    rows: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    """Node answering for some rows only (``per_row`` switch) -> (its row indices, the
    request's row count)."""
    routes: dict[str, list[str]] = field(default_factory=dict)
    """``per_row`` switch -> the target of each row ("" for none)."""
    timing_ms: dict[str, dict[str, float]] | None = None

    def mark(self, node: str, key: str) -> None:
        """Record when ``node`` reached ``key`` (start or end), when timing is on."""
        if self.timing_ms is not None:
            elapsed_ms = round((time.perf_counter() - self.started_s) * 1e3, 3)
            self.timing_ms.setdefault(node, {})[key] = elapsed_ms


class GraphExecutor:
    """Executes one pipeline; reusable across requests (holds no per-request state).

    Args:
        pipeline: A validated pipeline.
        backend: Calls the models (see ``NodeBackend``).
        classify: Maps a model call's exception to a status and message.
        observe_node: Told how each model node call ended and how long it took
            (metrics); None: nobody is told.
    """

    def __init__(
        self,
        pipeline: PipelineConfig,
        backend: NodeBackend,
        classify: Classifier = classify_error,
        observe_node: NodeObserver | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.classify = classify
        self.observe_node = observe_node
        self.order = topological_order(pipeline)
        self.rank = {name: i for i, name in enumerate(self.order)}
        self.gate_of = gates(pipeline)
        self.nodes = {n.name: n for n in pipeline.nodes}
        self.hosts = fused_hosts(pipeline)
        """Fused node -> the separate model node whose call runs it."""
        self.fused_calls = {
            host: FusedCall(
                pipeline.name, tuple(n for n in self.order if self.hosts.get(n) == host)
            )
            for host in set(self.hosts.values())
        }
        """Host node -> the fused nodes its calls run."""
        self.subsets = row_subsets(pipeline)
        """Node -> the ``per_row`` switch whose rows it answers for."""
        self.chained = {
            n.name: deps[0]
            for n in pipeline.nodes
            if isinstance(n, ModelNode)
            and not n.fused
            and len(deps := dependencies(n)) == 1
            and all(split_ref(r)[0] != REQUEST for r in n.inputs.values())
            and isinstance(up := self.nodes[deps[0]], ModelNode)
            and not up.fused
            and n.name not in self.subsets  # its rows are chosen after its upstream ran
        }
        """Model node -> the model node it is chained to (reads only that node's outputs)."""

    async def run(
        self,
        inputs: Tensors,
        parameters: Mapping[str, Any] | None = None,
        unavailable: Mapping[str, str] | None = None,
    ) -> GraphResult:
        """Run the graph on one request's decoded inputs.

        Args:
            inputs: The request's tensors by input name.
            parameters: The request's parameters (a switch may read them).
            unavailable: Models known not to be serving -> why. Their nodes are not
                called: an optional one is degraded, a required one fails with 503.

        Raises:
            NodeError: a required node failed (its status, message and name).
            InvalidInput: a pipeline input is missing.
        """
        missing = [i.name for i in self.pipeline.inputs if i.name not in inputs]
        if missing:
            raise InvalidInput(
                f"pipeline {self.pipeline.name!r}: missing input(s) {missing}; got {sorted(inputs)}"
            )
        loop = asyncio.get_running_loop()
        run = _Run(inputs=inputs, parameters=parameters or {}, unavailable=unavailable or {})
        if run.parameters.get(TIMING_PARAMETER) is True:
            run.timing_ms = {}
        for name in self.order:
            node = self.nodes[name]
            if isinstance(node, ModelNode) and not node.fused:
                run.submitted[name] = loop.create_future()
        for name in self.order:
            run.tasks[name] = asyncio.create_task(self._node(name, run), name=f"node:{name}")
        try:
            await asyncio.wait(run.tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
            for name in self.order:  # earliest failure first
                task = run.tasks[name]
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._stop(run)
        return self._collect(run)

    async def _stop(self, run: _Run) -> None:
        """Cancel the calls and node tasks still running, then wait for the tasks."""
        for name, fut in run.submitted.items():
            pending = fut.result() if fut.done() else None
            if pending is not None and not run.tasks[name].done():
                self.backend.cancel(pending)
        unfinished = [task for task in run.tasks.values() if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
        for task in run.tasks.values():  # a node that failed because another did: seen
            if not task.cancelled():
                task.exception()

    def _collect(self, run: _Run) -> GraphResult:
        result = GraphResult(outputs={}, timing_ms=run.timing_ms)
        for name in self.order:
            outcome = run.tasks[name].result()
            if isinstance(outcome, Skipped):
                target = result.degraded if outcome.degraded else result.skipped
                target[name] = outcome.reason
        for out, ref in self.pipeline.outputs.items():
            value = self._value_now(ref, run)
            source = split_ref(ref)[0]
            if isinstance(value, Skipped):
                own = value.reason.startswith(f"node {source!r}")
                result.omitted_why[out] = (
                    value.reason if own else f"node {source!r}: {value.reason}"
                )
            else:
                result.outputs[out] = value
                if source in run.rows:
                    result.rows[out] = run.rows[source][0].tolist()
        return result

    def _value_now(self, ref: str, run: _Run) -> np.ndarray | Skipped:
        source, tensor = split_ref(ref)
        if source == REQUEST:
            return run.inputs[tensor]
        outcome = run.tasks[source].result()
        if isinstance(outcome, Skipped):
            return outcome
        return self._pick(source, tensor, outcome)

    def _pick(self, source: str, tensor: str, outcome: Tensors) -> np.ndarray | Skipped:
        node = self.nodes[source]
        if tensor not in outcome and isinstance(node, CombineNode):
            return Skipped(f"node {source!r} has no {tensor!r}: its input was missing")
        if tensor not in outcome:
            raise NodeError(
                f"node {source!r} returned no tensor {tensor!r} (got {sorted(outcome)})", source
            )
        return outcome[tensor]

    async def _value(self, ref: str, run: _Run) -> np.ndarray | Skipped:
        source, tensor = split_ref(ref)
        if source == REQUEST:
            return run.inputs[tensor]
        outcome = await run.tasks[source]
        if isinstance(outcome, Skipped):
            return Skipped(f"needs {ref!r}, but node {source!r} did not run")
        return self._pick(source, tensor, outcome)

    async def _node(self, name: str, run: _Run) -> Outcome:
        node = self.nodes[name]
        try:
            gate = self.gate_of.get(name)
            if gate is not None:
                decision = await run.tasks[gate]
                if isinstance(decision, Skipped):
                    return Skipped(f"not chosen by switch {gate!r}")
                if gate in run.routes:  # per row: this node answers for its rows
                    picked = [i for i, t in enumerate(run.routes[gate]) if t == name]
                    if not picked:
                        return Skipped(f"not chosen by switch {gate!r} for any row")
                    run.rows[name] = (np.asarray(picked), len(run.routes[gate]))
                elif decision[SWITCH_OUTPUT][0] != name:
                    return Skipped(f"not chosen by switch {gate!r}")
            if isinstance(node, ModelNode) and node.fused:
                return await self._fused(node, run)
            if isinstance(node, ModelNode):
                return await self._model(node, run)
            if isinstance(node, CombineNode):
                return await self._combine(node, run)
            return await self._switch(node, run)
        finally:
            if run.timing_ms is not None and name in run.timing_ms:
                run.mark(name, "end")
            fut = run.submitted.get(name)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _model(self, node: ModelNode, run: _Run) -> Outcome:
        reason = run.unavailable.get(node.model)
        if reason is not None:
            tagged = f"node {node.name!r} (model {node.model!r}) is not ready: {reason}"
            if node.optional:
                return Skipped(tagged, degraded=True)
            raise NodeError(tagged, node.name, 503)
        upstream = self.chained.get(node.name)
        if upstream is not None:
            pending_upstream = await run.submitted[upstream]
            if pending_upstream is None:
                return Skipped(f"needs node {upstream!r}, which did not run")
            rename = {inp: split_ref(ref)[1] for inp, ref in node.inputs.items()}
            pending = self.backend.submit(
                node, pending_upstream, rename, self.fused_calls.get(node.name)
            )
        else:
            values: Tensors = {}
            rows = run.rows.get(node.name)
            for inp, ref in node.inputs.items():
                value = await self._value(ref, run)
                if isinstance(value, Skipped):
                    return value
                values[inp] = value if rows is None else take_rows(value, rows, ref)
            pending = self.backend.submit(
                node, values, {k: k for k in values}, self.fused_calls.get(node.name)
            )
        run.submitted[node.name].set_result(pending)
        run.mark(node.name, "start")
        called_s = run.called_s[node.name] = time.perf_counter()
        outcome = "failed"
        try:
            answer = await self._answer(node, pending)
            outcome = "ok"
            return answer
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except _NodeTimeout:
            outcome = "timeout"
            self.backend.cancel(pending)
            tagged = (
                f"node {node.name!r} (model {node.model!r}): no answer within {node.timeout_s:g} s"
            )
            if node.optional:
                logger.warning("pipeline %s degraded: %s", self.pipeline.name, tagged)
                return Skipped(tagged, degraded=True)
            raise NodeError(tagged, node.name, 504) from None
        except Exception as e:
            if upstream is not None:  # blame the upstream node if it is what failed
                up = await run.tasks[upstream]
                if isinstance(up, Skipped):
                    outcome = "skipped"
                    return Skipped(f"needs node {upstream!r}, which did not run")
            status, message = self.classify(e)
            tagged = f"node {node.name!r} (model {node.model!r}): {message}"
            if node.optional:
                outcome = "degraded"
                logger.warning("pipeline %s degraded: %s", self.pipeline.name, tagged)
                return Skipped(tagged, degraded=True)
            if status >= 500:
                logger.error("pipeline %s: %s", self.pipeline.name, tagged, exc_info=e)
            raise NodeError(tagged, node.name, status) from None
        finally:
            self._observe(node.name, outcome, called_s)

    async def _fused(self, node: ModelNode, run: _Run) -> Outcome:
        """A fused node's outputs, out of its host's answer (no call of its own)."""
        upstream = dependencies(node)[0]
        if isinstance(await run.tasks[upstream], Skipped):
            return Skipped(f"needs node {upstream!r}, which did not run")
        host = self.hosts[node.name]
        answer = run.tasks[host].result()  # done: the upstream is the host or waited for it
        assert not isinstance(answer, Skipped)
        if run.timing_ms is not None:
            run.timing_ms[node.name] = {"start": run.timing_ms[host]["start"]}
        got = node_answer(answer, node.name)
        if isinstance(got, dict):
            self._observe(node.name, "ok", run.called_s[host])
            if host in run.rows:  # the host ran on some rows only: so did this node
                run.rows[node.name] = run.rows[host]
            elif node.name in run.rows:  # computed on every row; routed some of them
                rows = run.rows[node.name]
                return {k: take_rows(v, rows, f"{node.name}.{k}") for k, v in got.items()}
            return got
        status, message = got
        tagged = f"node {node.name!r} (model {node.model!r}, fused into {host!r}): {message}"
        self._observe(node.name, "degraded" if node.optional else "failed", run.called_s[host])
        if not node.optional:
            raise NodeError(tagged, node.name, status)
        logger.warning("pipeline %s degraded: %s", self.pipeline.name, tagged)
        return Skipped(tagged, degraded=True)

    def _observe(self, node: str, outcome: str, since_s: float) -> None:
        """Tell the observer how ``node``'s call (started at ``since_s``) ended."""
        if self.observe_node is not None:
            self.observe_node(node, outcome, time.perf_counter() - since_s)

    @staticmethod
    async def _answer(node: ModelNode, pending: Any) -> Tensors:
        """``await pending``, within the node's ``timeout_s`` when it has one."""
        if node.timeout_s is None:
            result: Tensors = await pending
            return result
        waiter = asyncio.ensure_future(_resolve(pending))
        try:
            done, _ = await asyncio.wait({waiter}, timeout=node.timeout_s)
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        if not done:
            waiter.cancel()
            raise _NodeTimeout
        return waiter.result()

    async def _combine(self, node: CombineNode, run: _Run) -> Outcome:
        values: dict[str, np.ndarray] = {}
        for key, ref in node.inputs.items():
            value = await self._value(ref, run)
            if isinstance(value, Skipped):
                if node.mode != "dict" and not node.partial:
                    return Skipped(f"{node.mode} needs {ref!r}, which is missing")
                continue
            values[key] = value
        if not values:
            return Skipped("every input is missing")
        run.mark(node.name, "start")
        placed = {
            k: run.rows[source]
            for k in values
            if (source := split_ref(node.inputs[k])[0]) in run.rows
        }
        try:
            if placed:  # a partial mean over rows that several branches answered
                return {COMBINE_OUTPUT: mean_by_row(values, placed)}
            return combine(node.mode, values, node.labels)
        except InvalidInput as e:
            raise NodeError(
                f"node {node.name!r} ({node.mode}): {e.message}", node.name, 400
            ) from None

    async def _switch(self, node: SwitchNode, run: _Run) -> Outcome:
        if node.per_row:
            return await self._switch_rows(node, run)
        if node.source.startswith(PARAMETERS + "."):
            value: Any = run.parameters.get(node.source[len(PARAMETERS) + 1 :])
        else:
            array = await self._value(node.source, run)
            if isinstance(array, Skipped):
                return array
            try:
                value = reduce_value(array, node.reduce)
            except InvalidInput as e:
                raise NodeError(
                    f"node {node.name!r} (switch): {e.message}", node.name, 400
                ) from None
        run.mark(node.name, "start")
        target = switch_target(node, value)
        branch = np.empty(1, dtype=object)
        branch[0] = target or ""
        return {SWITCH_OUTPUT: branch}

    async def _switch_rows(self, node: SwitchNode, run: _Run) -> Outcome:
        """``reduce: per_row``: the target of each row, by its own value."""
        array = await self._value(node.source, run)
        if isinstance(array, Skipped):
            return array
        if array.ndim != 1:
            raise NodeError(
                f"node {node.name!r} (switch): routes rows by a tensor of shape "
                f"{list(array.shape)}; reduce: per_row needs one value per row",
                node.name,
                400,
            )
        run.mark(node.name, "start")
        targets = [switch_target(node, row_value(v)) or "" for v in array]
        run.routes[node.name] = targets
        branch = np.empty(len(targets), dtype=object)
        branch[:] = targets
        return {SWITCH_OUTPUT: branch}
