"""The one place where errors become HTTP responses, plus request-body helpers.

Every error body is ``{"error": "...", "request_id": "..."}``: the id is Serve's (the
``x-request-id`` the ingress accepted or set, also returned in that header), so any error
a client reports can be found in the replica's log. 503/429 carry ``Retry-After``, 405
carries ``Allow``; unexpected exceptions become a 500 whose body hides the traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from serve_app.config import HttpConfig
from serve_app.errors import (
    ClientClosedRequest,
    PayloadTooLarge,
    ServeAppError,
    ServiceUnavailable,
)
from serve_app.protocol import oip
from serve_app.protocol.limits import parse_header_length
from serve_app.protocol.oip import JSON_CONTENT_TYPE

# Serve's logger: its replica handlers add the request id and route to the replica log.
logger = logging.getLogger("ray.serve")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as JSON (orjson) with ``status``."""
    return Response(
        orjson.dumps(body), status_code=status, media_type=JSON_CONTENT_TYPE, headers=headers
    )


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """``{"error": message, "request_id": ...}`` with ``status``."""
    return json_response({"error": message, "request_id": current_request_id()}, status, headers)


def current_request_id() -> str:
    """Serve's id of the request being handled (the ``x-request-id`` the ingress set or
    accepted, returned to the client in that header); a fresh one outside Serve."""
    try:
        from ray.serve.context import _get_serve_request_context

        request_id = _get_serve_request_context().request_id
    except Exception:  # not inside a Serve request
        request_id = ""
    return request_id or uuid.uuid4().hex


def error_response(exc: BaseException, retry_after_s: int = 1) -> Response:
    """Map any exception to a response; never leaks a traceback.

    503/429 carry ``Retry-After``, 405 carries ``Allow``; an unexpected exception is a
    500 whose body names Serve's request id, which the log line also names."""
    if isinstance(exc, ServeAppError):
        headers = {}
        if isinstance(exc, ServiceUnavailable) or exc.status_code in (429, 503):
            headers["Retry-After"] = str(getattr(exc, "retry_after_s", retry_after_s))
        allow = getattr(exc, "allow", None)
        if exc.status_code == 405 and isinstance(allow, str):
            headers["Allow"] = allow
        return json_error(exc.status_code, exc.message, headers or None)
    request_id = current_request_id()
    logger.error("internal error (request %s)", request_id, exc_info=exc)
    return json_response(
        {"error": f"internal error, request id {request_id}", "request_id": request_id}, 500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error a FastAPI app can raise through ``error_response``."""

    @app.exception_handler(ServeAppError)
    async def _serve_app_error(_: Request, exc: ServeAppError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return json_error(422, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return json_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> Response:
        return error_response(exc)


async def read_body(
    request: Request, max_bytes: int, reserve: Callable[[int], None] | None = None
) -> bytes:
    """Read the body, refusing more than ``max_bytes`` before and while reading (413).

    ``reserve(n)`` (a request's ``Reservation.add``) is told of the body's bytes before
    they are read: the declared ``Content-Length`` at once, else each chunk as it comes;
    what it raises (a 503) ends the read. A client that goes away before the body has
    come is a ``ClientClosedRequest`` (499)."""
    declared = request.headers.get("content-length")
    reserved = 0
    if declared is not None and declared.isascii() and declared.isdigit():
        if len(declared) > 18 or int(declared) > max_bytes:
            raise PayloadTooLarge(
                f"request body of {declared} bytes exceeds the limit of {max_bytes}"
            )
        if reserve is not None:
            reserve(int(declared))
            reserved = int(declared)
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
            if reserve is not None and size > reserved:
                reserve(size - reserved)
                reserved = size
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedRequest(
            f"client disconnected after {size} bytes of the request body"
        ) from None
    return b"".join(chunks)


async def read_request_body(
    request: Request, http: HttpConfig, reserve: Callable[[int], None] | None = None
) -> tuple[bytes, int | None]:
    """The body of an OIP inference request (within ``http.max_request_bytes``, told to
    ``reserve`` as in :func:`read_body`) and its binary header length
    (``Inference-Header-Content-Length``; None for plain JSON)."""
    body = await read_body(request, http.max_request_bytes, reserve)
    return body, parse_header_length(request.headers.get(oip.HEADER_LENGTH), len(body))


async def read_inference_request(request: Request, http: HttpConfig) -> oip.DecodedRequest:
    """Read and decode an OIP inference request (JSON or binary extension) within the
    body size and the decoder limits of ``http``."""
    body, header_length = await read_request_body(request, http)
    return oip.decode_request(body, header_length, http.limits)
