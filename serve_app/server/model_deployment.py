"""``ModelDeployment``: one generic Serve deployment per model, answering its own OIP
routes under ``/v2/models/<name>`` (one hop from the proxy to the model).

Small requests are decoded and tokenized on the replica's event loop, large ones in a
worker thread (``server/off_loop.py``); rows of concurrent requests are merged by
``@serve.batch`` (sized in rows), and the forward runs in a worker thread so the loop
keeps accepting while a batch computes.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import BatchingConfig, model_route_prefix
from serve_app.deploy.app_args import CanaryArgs, ModelAppArgs
from serve_app.errors import ClientClosedRequest, InvalidInput, ModelNotFound
from serve_app.graph.fused import FusedCall
from serve_app.models.threads import set_intra_op_threads
from serve_app.protocol import oip
from serve_app.repository.loader import ModelRepository
from serve_app.server.batching import flatten_rows, split_rows
from serve_app.server.canary import CanaryForwarder, canary_handle
from serve_app.server.forward_pool import ForwardPool, concat_outputs
from serve_app.server.fused_nodes import FusedNodes
from serve_app.server.grpc_methods import GrpcModelMethods
from serve_app.server.http import error_response, json_response, read_request_body
from serve_app.server.inflight import InFlightBytes, Reservation
from serve_app.server.job_submit import JobSubmitter, response_parts, wants_async
from serve_app.server.metrics import (
    VIA_HTTP,
    VIA_JOB,
    VIA_PIPELINE,
    ModelMetricsSink,
    RayModelMetrics,
    device_memory_bytes,
)
from serve_app.server.off_loop import decode_and_prepare, prepare_rows
from serve_app.server.routes import match
from serve_app.server.runtime import AdapterLoader, ModelRuntime

logger = logging.getLogger("ray.serve")


def assigned_gpus() -> float:
    """This replica's ``num_gpus`` as Ray assigned it (1.0 outside Ray or without GPUs)."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray
        return 1.0
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:  # a driver (a test), not a replica
        return 1.0
    return float(context.get_assigned_resources().get("GPU", 1.0))


@dataclass(slots=True)
class PendingRows:
    """One request's rows waiting in the batcher, and when they started to wait."""

    rows: list[Any]
    enqueued_s: float
    """``time.perf_counter()`` when the request reached the batcher."""


def _rows_of(items: list[PendingRows]) -> int:
    return sum(len(item.rows) for item in items)


def _status_of(error: BaseException) -> int:
    return int(getattr(error, "status_code", 500))


CANCELLED_STATUS = ClientClosedRequest.status_code
"""Status a cancelled request is counted under: Serve cancels a request whose client
went away (its ingress counts it as 499 too), a pipeline its node calls it no longer
needs."""


