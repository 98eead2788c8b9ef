"""A model's canary, seen from its stable replicas: a share of unversioned ``infer``
requests is decoded here and answered by the canary version's own application through
a DeploymentHandle (one extra hop, for that share only), with the canary's version as
``model_version``. The canary's replicas count those requests in their own metrics
(tagged with their version, ``via="canary"``), so the two versions compare side by side.

When the canary cannot take a request (Serve's back-pressure, no replica, a dead
replica, its own 429/503, or a message above the hop's gRPC cap: ``refusal_reason``),
the stable replica answers it itself, with its own version, instead of failing it. Each
hop is counted on the stable replica as ``serve_app_pipeline_node_calls`` with
``node="canary"`` and ``outcome`` ``ok``, ``failed`` or ``fallback_<reason>``."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import HttpConfig
from serve_app.deploy.app_args import MODEL_DEPLOYMENT, CanaryArgs
from serve_app.graph.executor import NodeObserver
from serve_app.protocol import oip
from serve_app.server.http import error_response, read_inference_request
from serve_app.server.metrics import VIA_CANARY, VIA_HTTP
from serve_app.server.serve_errors import refusal_reason

CANARY_NODE = "canary"
"""The ``node`` label of the canary hop in ``serve_app_pipeline_node_calls``."""


class StableModel(Protocol):
    """What the fallback needs of the stable replica (``ModelDeployment``)."""

    version: str

    async def infer_tensors(
        self, tensors: dict[str, np.ndarray], rename: dict[str, str], *, via: str
    ) -> dict[str, np.ndarray]:
        """Run the stable version on named arrays (counted in its own metrics as
        having come ``via``)."""
        ...


def canary_handle(app: str) -> Any:
    """The canary application's model deployment, called by value (pickled numpy), as
    pipelines call models."""
    from ray import serve

    return serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=app).options(
        method_name="infer_tensors",
        _by_reference=False,
        request_serialization="pickle",
        response_serialization="pickle",
    )


def ray_node_observer(model: str, version: str) -> NodeObserver:
    """Counts the canary hop in the node-call metrics, under the stable version's tags."""
    from serve_app.server.metrics import RayNodeMetrics

    return RayNodeMetrics(model, version).observe_node


class CanaryForwarder:
    """Sends ``args.percent`` % of the requests it is asked about to the canary.

    Args:
        args: The canary (application, version, share).
        http: Request limits and Retry-After, as the stable replica applies them.
        stable: The stable version that answers when the canary cannot: the owning
            replica passes itself (tests pass a stand-in).
        handle_factory: Builds the handle (injected: tests pass a stand-in).
        draw: Uniform [0, 1) numbers (injected for deterministic tests).
        observer_factory: ``(model, stable version) -> observer`` of each hop's outcome.
    """

    def __init__(
        self,
        args: CanaryArgs,
        http: HttpConfig,
        *,
        stable: StableModel,
        handle_factory: Callable[[str], Any] = canary_handle,
        draw: Callable[[], float] = random.random,
        observer_factory: Callable[[str, str], NodeObserver] = ray_node_observer,
    ) -> None:
        self.args = args
        self.http = http
        self.stable = stable
        self._handle_factory = handle_factory
        self._handle: Any = None
        self._draw = draw
        self._observer_factory = observer_factory
        self._observe: NodeObserver | None = None

    def due(self) -> bool:
        """Whether this request goes to the canary."""
        return self._draw() * 100.0 < self.args.percent

    def _observer(self, model: str) -> NodeObserver:
        if self._observe is None:  # created on first use: Ray's metrics need a replica
            self._observe = self._observer_factory(model, str(self.stable.version))
        return self._observe

    async def forward(self, model: str, request: Request) -> Response:
        """Answer ``request`` (an OIP infer request for ``model``) with the canary, or
        with the stable version when the canary cannot take it."""
        try:
            decoded = await read_inference_request(request, self.http)
            observe = self._observer(model)
        except Exception as e:  # the client's request is bad whichever version answers
            return error_response(e, self.http.retry_after_s)
        rename = {k: k for k in decoded.inputs}
        start_s = time.perf_counter()
        try:
            if self._handle is None:
                self._handle = self._handle_factory(self.args.app)
            # The canary counts it as a client's request forwarded to it, not a pipeline's.
            outputs = await self._handle.remote(decoded.inputs, rename, via=VIA_CANARY)
            version = str(self.args.version)
            observe(CANARY_NODE, "ok", time.perf_counter() - start_s)
        except Exception as e:
            reason = refusal_reason(e)
            observe(
                CANARY_NODE,
                "failed" if reason is None else f"fallback_{reason}",
                time.perf_counter() - start_s,
            )
            if reason is None:  # the canary's own answer, as the stable's errors are mapped
                return error_response(e, self.http.retry_after_s)
            try:
                outputs = await self.stable.infer_tensors(decoded.inputs, rename, via=VIA_HTTP)
            except Exception as fallback_error:
                return error_response(fallback_error, self.http.retry_after_s)
            version = str(self.stable.version)
        try:
            payload, headers = oip.encode_response(model, version, decoded, outputs)
        except Exception as e:
            return error_response(e, self.http.retry_after_s)
        return Response(payload, headers=headers)
