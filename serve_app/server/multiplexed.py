"""``MultiplexedDeployment``: one Serve deployment for a family of tenant models of one
architecture, each replica keeping an LRU of loaded tenants (``@serve.multiplexed``).

A tenant is addressed two ways, both ending in :meth:`MultiplexedDeployment._answer`:

- by its OIP model name, ``/v2/models/<tenant>/infer``: no application owns that route,
  so the server application's catch-all forwards the request through a
  ``DeploymentHandle`` with ``multiplexed_model_id=<tenant>`` (``server/tenant_forward.py``);
  the handle's router prefers a replica that already holds the tenant;
- on the family's own route, ``/v2/models/<family>/infer`` with the header
  ``serve_multiplexed_model_id: <tenant>``: one hop, but with the HAProxy ingress the
  replica is picked by HAProxy's ``leastconn``, not by who holds the tenant (see
  docs/multiplexing.md).

Each tenant's weights are verified against its manifest before they are loaded; an
unknown tenant is a 404 and a corrupt one fails its own requests only (503 naming the
file), without evicting healthy tenants (``server/tenant_runtime.py``).

Large bodies are decoded and prepared off the event loop as in ``ModelDeployment``
(``server/off_loop.py``), and inference requests are counted with the same metrics: a
loaded tenant's under its own name and version, those that failed before a tenant was
loaded (unknown, corrupt) under the family's name, so unknown names add no series.
"""

from __future__ import annotations

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

from serve_app.config import model_route_prefix
from serve_app.deploy.app_args import MULTIPLEX_DEPLOYMENT, MultiplexAppArgs
from serve_app.errors import InvalidInput
from serve_app.protocol import oip
from serve_app.protocol.limits import parse_header_length
from serve_app.repository.loader import ModelRepository
from serve_app.server.http import error_response, json_response, read_body
from serve_app.server.inflight import InFlightBytes, Reservation
from serve_app.server.metrics import ModelMetricsSink, RayModelMetrics
from serve_app.server.off_loop import decode_and_prepare
from serve_app.server.routes import match
from serve_app.server.runtime import AdapterLoader
from serve_app.server.tenant_forward import ForwardedRequest, ForwardedResponse
from serve_app.server.tenant_runtime import LoadedTenant, TenantLoader

logger = logging.getLogger("ray.serve")

MetricsFor = Callable[[str, str], ModelMetricsSink]
"""(model, version) -> the sink its requests are counted in."""


@dataclass
class _Seen:
    """How far an inference request got, for its metrics."""

    tenant: LoadedTenant | None = None
    rows: int | None = None


