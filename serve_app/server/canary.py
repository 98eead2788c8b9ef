"""A model's canary, seen from its stable replicas: a share of unversioned ``infer``
requests is decoded here and answered by the canary version's own application through
a DeploymentHandle (one extra hop, for that share only), with the canary's version as
``model_version``. The canary's replicas count those requests in their own metrics
(tagged with their version), so the two versions compare side by side."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import HttpConfig
from serve_app.deploy.app_args import MODEL_DEPLOYMENT, CanaryArgs
from serve_app.protocol import oip
from serve_app.server.http import error_response, read_inference_request


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


class CanaryForwarder:
    """Sends ``args.percent`` % of the requests it is asked about to the canary.

    Args:
        args: The canary (application, version, share).
        http: Request limits and Retry-After, as the stable replica applies them.
        handle_factory: Builds the handle (injected: tests pass a stand-in).
        draw: Uniform [0, 1) numbers (injected for deterministic tests).
    """

    def __init__(
        self,
        args: CanaryArgs,
        http: HttpConfig,
        handle_factory: Callable[[str], Any] = canary_handle,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.args = args
        self.http = http
        self._handle_factory = handle_factory
        self._handle: Any = None
        self._draw = draw

    def due(self) -> bool:
        """Whether this request goes to the canary."""
        return self._draw() * 100.0 < self.args.percent

    async def forward(self, model: str, request: Request) -> Response:
        """Answer ``request`` (an OIP infer request for ``model``) with the canary."""
        try:
            decoded = await read_inference_request(request, self.http)
            if self._handle is None:
                self._handle = self._handle_factory(self.args.app)
            outputs = await self._handle.remote(decoded.inputs, {k: k for k in decoded.inputs})
            payload, headers = oip.encode_response(model, str(self.args.version), decoded, outputs)
            return Response(payload, headers=headers)
        except Exception as e:  # the one mapper, as for the stable version's own errors
            return error_response(e, self.http.retry_after_s)
