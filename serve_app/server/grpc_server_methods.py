"""The five KServe v2 gRPC methods of the server application (``OIPServer``).

A call without the ``application`` metadata reaches this application when it is Serve's
default gRPC backend (see ``serve_app.local.ingress``); ``ModelInfer``, ``ModelReady`` and
``ModelMetadata`` are forwarded by ``model_name`` to the model's or pipeline's own
application through a DeploymentHandle (one extra hop; the ``application: <model>``
metadata skips it).
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from serve_app.errors import ModelNotFound, ServiceUnavailable
from serve_app.server.grpc_methods import MESSAGES, answer, classify_for_grpc

SERVING_STATES = {"RUNNING", "UNHEALTHY", "UPDATING", "WAITING_FOR_MODELS", "WAITING_FOR_VERSIONS"}
"""Application states in which a forwarded call may find a replica."""


class GrpcServerMethods:
    """gRPC methods of ``OIPServer`` (its ``args``, ``_states`` and ``_tenants``)."""

    args: Any
    _states: Any
    _tenants: Any

    async def _forward(self, app: str, method: str, request: Any) -> Any:
        """Call ``method`` on ``app``'s ingress deployment (``grpc_forward``)."""
        from ray import serve

        handles = self.__dict__.setdefault("_grpc_handles", {})
        handle = handles.get(app)
        if handle is None:
            # By value over Serve's inter-deployment gRPC transport (no object store): the
            # payloads are a few KB of bytes.
            handle = handles[app] = serve.get_app_handle(app).options(
                method_name="grpc_forward",
                _by_reference=False,
                request_serialization="pickle",
                response_serialization="pickle",
            )
        payload = await handle.remote(method, request.SerializeToString())
        return MESSAGES[method][1].FromString(payload)

    async def _target(self, name: str) -> str:
        """The application that serves ``name``, if it can take a call now.

        Raises:
            ModelNotFound: no such model or pipeline.
            ServiceUnavailable: its application is not running (with Serve's reason).
        """
        if self._tenants.family_of(name) is not None:
            raise ModelNotFound(
                f"model {name!r}: multiplexed tenants are served over HTTP only "
                "(/v2/models/<tenant>/infer)"
            )
        if name not in self.args.models and name not in self.args.pipelines:
            served = self.args.models + list(self.args.pipelines)
            raise ModelNotFound(f"unknown model {name!r}; served models: {served}")
        state = (await self._states()).get(name)
        if state is None or state.status not in SERVING_STATES:
            reason = "unknown state"
            if state is not None:
                reason = f"{state.status}: {state.message}" if state.message else state.status
            raise ServiceUnavailable(
                f"model {name!r} is not ready ({reason})", self.args.http.retry_after_s
            )
        return str(name)

    def _classify(self, e: BaseException) -> BaseException:
        return classify_for_grpc(e, self.args.http.retry_after_s)

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ServerLive``: this application answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ServerReady``: every model and pipeline is ready (as ``/v2/health/ready``)."""

        async def run() -> Any:
            states = await self._states()
            return pb.ServerReadyResponse(ready=all(s.ready for s in states.values()))

        return await answer(grpc_context, run, pb.ServerReadyResponse, self._classify)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelReady``: asked of the model's own application; ready False while it is
        not running."""

        async def run() -> Any:
            try:
                app = await self._target(request.name)
            except ServiceUnavailable:
                return pb.ModelReadyResponse(ready=False)
            return await self._forward(app, "ModelReady", request)

        return await answer(grpc_context, run, pb.ModelReadyResponse, self._classify)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelMetadata``, from the model's own application."""

        async def run() -> Any:
            app = await self._target(request.name)
            return await self._forward(app, "ModelMetadata", request)

        return await answer(grpc_context, run, pb.ModelMetadataResponse, self._classify)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelInfer``, forwarded to the model's or pipeline's own application."""

        async def run() -> Any:
            app = await self._target(request.model_name)
            return await self._forward(app, "ModelInfer", request)

        return await answer(grpc_context, run, pb.ModelInferResponse, self._classify)
