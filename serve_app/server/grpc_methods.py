"""The KServe v2 gRPC methods (``inference.GRPCInferenceService``) of the model and
pipeline deployments.

Serve's gRPC ingress calls a deployment method named like the RPC with the decoded
message (and ``grpc_context``); a client that sends the metadata ``application: <model>``
reaches the model's own replicas this way, one hop, like ``/v2/models/<name>`` over
HTTP. The server application (``OIPServer``) calls the same methods through a
DeploymentHandle, without ``grpc_context``: then errors are raised, not set on a
context, and the server maps them. Errors become statuses in one place:
``grpc_codec.grpc_status``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tritonclient.grpc import service_pb2 as pb

from serve_app.errors import ModelNotFound, ServeAppError, ServiceUnavailable
from serve_app.protocol import grpc_codec
from serve_app.server.metrics import VIA_GRPC
from serve_app.server.serve_errors import classify_serve_error

logger = logging.getLogger("ray.serve")

T = TypeVar("T")


def request_id_of(grpc_context: Any) -> str:
    """Serve's request id of the call being handled (empty outside Serve)."""
    from serve_app.server.http import current_request_id

    if grpc_context is not None:
        rid = grpc_context.request_id()
        if rid:
            return str(rid)
    return current_request_id()


async def answer(
    grpc_context: Any,
    call: Callable[[], Awaitable[T]],
    empty: Callable[[], T],
    classify: Callable[[BaseException], BaseException] | None = None,
    on_error: Callable[[int], None] | None = None,
) -> T:
    """Run ``call``; on an error set the gRPC status on ``grpc_context`` and return
    ``empty()`` (what Serve sends with a non-OK status), or re-raise when called through a
    handle (no context) so the caller maps it.

    Args:
        classify: Turns Serve's own errors (back-pressure, unavailable) into ours.
        on_error: Gets the HTTP-equivalent status of a failure (for the metrics).
    """
    try:
        return await call()
    except Exception as e:
        error = classify(e) if classify is not None else e
        if on_error is not None:
            on_error(int(getattr(error, "status_code", 500)))
        if grpc_context is None:
            if error is e:
                raise
            raise error from e
        code, message = grpc_codec.grpc_status(error, request_id_of(grpc_context))
        if code.name == "INTERNAL":
            logger.error("internal error in gRPC call", exc_info=e)
        grpc_context.set_code(code)
        grpc_context.set_details(message)
        return empty()


def check_name(served: str, requested: str) -> None:
    """A call that reached ``served``'s application must name it (or nothing).

    Raises:
        ModelNotFound: it names another model.
    """
    if requested and requested != served:
        raise ModelNotFound(
            f"model {requested!r} is not served by application {served!r} (send the metadata "
            f"'application: {requested}', or none to go through the server application)"
        )


def classify_for_grpc(e: BaseException, retry_after_s: int) -> BaseException:
    """Serve's own failures of a handle call (back-pressure, a dead or unavailable
    replica) as ``ServiceUnavailable``; ours and anything else unchanged."""

    if isinstance(e, ServeAppError):
        return e
    status, message = classify_serve_error(e)
    return ServiceUnavailable(message, retry_after_s) if status == 503 else e


def pipeline_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's response parameters as gRPC ``InferParameter``s (JSON strings)."""
    return {k: pb.InferParameter(string_param=json.dumps(v)) for k, v in params.items()}


MESSAGES = {
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
}
"""Request and response messages of the RPCs the server application forwards."""


class GrpcForwarded:
    """Entry point of the server application's forwards (a DeploymentHandle call).

    Protobuf messages of the tritonclient wheel do not survive Ray's pickling (their
    descriptors cannot be pickled), so they travel serialized."""

    async def grpc_forward(self, method: str, payload: bytes) -> bytes:
        """Run the RPC ``method`` on a serialized request; return the serialized response.

        Raises:
            ServeAppError: what the RPC would have answered with a non-OK status.
        """
        request_type, _ = MESSAGES[method]
        response = await getattr(self, method)(request_type.FromString(payload))
        return bytes(response.SerializeToString())


