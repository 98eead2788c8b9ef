"""Forwarding ``/v2/models/<tenant>/...`` from the server application to the tenant's
multiplexed family.

No application owns a tenant's route (tenants are repository folders, not config
entries), so the request reaches the server's catch-all. :class:`TenantForwarder` reads
the body there (within the size limit), and calls the family's deployment through a
``DeploymentHandle`` with ``multiplexed_model_id=<tenant>``: Serve's router then prefers
a replica that already holds the tenant. Only bytes cross the hop; errors come back as
answers the family's replica built with the one mapper. A tenant without a folder in the
repository (``TenantListing``) is a 404 before the hop: Serve's router would keep its id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serve_app.config import HttpConfig, model_route_prefix
from serve_app.config.tenants import family_of, is_tenant_name
from serve_app.deploy.app_args import MULTIPLEX_DEPLOYMENT
from serve_app.errors import ModelNotFound, ServeAppError, ServiceUnavailable
from serve_app.protocol import oip
from serve_app.server.http import read_body
from serve_app.server.routes import match
from serve_app.server.tenant_listing import TenantListing


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """What the family needs of an HTTP request to one tenant."""

    tenant: str
    action: str
    """``metadata``, ``ready`` or ``infer``."""
    version: str | None
    body: bytes
    header_length: str | None
    """The ``Inference-Header-Content-Length`` header (binary extension), if sent."""


@dataclass(frozen=True, slots=True)
class ForwardedResponse:
    """A family's answer: status, body and headers (no ``content-length``)."""

    status: int
    body: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, response: Response) -> ForwardedResponse:
        """Capture a starlette response built by the family's replica."""
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return cls(response.status_code, bytes(response.body), headers)

    def to_response(self) -> Response:
        """The HTTP response the server application sends back."""
        return Response(self.body, status_code=self.status, headers=self.headers)


def _serve_handle(family: str) -> Any:
    from ray import serve

    return serve.get_deployment_handle(MULTIPLEX_DEPLOYMENT, app_name=family)


class TenantForwarder:
    """Sends tenant requests to their family.

    Args:
        families: Family (application name) -> tenant prefix.
        http: Body size limit and ``Retry-After``.
        handle_of: Family -> its deployment handle (injected by tests).
        listing: The repository's tenant folders, checked before the hop (None: every
            valid name is forwarded).
    """

    def __init__(
        self,
        families: Mapping[str, str],
        http: HttpConfig,
        handle_of: Callable[[str], Any] = _serve_handle,
        listing: TenantListing | None = None,
    ) -> None:
        self.families = dict(families)
        self.listing = listing
        self.http = http
        self._handle_of = handle_of
        self._handles: dict[str, Any] = {}

    def family_of(self, name: str) -> str | None:
        """The family whose tenant ``name`` would be, or None."""
        return family_of(name, self.families)

    async def forward(self, family: str, tenant: str, request: Request) -> Response:
        """Answer ``request`` (for ``/v2/models/<tenant>/...``) from ``family``.

        Raises:
            ModelNotFound: ``tenant`` is not a valid model name, or has no folder.
            NotFound, MethodNotAllowed: no such tenant route.
            PayloadTooLarge: body above the limit.
            ServiceUnavailable: the family's application cannot be reached.
        """
        if not is_tenant_name(tenant, self.families[family]):  # before any hop
            raise ModelNotFound(f"unknown model {tenant!r}: not a valid model name")
        if self.listing is not None:
            await self.listing.check(tenant, family)
        route = match(request.method, request.url.path, model_route_prefix(tenant))
        body = b""
        if route.action == "infer":
            body = await read_body(request, self.http.max_request_bytes)
        forwarded = ForwardedRequest(
            tenant, route.action, route.version, body, request.headers.get(oip.HEADER_LENGTH)
        )
        handle = self._handles.get(family)
        if handle is None:
            handle = self._handles[family] = self._handle_of(family)
        try:
            answer: ForwardedResponse = await handle.options(
                multiplexed_model_id=tenant, method_name="forward"
            ).remote(forwarded)
        except ServeAppError:
            raise
        except Exception as e:  # the family's app is down, deleting or overloaded
            raise ServiceUnavailable(
                f"model {tenant!r}: its multiplexed family {family!r} is not available "
                f"({type(e).__name__}: {e})",
                self.http.retry_after_s,
            ) from None
        return answer.to_response()