@serve.deployment(name="ModelDeployment", max_ongoing_requests=64)
class ModelDeployment(GrpcModelMethods):
    """A model replica. ``args`` are ``ModelAppArgs``; ``adapter_loader``, ``metrics``
    and ``canary_handles`` (application name -> handle of its model deployment) are
    injectable so tests can run the real Serve path around a stand-in model and
    canary and read what it reports."""

    def __init__(
        self,
        args: dict[str, Any],
        adapter_loader: AdapterLoader | None = None,
        metrics: ModelMetricsSink | None = None,
        canary_handles: Callable[[str], Any] = canary_handle,
    ) -> None:
        self.args = ModelAppArgs.model_validate(args)
        self._canary_handles = canary_handles
        set_intra_op_threads(self.args.torch_threads)
        if adapter_loader is None:
            from serve_app.models.registry import adapter_loader_for

            adapter_loader = adapter_loader_for(self.args.layers, self.args.runtime)
        self.runtime = ModelRuntime(
            ModelRepository(self.args.repository.root, self.args.repository.hash_workers),
            self.args.repository_folder,
            self.args.version,
            adapter_loader,
            gpu_share=assigned_gpus(),
        )
        self.runtime.hung_forward_s = self.args.hung_forward_s
        self.batching = BatchingConfig()
        self.runtime.load()
        # Pipeline nodes fused into this model: verified and loaded before it is ready.
        self.fused = FusedNodes(
            self.args.fused,
            self.runtime.repository,
            self.runtime.device,
            metrics_for=RayModelMetrics if metrics is None else None,
        )
        self.fused.load()
        self._fused_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fused")
        self._forwards: ForwardPool | None = None
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._batcher: Any = None
        self._apply_batching(self.batching, rebuild=True)
        assert self.runtime.version is not None
        self.version = str(self.runtime.version.version)
        self.route_prefix = model_route_prefix(self.args.name)
        self.canary: CanaryForwarder | None = None  # set by reconfigure (user_config)
        self.jobs = (
            None
            if self.args.jobs is None
            else JobSubmitter(self.args.jobs, self.args.http.retry_after_s)
        )
        self._served_versions: list[int] | None = None
        self.in_flight = InFlightBytes.for_replica(self.args.http)
        self.metrics = metrics or RayModelMetrics(self.args.name, self.version)
        manifest = self.runtime.version.manifest
        info = {
            "format": str(getattr(manifest.format, "value", manifest.format)),
            "device": self.runtime.device,
            "num_gpus": f"{assigned_gpus() if self.runtime.device != 'cpu' else 0:g}",
        }
        self.metrics.set_loaded(info, self.runtime.load_s, manifest.total_bytes)
        self._report_device_memory()

    # --- configuration -------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``BatchingConfig`` and the canary (key ``canary``, with the
        ``served_versions`` it adds) from ``user_config`` without restarting."""
        rest = dict(user_config)
        canary = rest.pop("canary", None)
        self._served_versions = rest.pop("served_versions", None)
        self.canary = (
            CanaryForwarder(
                CanaryArgs.model_validate(canary),
                self.args.http,
                stable=self,  # the fallback: this replica answers what the canary cannot
                handle_factory=self._canary_handles,
            )
            if canary
            else None
        )
        new = BatchingConfig.model_validate(rest)
        rebuild = (new.max_concurrent_batches, new.split_min_rows) != (
            self.batching.max_concurrent_batches,
            self.batching.split_min_rows,
        )
        self.batching = new
        self._apply_batching(new, rebuild=rebuild)

    def _batch_limit(self) -> int:
        cfg = self.batching
        if not cfg.cap_batch_to_memory:
            return cfg.max_batch_size
        return self.runtime.effective_batch_size(cfg.max_batch_size)

    def _apply_batching(self, cfg: BatchingConfig, rebuild: bool) -> None:
        size = self._batch_limit()
        self.runtime.max_batch_tokens = cfg.max_batch_tokens
        if rebuild or self._batcher is None:
            old = self._forwards
            split = cfg.split_min_rows if self.runtime.device == "cpu" else None
            self._forwards = ForwardPool(cfg.max_concurrent_batches, split)
            if old is not None:  # running forwards finish; the old threads then exit
                old.shutdown()
            self._batcher = serve.batch(
                max_batch_size=size,
                batch_wait_timeout_s=cfg.batch_wait_timeout_s,
                max_concurrent_batches=cfg.max_concurrent_batches,
                batch_size_fn=_rows_of,
            )(self._run_batch)
        else:
            self._batcher.set_max_batch_size(size)
            self._batcher.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        logger.info("%s batching: %s (effective max_batch_size %d)", self.args.name, cfg, size)

    def check_health(self) -> None:
        """Serve health check: the model is loaded, no forward has hung, and its files
        are in place (its fused models' too)."""
        self.runtime.check_health()
        for runtime in self.fused.runtimes.values():
            runtime.check_health()

    # --- inference -----------------------------------------------------------------

    async def _run_batch(self, items: list[PendingRows]) -> list[dict[str, np.ndarray]]:
        start_s = time.perf_counter()
        rows, counts = flatten_rows([item.rows for item in items])
        outputs = await self._forward(rows)
        waits_s = [start_s - item.enqueued_s for item in items]
        self.metrics.observe_batch(len(rows), waits_s, time.perf_counter() - start_s)
        self._report_device_memory()
        return split_rows(outputs, counts)

    async def _forward(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """One batch on the forward threads (cut across idle ones), counted once."""
        assert self._forwards is not None
        done: list[tuple[int, float]] = []  # (forwards, seconds) of each chunk

        def chunk(part: list[Any]) -> dict[str, np.ndarray]:
            start_s = time.perf_counter()
            out, n = self.runtime.forward_chunk(part)
            done.append((n, time.perf_counter() - start_s))
            return out

        outputs, _ = await self._forwards.run(chunk, rows)
        # Compute time as before the pool: the forwards' own seconds, not the wait for a thread.
        self.runtime.stats.record(len(rows), sum(n for n, _ in done), sum(s for _, s in done))
        return outputs

    def _report_device_memory(self) -> None:
        nbytes = device_memory_bytes(self.runtime.device)
        if nbytes is not None:
            self.metrics.set_device_memory(nbytes)

    async def infer_rows(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """Run one request's rows through the batcher (handle-callable for composition).

        A request with more rows than a batch holds is run alone, in slices."""
        limit = self._batch_limit()
        if len(rows) <= limit:
            return await self._batcher(PendingRows(rows, time.perf_counter()))
        parts = []
        for i in range(0, len(rows), limit):
            start_s = time.perf_counter()
            part = rows[i : i + limit]
            parts.append(await self._forward(part))
            self.metrics.observe_batch(len(part), [0.0], time.perf_counter() - start_s)
        return concat_outputs(parts)

    async def infer_tensors(
        self,
        tensors: dict[str, np.ndarray],
        rename: dict[str, str],
        fused: FusedCall | None = None,
        via: str = VIA_PIPELINE,
    ) -> dict[str, np.ndarray]:
        """Pipeline entry point (DeploymentHandle): run the model on named arrays.

        Args:
            tensors: Arrays by name, e.g. the outputs of the previous node (Ray resolves
                an upstream ``DeploymentResponse`` into this dict on this replica).
            rename: Model input name -> key in ``tensors``.
            fused: Pipeline nodes fused into this model to run on its outputs for these
                rows (their outputs join the answer, ``serve_app.graph.fused``).
            via: How the request came, for the request metrics: a pipeline's call unless
                the caller says otherwise (the canary hop and its fallback do).

        Raises:
            InvalidInput: a mapped tensor is missing, or the model rejects it.
        """
        start_s = time.perf_counter()
        rows: list[Any] | None = None
        try:
            missing = sorted(k for k, v in rename.items() if v not in tensors)
            if missing:
                raise InvalidInput(
                    f"model {self.args.name!r}: no tensor for input(s) {missing} "
                    f"(got {sorted(tensors)})"
                )
            rows = await self._prepare({k: tensors[v] for k, v in rename.items()})
            outputs = await self.infer_rows(rows)
            if fused is not None:
                loop = asyncio.get_running_loop()
                extra = await loop.run_in_executor(
                    self._fused_executor, self.fused.run, fused, outputs
                )
                outputs = outputs | extra
        except asyncio.CancelledError:
            self._observe_cancelled(start_s, rows, via)
            raise
        except Exception as e:
            self.metrics.observe_request(
                _status_of(e),
                time.perf_counter() - start_s,
                None if rows is None else len(rows),
                via,
            )
            raise
        self.metrics.observe_request(200, time.perf_counter() - start_s, len(rows), via)
        return outputs

    def _observe_cancelled(self, start_s: float, rows: list[Any] | None, via: str) -> None:
        """Count a request cancelled before its answer (``CANCELLED_STATUS``)."""
        latency_s = time.perf_counter() - start_s
        n_rows = None if rows is None else len(rows)
        self.metrics.observe_request(CANCELLED_STATUS, latency_s, n_rows, via)

    async def _prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """Validate and split into rows; large requests off the event loop."""
        return await prepare_rows(self.runtime.prepare, inputs, self._prepare_executor)

    async def _decode(
        self, body: bytes, header_length: int | None
    ) -> tuple[oip.DecodedRequest, list[Any]]:
        """Decode an OIP body and prepare its rows; large bodies off the event loop."""
        return await decode_and_prepare(
            body, header_length, self.args.http.limits, self.runtime.prepare,
            self._prepare_executor,
        )  # fmt: skip

    @property
    def served_versions(self) -> list[str]:
        """Every version of this model served side by side (this one included)."""
        served = self._served_versions or self.args.served_versions or [int(self.version)]
        return [str(v) for v in served]

    def _check_version(self, version: str | None) -> None:
        # A served older version has its own application at a longer route prefix, so
        # only this replica's version or an unserved one arrives here.
        if version is not None and version != self.version:
            served = self.served_versions
            raise ModelNotFound(
                f"model {self.args.name!r} version {version} not found (serving "
                f"version{'s' if len(served) > 1 else ''} {', '.join(served)})"
            )

    async def _infer(self, request: Request) -> Response:
        start_s = time.perf_counter()
        with self.in_flight.hold() as held:
            try:
                body, header_length = await read_request_body(request, self.args.http, held.add)
            except asyncio.CancelledError:
                self._observe_cancelled(start_s, None, VIA_HTTP)
                raise
            except Exception as e:  # 413, the budget's 503, a client gone mid-body (499)
                response = error_response(e, self.args.http.retry_after_s)
                latency_s = time.perf_counter() - start_s
                self.metrics.observe_request(response.status_code, latency_s, None, VIA_HTTP)
                return response
            return await self._answer(body, header_length, start_s, held, VIA_HTTP)

    async def _answer(
        self,
        body: bytes,
        header_length: int | None,
        start_s: float,
        held: Reservation,
        via: str,
    ) -> Response:
        """The answer to an OIP request body: the route's, and a job consumer's (``via``
        says which, for the metrics). Its decoded inputs join the bytes ``held`` for it."""
        rows: list[Any] | None = None
        try:
            decoded, rows = await self._decode(body, header_length)
            held.add(decoded.allocated_bytes)
            outputs = await self.infer_rows(rows)
            payload, headers = oip.encode_response(self.args.name, self.version, decoded, outputs)
            response = Response(payload, headers=headers)
        except asyncio.CancelledError:  # the client went away: nobody gets an answer
            self._observe_cancelled(start_s, rows, via)
            raise
        except Exception as e:
            response = error_response(e, self.args.http.retry_after_s)
        n_rows = None if rows is None else len(rows)
        latency_s = time.perf_counter() - start_s
        self.metrics.observe_request(response.status_code, latency_s, n_rows, via)
        return response

    async def answer_body(
        self, body: bytes, header_length: int | None, version: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Handle entry of job consumers: what ``POST .../infer`` answers to ``body``, as
        ``(status, headers, payload)``."""
        start_s = time.perf_counter()
        with self.in_flight.hold() as held:
            try:
                self._check_version(version)
                held.add(len(body))
            except Exception as e:
                return response_parts(error_response(e, self.args.http.retry_after_s))
            return response_parts(await self._answer(body, header_length, start_s, held, VIA_JOB))

    async def _submit_job(self, request: Request, version: str | None) -> Response:
        """``Prefer: respond-async``: check the request as ``_answer`` would, then queue it."""
        assert self.jobs is not None
        with self.in_flight.hold() as held:
            body, header_length = await read_request_body(request, self.args.http, held.add)
            await self._decode(body, header_length)
            return await self.jobs.submit(body, header_length, version)

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata."""
        adapter = self.runtime.require()
        return {
            "name": self.args.name,
            "versions": self.served_versions,
            "platform": adapter.info.platform,
            "inputs": [t.to_json() for t in adapter.info.inputs],
            "outputs": [t.to_json() for t in adapter.info.outputs],
        }

    def batch_stats(self) -> dict[str, Any]:
        """What the batcher did so far, plus the effective limits (for tests and ops)."""
        s = self.runtime.stats
        return {
            "batches": s.batches,
            "rows": s.rows,
            "forwards": s.forwards,
            "max_rows_seen": s.max_rows_seen,
            "compute_s": s.compute_s,
            "recent_sizes": list(s.recent_sizes),
            "max_batch_size": self._batch_limit(),
            "batch_wait_timeout_s": self.batching.batch_wait_timeout_s,
            "memory_cap_rows": self.runtime.memory_cap_rows,
            "load_s": self.runtime.load_s,
            "version": self.version,
            "pid": os.getpid(),
            "device": self.runtime.device,
            "adapter": self.runtime.require().info.extra,
        }

    async def __call__(self, request: Request) -> Response:
        """HTTP entry point: ``/v2/models/<name>[/versions/<v>][/ready|/infer]``."""
        try:
            route = match(request.method, request.url.path, self.route_prefix)
            self._check_version(route.version)
            if route.action == "infer":
                if self.jobs is not None and wants_async(request):
                    return await self._submit_job(request, route.version)
                if route.version is None and self.canary is not None and self.canary.due():
                    return await self.canary.forward(self.args.name, request)
                return await self._infer(request)
            if route.action == "ready":
                self.runtime.require()
                body: dict[str, Any] = {"name": self.args.name, "ready": True}
                if route.version is not None:
                    body["version"] = route.version
                return json_response(body)
            return json_response(self.metadata())
        except Exception as e:  # one mapper for every error, never a traceback
            return error_response(e, self.args.http.retry_after_s)
