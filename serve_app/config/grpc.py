"""The AppConfig's ``grpc`` section: the KServe v2 / Triton gRPC predict protocol on
Serve's gRPC ingress (re-exported by ``serve_app.config``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from serve_app.schema_base import StrictModel

SERVICER_FUNCTION = "tritonclient.grpc.service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
"""``inference.GRPCInferenceService`` as the ``tritonclient`` wheel ships it."""


class GrpcConfig(StrictModel):
    """gRPC ingress (``inference.GRPCInferenceService``): same models, limits and
    timeout as HTTP. With HAProxy ingress it binds ``http.host``."""

    enabled: bool = Field(
        False,
        description=(
            "Serve the KServe v2 gRPC protocol (ServerLive, ServerReady, ModelReady, "
            "ModelMetadata, ModelInfer) next to HTTP."
        ),
    )
    port: int = Field(9000, ge=1, le=65535, description="Port of the gRPC ingress.")

    def to_serve(self, request_timeout_s: float | None) -> dict[str, Any]:
        """Serve's ``grpc_options`` (no servicer: no gRPC server, Serve's default)."""
        options: dict[str, Any] = {
            "port": self.port,
            "grpc_servicer_functions": [SERVICER_FUNCTION] if self.enabled else [],
        }
        if self.enabled and request_timeout_s is not None:
            options["request_timeout_s"] = request_timeout_s
        return options