@serve.deployment(name=MULTIPLEX_DEPLOYMENT, max_ongoing_requests=64)
class MultiplexedDeployment:
    """A replica of a multiplexed family. ``args`` are ``MultiplexAppArgs``;
    ``adapter_loader`` and ``metrics_for`` are injectable so tests can stand in a model
    and read what it reports."""

    def __init__(
        self,
        args: dict[str, Any],
        adapter_loader: AdapterLoader | None = None,
        metrics_for: MetricsFor | None = None,
    ) -> None:
        import torch

        self.args = MultiplexAppArgs.model_validate(args)
        torch.set_num_threads(self.args.torch_threads)
        if adapter_loader is None:
            from serve_app.models.registry import load_adapter

            adapter_loader = load_adapter
        repository = ModelRepository(self.args.repository.root, self.args.repository.hash_workers)
        repository.check_mounted()  # no repository: the family fails to start, named
        self.tenants = TenantLoader(
            repository,
            self.args.name,
            self.args.tenant_prefix,
            self.args.version,
            adapter_loader,
        )
        self.route_prefix = model_route_prefix(self.args.name)
        # Loads and forwards leave the event loop; one thread each, so a cold load (hashing,
        # reading weights) does not hold up forwards of tenants already loaded.
        self._load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tenant-load")
        self._forward_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._metrics_for: MetricsFor = metrics_for or RayModelMetrics
        self._metrics: dict[tuple[str, str], ModelMetricsSink] = {}
        self.in_flight = InFlightBytes.for_replica(self.args.http)

        async def load_tenant(tenant: str) -> LoadedTenant:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._load_executor, self.tenants.load, tenant)

        # Decorated here, not on the class, so the LRU size comes from the config. Ray's
        # wrapper keeps the LRU (stored on ``load_tenant`` itself); Ray detects a
        # multiplexed function stored on the instance.
        self._load_tenant = load_tenant
        self._get_tenant = serve.multiplexed(
            max_num_models_per_replica=self.args.max_models_per_replica
        )(load_tenant)

    async def _tenant(self, tenant: str) -> LoadedTenant:
        """The loaded tenant, loading it (and evicting the least recently used) if needed.

        Raises:
            ModelNotFound: ``tenant`` is not one of this family's tenants.
            RepositoryError: its files failed verification (now or moments ago).
        """
        self.tenants.check_known(tenant)
        self.tenants.check_failed(tenant)
        if not self.tenants.note_request(tenant):
            # Verified before it enters the LRU: Ray evicts the least recently used tenant
            # before it calls the loader, so a corrupt tenant must fail here.
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._load_executor, self.tenants.verify, tenant)
        loaded: LoadedTenant = await self._get_tenant(tenant)
        return loaded

    async def _answer(
        self,
        tenant_name: str,
        action: str,
        version: str | None,
        body: bytes | Request,
        header_length: str | None,
        seen: _Seen,
        held: Reservation,
    ) -> Response:
        """A tenant's OIP answer: metadata, readiness or inference (``body`` a request
        whose body is read here, or the bytes a forward brought; both held in
        ``held``, with the decoded inputs)."""
        tenant = await self._tenant(tenant_name)
        seen.tenant = tenant
        tenant.check_version(version)
        if action == "metadata":
            return json_response(tenant.metadata())
        if action == "ready":
            ready: dict[str, Any] = {"name": tenant_name, "ready": True}
            if version is not None:
                ready["version"] = version
            return json_response(ready)
        if isinstance(body, Request):
            body = await read_body(body, self.args.http.max_request_bytes, held.add)
        else:
            held.add(len(body))
        length = parse_header_length(header_length, len(body))
        decoded, rows = await decode_and_prepare(
            body, length, self.args.http.limits, tenant.runtime.prepare, self._prepare_executor
        )
        held.add(decoded.allocated_bytes)
        seen.rows = len(rows)

        def forward() -> tuple[float, dict[str, np.ndarray]]:
            return time.perf_counter(), tenant.runtime.forward_rows(rows)

        loop = asyncio.get_running_loop()
        queued_s = time.perf_counter()
        started_s, outputs = await loop.run_in_executor(self._forward_executor, forward)
        sink = self._sink(tenant.name, tenant.version)
        sink.observe_batch(len(rows), [started_s - queued_s], time.perf_counter() - started_s)
        payload, headers = oip.encode_response(tenant_name, tenant.version, decoded, outputs)
        return Response(payload, headers=headers)

    def _sink(self, model: str, version: str) -> ModelMetricsSink:
        """The metrics of ``model`` at ``version`` (made on first use)."""
        sink = self._metrics.get((model, version))
        if sink is None:
            sink = self._metrics[(model, version)] = self._metrics_for(model, version)
        return sink

    async def _counted(
        self,
        tenant_name: str,
        action: str,
        version: str | None,
        body: bytes | Request,
        header_length: str | None,
    ) -> Response:
        """``_answer`` with every error mapped to its answer; an inference request is
        counted under its tenant once the tenant was loaded, else under the family."""
        start_s = time.perf_counter()
        seen = _Seen()
        with self.in_flight.hold() as held:
            try:
                response = await self._answer(
                    tenant_name, action, version, body, header_length, seen, held
                )
            except Exception as e:  # one mapper for every error, never a traceback
                response = error_response(e, self.args.http.retry_after_s)
        if action == "infer":
            model, tag = self.args.name, str(self.args.version)
            if seen.tenant is not None:
                model, tag = seen.tenant.name, seen.tenant.version
            latency_s = time.perf_counter() - start_s
            self._sink(model, tag).observe_request(response.status_code, latency_s, seen.rows)
        return response

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        """Handle entry point of the server's catch-all (``/v2/models/<tenant>/...``): the
        caller set ``multiplexed_model_id`` to the tenant. Errors come back as answers
        made by the one mapper, so nothing but bytes crosses the hop."""
        response = await self._counted(
            request.tenant, request.action, request.version, request.body,
            request.header_length,
        )  # fmt: skip
        return ForwardedResponse.of(response)

    def _family_answer(self, action: str) -> Response:
        """``/v2/models/<family>[/ready]`` without a tenant: the family itself."""
        if action == "ready":
            return json_response({"name": self.args.name, "ready": True})
        if action == "metadata":
            return json_response(
                {
                    "name": self.args.name,
                    "platform": "multiplexed",
                    "tenant_prefix": self.args.tenant_prefix,
                    "max_models_per_replica": self.args.max_models_per_replica,
                }
            )
        raise InvalidInput(
            f"model {self.args.name!r} is a multiplexed family: address a tenant as "
            f"/v2/models/<tenant>/infer, or send the header serve_multiplexed_model_id: "
            f"<tenant> (tenant names start with {self.args.tenant_prefix!r})"
        )

    async def __call__(self, request: Request) -> Response:
        """HTTP entry point: ``/v2/models/<family>[/versions/<v>][/ready|/infer]``, the
        tenant named by the ``serve_multiplexed_model_id`` header."""
        try:
            route = match(request.method, request.url.path, self.route_prefix)
            tenant = serve.get_multiplexed_model_id()
            if not tenant:
                return self._family_answer(route.action)
        except Exception as e:  # one mapper for every error, never a traceback
            return error_response(e, self.args.http.retry_after_s)
        return await self._counted(
            tenant, route.action, route.version, request, request.headers.get(oip.HEADER_LENGTH)
        )

    def tenant_stats(self) -> dict[str, Any]:
        """This replica's counts and the tenants it holds (for tests and benchmarks)."""
        wrapper = getattr(self._load_tenant, "__serve_multiplex_wrapper", None)
        loaded = list(wrapper.models) if wrapper is not None else []
        return self.tenants.stats.to_json() | {"loaded": loaded, "pid": os.getpid()}

    def check_health(self) -> None:
        """Healthy while the repository is mounted; one tenant's bad files fail that
        tenant's requests, not the replica."""
        self.tenants.repository.check_mounted()
