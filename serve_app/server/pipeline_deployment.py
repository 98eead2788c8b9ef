"""``PipelineRouter``: serves a pipeline (or a staged model) at ``/v2/models/<name>``.

It decodes the OIP request once, runs the graph through DeploymentHandles (tensors go
between model replicas as numpy arrays through Ray, never as JSON) and encodes one
answer. Model nodes call the models' own deployments, so a model used by a pipeline
and served on its own is one deployment that batches and autoscales for both. With
``router: host`` the router loads its pipeline's one host model itself (with the nodes
fused into it) and calls it in-process (``LocalBackend``): no handle, no hop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from serve_app.deploy.app_args import APP_ARGS, PipelineAppArgs, StagedAppArgs
from serve_app.deploy.pipeline_check import read_model_specs
from serve_app.errors import ModelNotFound, ServiceUnavailable
from serve_app.graph.executor import GraphExecutor
from serve_app.graph.fused import FusedCall
from serve_app.graph.nodes import ModelNode
from serve_app.graph.result import Tensors
from serve_app.graph.spec import CoalesceConfig
from serve_app.graph.staged import staged_pipeline
from serve_app.graph.structure import edges, model_nodes
from serve_app.graph.tensor_types import infer_specs
from serve_app.models.base import ModelSpecs
from serve_app.protocol import oip
from serve_app.repository.loader import ModelRepository
from serve_app.schema_base import model_route_prefix
from serve_app.server.coalesce import NodeCoalescer
from serve_app.server.grpc_methods import GrpcPipelineMethods
from serve_app.server.http import error_response, json_response, read_request_body
from serve_app.server.job_submit import JobSubmitter, response_parts, wants_async
from serve_app.server.metrics import VIA_HTTP, VIA_JOB, RayModelMetrics, RayNodeMetrics
from serve_app.server.node_status import NodeStatus
from serve_app.server.routes import match
from serve_app.server.serve_errors import classify_serve_error

logger = logging.getLogger("ray.serve")

NODE_READY_TIMEOUT_S = 2.0
"""How long ``/ready`` waits for each model node to answer."""


class HandleBackend:
    """Calls model nodes through DeploymentHandles (``infer_tensors``).

    Args:
        handles: Model name -> handle of its deployment.
        transport: ``grpc`` (by value, pickled numpy) or ``object_store`` (by reference).
        coalesce: With ``grpc``, concurrent requests' rows for one model share a call
            (``server/coalesce.py``); None: one call per request per node.
    """

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        transport: str = "grpc",
        coalesce: CoalesceConfig | None = None,
    ) -> None:
        options: dict[str, Any] = {"method_name": "infer_tensors"}
        if transport == "grpc":
            options.update(
                _by_reference=False,
                request_serialization="pickle",
                response_serialization="pickle",
            )
        # Options applied once: ``handle.method`` builds new handle options on every access.
        self.handles = {k: h.options(**options) for k, h in handles.items()}
        self.coalesce = coalesce if transport == "grpc" else None
        self.coalescers: dict[tuple[str, FusedCall | None], NodeCoalescer] = {}
        """(model, fused nodes its calls run) -> the coalescer of those calls."""

    def _coalescer(self, model: str, fused: FusedCall | None) -> NodeCoalescer | None:
        if self.coalesce is None:
            return None
        coalescer = self.coalescers.get((model, fused))
        if coalescer is None:
            call = _stacked_call(self.handles[model], fused)
            coalescer = NodeCoalescer(call, self.coalesce.max_in_flight, self.coalesce.max_rows)
            self.coalescers[(model, fused)] = coalescer
        return coalescer

    def submit(
        self, node: ModelNode, tensors: Any, rename: dict[str, str], fused: FusedCall | None
    ) -> Any:
        """Start the call (with ``fused``, the replica runs those nodes too). Coalesced:
        the request's rows join the node's next call with the same fused nodes (a
        chained node's upstream answer is awaited here first: by value it crosses the
        router anyway). Otherwise an upstream ``DeploymentResponse`` is passed on
        unresolved."""
        coalescer = self._coalescer(node.model, fused)
        if coalescer is None:
            return self.handles[node.model].remote(tensors, rename, fused)
        if isinstance(tensors, dict):
            return coalescer.submit({k: tensors[v] for k, v in rename.items()})
        return asyncio.ensure_future(self._chained(coalescer, tensors, rename))

    @staticmethod
    async def _chained(coalescer: NodeCoalescer, upstream: Any, rename: dict[str, str]) -> Any:
        values = await upstream
        return await coalescer.submit({k: values[v] for k, v in rename.items()})

    def cancel(self, pending: Any) -> None:
        """Cancel a call whose answer is no longer wanted (best effort, as Serve does)."""
        pending.cancel()


class LocalBackend:
    """Calls the one model a ``router: host`` pipeline runs, in this process: the model
    replica object (``ModelDeployment``'s class, with its fused nodes) batches the
    requests of this router replica with ``@serve.batch`` like any model replica."""

    def __init__(self, replica: Any) -> None:
        self.replica = replica

    def submit(
        self, node: ModelNode, tensors: Any, rename: dict[str, str], fused: FusedCall | None
    ) -> Any:
        """Start the model on ``tensors`` (awaiting a chained upstream first)."""
        return asyncio.ensure_future(self._call(tensors, rename, fused))

    async def _call(self, tensors: Any, rename: dict[str, str], fused: FusedCall | None) -> Any:
        if not isinstance(tensors, dict):
            tensors = await tensors
        return await self.replica.infer_tensors(tensors, rename, fused)

    def cancel(self, pending: Any) -> None:
        """Cancel the call (its rows leave the batch if it has not started)."""
        pending.cancel()


def _stacked_call(handle: DeploymentHandle, fused: FusedCall | None) -> Callable[[Tensors], Any]:
    """A model call on already renamed, stacked tensors."""
    return lambda stacked: handle.remote(stacked, {k: k for k in stacked}, fused)


@serve.deployment(
    name="PipelineRouter", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0}
)
class PipelineRouter(GrpcPipelineMethods):
    """Router of one pipeline or staged model (over HTTP and gRPC).

    Args:
        args: ``PipelineAppArgs`` or ``StagedAppArgs``.
        node_handles: Handles of the stage deployments (a staged model binds them);
            a pipeline looks its models' deployments up by app name instead.
        model_specs: Tensor specs per model (tests); None reads the manifests.
    """

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        args: dict[str, Any],
        node_handles: dict[str, DeploymentHandle] | None = None,
        model_specs: dict[str, ModelSpecs] | None = None,
    ) -> None:
        parsed = APP_ARGS.validate_python(args)
        self.host: Any = None
        """``router: host``: the model replica object this router runs in-process."""
        if isinstance(parsed, StagedAppArgs):
            self._init_staged(parsed, node_handles or {})
        elif isinstance(parsed, PipelineAppArgs):
            self._init_pipeline(parsed, model_specs)
        else:
            raise TypeError(f"PipelineRouter cannot serve args of kind {parsed.kind!r}")
        self.route_prefix = model_route_prefix(self.pipeline.name)
        queue = parsed.jobs if isinstance(parsed, PipelineAppArgs) else parsed.model.jobs
        self.jobs = None if queue is None else JobSubmitter(queue, self.http.retry_after_s)
        backend: LocalBackend | HandleBackend = (
            LocalBackend(self.host)
            if self.host is not None
            else HandleBackend(self.handles, self.pipeline.transport, self.pipeline.coalesce)
        )
        self.executor = GraphExecutor(
            self.pipeline,
            backend,
            classify_serve_error,
            RayNodeMetrics(self.pipeline.name, self.version).observe_node,
        )
        # Requests and end-to-end latency under the pipeline's name; its models report
        # their own batches, waits and compute.
        self.metrics = RayModelMetrics(self.pipeline.name, self.version)
        self.node_status.start()  # the first request already knows which nodes are down
        logger.info("%s ready: nodes %s", self.pipeline.name, [n.name for n in self.pipeline.nodes])

    def _init_pipeline(
        self, args: PipelineAppArgs, model_specs: dict[str, ModelSpecs] | None
    ) -> None:
        self.pipeline = args.pipeline
        self.http = args.http
        self.version = str(args.pipeline.version)
        self.platform = "ensemble"
        # Datatype and shape of every edge, before serving anything: a mismatch fails
        # this replica with a message naming the node.
        if model_specs is None:
            targets = {m: (t.folder, t.version) for m, t in args.models.items()}
            model_specs = read_model_specs(args.repository.root, targets)
        specs = infer_specs(self.pipeline, model_specs)
        self.inputs = [specs.tensors[f"request.{i.name}"] for i in self.pipeline.inputs]
        self.outputs = list(specs.outputs)
        apps = {m: t.app for m, t in args.models.items() if t.app is not None}
        self.handles = {
            m: serve.get_deployment_handle(args.models[m].deployment, app_name=app)
            for m, app in apps.items()
        }
        if args.handle_loop == "same":
            for handle in self.handles.values():
                # Serve's per-handle switch (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP is the
                # process-wide one); must run on the loop the calls are made from.
                handle._init(_run_router_in_separate_loop=False)
        self.node_status = NodeStatus(
            {m: (app, args.models[m].deployment) for m, app in apps.items()}
        )
        if args.host is not None:
            from serve_app.server.model_deployment import ModelDeployment

            replica_class = ModelDeployment.func_or_class  # type: ignore[attr-defined]
            self.host = replica_class(args.host.model_dump(mode="json"))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``router: host``: the host model's ``user_config`` (batching), applied to it."""
        if self.host is not None:
            self.host.reconfigure(user_config)

    def check_health(self) -> None:
        """``router: host``: the host model's health check; else nothing to check."""
        if self.host is not None:
            self.host.check_health()

    def _init_staged(self, args: StagedAppArgs, handles: dict[str, DeploymentHandle]) -> None:
        from serve_app.models.specs import declared_specs

        self.pipeline = staged_pipeline(args.model.name, len(args.stages))
        self.http = args.model.http
        repo = ModelRepository(args.model.repository.root)
        folder = args.model.repository_folder
        version = repo.resolve(folder, args.model.version)
        specs = declared_specs(
            repo.root / folder / str(version), repo.read_manifest(folder, version)
        )
        self.version = str(version)
        self.platform = "pytorch_transformers_staged"
        self.inputs = list(specs.inputs)
        self.outputs = list(specs.outputs)
        self.handles = handles
        self.node_status = NodeStatus({})  # stages live and fail with this app

    # --- composition ---------------------------------------------------------------

    async def infer_tensors(
        self, tensors: Tensors, rename: dict[str, str], fused: FusedCall | None = None
    ) -> Tensors:
        """Run the graph as a node of another graph (same contract as a model; nothing
        can be fused into a router, so ``fused`` is always None)."""
        result = await self.executor.run(
            {k: tensors[v] for k, v in rename.items()}, None, self.node_status.unserving()
        )
        return result.outputs

    # --- HTTP ----------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata, plus the graph (nodes and edges) for a pipeline."""
        body: dict[str, Any] = {
            "name": self.pipeline.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
        }
        if self.platform == "ensemble":
            body["nodes"] = [
                n.model_dump(mode="json", exclude_defaults=True) | {"kind": n.kind}
                for n in self.pipeline.nodes
            ]
            body["edges"] = [list(e) for e in edges(self.pipeline)]
        return body

    async def _check_nodes_ready(self) -> None:
        if self.host is not None:
            self.host.runtime.require()
            return
        required = sorted(
            {n.model for n in model_nodes(self.pipeline) if not (n.optional or n.fused)}
        )

        async def ping(model: str) -> str | None:
            try:
                await asyncio.wait_for(self.handles[model].metadata.remote(), NODE_READY_TIMEOUT_S)
                return None
            except Exception as e:  # any failure means not ready; the reason is reported
                return f"{model}: {type(e).__name__}"

        failures = [f for f in await asyncio.gather(*(ping(m) for m in required)) if f]
        if failures:
            raise ServiceUnavailable(
                f"pipeline {self.pipeline.name!r} is not ready: {'; '.join(failures)}",
                self.http.retry_after_s,
            )

    async def _infer(self, request: Request) -> Response:
        start_s = time.perf_counter()
        try:
            body, header_length = await read_request_body(request, self.http)
            response = await self._answer(body, header_length)
        except Exception as e:
            response = error_response(e, self.http.retry_after_s)
        latency_s = time.perf_counter() - start_s
        self.metrics.observe_request(response.status_code, latency_s, None, VIA_HTTP)
        return response

    async def _answer(self, body: bytes, header_length: int | None) -> Response:
        decoded = oip.decode_request(body, header_length, self.http.limits)
        result = await self.executor.run(
            decoded.inputs, decoded.parameters, self.node_status.unserving()
        )
        if decoded.requested_outputs is not None:
            result.check_requested(decoded.requested_outputs)
        payload, headers = oip.encode_response(
            self.pipeline.name, self.version, decoded, result.outputs, result.parameters()
        )
        return Response(payload, headers=headers)

    async def answer_body(
        self, body: bytes, header_length: int | None, version: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Handle entry of job consumers: what ``POST .../infer`` answers to ``body``, as
        ``(status, headers, payload)``."""
        start_s = time.perf_counter()
        try:
            self._check_version(version)
            response = await self._answer(body, header_length)
        except Exception as e:
            response = error_response(e, self.http.retry_after_s)
        latency_s = time.perf_counter() - start_s
        self.metrics.observe_request(response.status_code, latency_s, None, VIA_JOB)
        return response_parts(response)

    def _check_version(self, version: str | None) -> None:
        if version is not None and version != self.version:
            raise ModelNotFound(
                f"{self.pipeline.name!r} version {version} not found "
                f"(serving version {self.version})"
            )

    async def _submit_job(self, request: Request, version: str | None) -> Response:
        """``Prefer: respond-async``: check the request's encoding, then queue it."""
        assert self.jobs is not None
        body, header_length = await read_request_body(request, self.http)
        oip.decode_request(body, header_length, self.http.limits)
        return await self.jobs.submit(body, header_length, version)

    async def __call__(self, request: Request) -> Response:
        """HTTP entry point: ``/v2/models/<name>[/versions/<v>][/ready|/infer]``."""
        try:
            route = match(request.method, request.url.path, self.route_prefix)
            self._check_version(route.version)
            if route.action == "infer":
                if self.jobs is not None and wants_async(request):
                    return await self._submit_job(request, route.version)
                return await self._infer(request)
            if route.action == "ready":
                await self._check_nodes_ready()
                return json_response({"name": self.pipeline.name, "ready": True})
            return json_response(self.metadata())
        except Exception as e:  # one mapper for every error, never a traceback
            return error_response(e, self.http.retry_after_s)