class GrpcApplicationMethods(GrpcForwarded):
    """What a model's and a pipeline's application answer alike, given their target
    check and their readiness check."""

    metadata: Callable[[], dict[str, Any]]

    def _check_grpc_target(self, name: str, version: str) -> None:
        """Raise ``ModelNotFound`` unless ``name``/``version`` is what this serves."""
        raise NotImplementedError

    async def _check_grpc_ready(self) -> None:
        """Raise ``ServiceUnavailable`` while this application cannot answer."""
        raise NotImplementedError

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelMetadata``: the OIP metadata of this model or pipeline."""

        async def run() -> Any:
            self._check_grpc_target(request.name, request.version)
            return grpc_codec.metadata_response(self.metadata())

        return await answer(grpc_context, run, pb.ModelMetadataResponse)

    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ServerLive`` answered by this application (``application`` metadata)."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ServerReady`` of this application: its model is loaded, or its pipeline's
        required nodes answer."""
        try:
            await self._check_grpc_ready()
        except ServiceUnavailable:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)


class GrpcModelMethods(GrpcApplicationMethods):
    """gRPC methods of ``ModelDeployment`` (its ``args``, ``runtime``, ``metrics``,
    ``_prepare``, ``infer_rows``, ``metadata`` and ``_check_version``).

    The canary is an HTTP forward: gRPC calls are answered by the primary version."""

    args: Any
    runtime: Any
    metrics: Any
    version: str
    _prepare: Callable[..., Awaitable[list[Any]]]
    infer_rows: Callable[..., Awaitable[Any]]
    _check_version: Callable[[str | None], None]

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelInfer``: decode, batch with the HTTP requests, encode raw outputs."""
        start_s = time.perf_counter()
        n_rows: list[int] = []

        async def run() -> Any:
            self._check_grpc_target(request.model_name, request.model_version)
            decoded = grpc_codec.decode_infer_request(request, self.args.http.limits)
            rows = await self._prepare(decoded.inputs)
            n_rows.append(len(rows))
            outputs = await self.infer_rows(rows)
            return grpc_codec.encode_infer_response(self.args.name, self.version, decoded, outputs)

        status = [200]
        try:
            return await answer(grpc_context, run, pb.ModelInferResponse, on_error=status.append)
        finally:
            self.metrics.observe_request(
                status[-1], time.perf_counter() - start_s, n_rows[0] if n_rows else None, VIA_GRPC
            )

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelReady``: the model is loaded (and the version is this one)."""

        async def run() -> Any:
            self._check_grpc_target(request.name, request.version)
            self.runtime.require()
            return pb.ModelReadyResponse(ready=True)

        return await answer(grpc_context, run, pb.ModelReadyResponse)

    def _check_grpc_target(self, name: str, version: str) -> None:
        check_name(self.args.name, name)
        self._check_version(version or None)

    async def _check_grpc_ready(self) -> None:
        self.runtime.require()


class GrpcPipelineMethods(GrpcApplicationMethods):
    """gRPC methods of ``PipelineRouter`` (pipelines and staged models)."""

    pipeline: Any
    http: Any
    version: str
    executor: Any
    node_status: Any
    metrics: Any
    _check_nodes_ready: Callable[[], Awaitable[None]]

    def _check_grpc_target(self, name: str, version: str) -> None:
        check_name(self.pipeline.name, name)
        if version and version != self.version:
            raise ModelNotFound(
                f"{self.pipeline.name!r} version {version} not found "
                f"(serving version {self.version})"
            )

    async def _check_grpc_ready(self) -> None:
        await self._check_nodes_ready()

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelInfer``: run the graph once, encode its outputs raw."""
        start_s = time.perf_counter()

        async def run() -> Any:
            self._check_grpc_target(request.model_name, request.model_version)
            decoded = grpc_codec.decode_infer_request(request, self.http.limits)
            result = await self.executor.run(
                decoded.inputs, decoded.parameters, self.node_status.unserving()
            )
            if decoded.requested_outputs is not None:
                result.check_requested(decoded.requested_outputs)
            response = grpc_codec.encode_infer_response(
                self.pipeline.name, self.version, decoded, result.outputs
            )
            for key, value in pipeline_parameters(result.parameters()).items():
                response.parameters[key].CopyFrom(value)
            return response

        def classify(e: BaseException) -> BaseException:
            return classify_for_grpc(e, self.http.retry_after_s)

        status = [200]
        try:
            return await answer(grpc_context, run, pb.ModelInferResponse, classify, status.append)
        finally:
            self.metrics.observe_request(status[-1], time.perf_counter() - start_s, None, VIA_GRPC)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
        """``ModelReady``: every required node answers."""

        async def run() -> Any:
            self._check_grpc_target(request.name, request.version)
            try:
                await self._check_nodes_ready()
            except ServiceUnavailable:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await answer(grpc_context, run, pb.ModelReadyResponse)
