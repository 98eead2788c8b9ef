"""Asynchronous submission: ``Prefer: respond-async`` (RFC 7240) on an infer route.

A target that takes jobs (``jobs.targets``) answers such a request with ``202
Accepted`` and ``Location: /v2/jobs/<id>`` once the job is on its queue; the request is
first checked exactly as the synchronous route checks it, so a malformed request gets
the same 4xx and nothing is queued. A route that takes no jobs ignores the preference
(as RFC 7240 allows) and answers at once; ``Preference-Applied`` tells which happened.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serve_app.jobs.message import make_message
from serve_app.jobs.settings import QueueSettings
from serve_app.server.http import json_response

PREFER_ASYNC = "respond-async"
JOBS_PATH = "/v2/jobs"


def wants_async(request: Request) -> bool:
    """Whether the request's ``Prefer`` headers hold ``respond-async``."""
    for value in request.headers.getlist("prefer"):
        for preference in value.split(","):
            token = preference.split(";", 1)[0].split("=", 1)[0].strip().lower()
            if token == PREFER_ASYNC:
                return True
    return False


def response_parts(response: Response) -> tuple[int, dict[str, str], bytes]:
    """A response as ``(status, headers, body)``: what a handle returns to a consumer
    (headers: ``content-type`` and, for binary tensors, ``inference-header-content-length``)."""
    keep = ("content-type", "inference-header-content-length")
    headers = {k: v for k, v in response.headers.items() if k.lower() in keep}
    return response.status_code, headers, bytes(response.body)


class JobSubmitter:
    """Puts checked requests on one target's queue (a publisher per replica, made on the
    first job: the broker URL is read then)."""

    def __init__(self, settings: QueueSettings, retry_after_s: int = 1) -> None:
        self.settings = settings
        self._retry_after_s = retry_after_s
        self._publisher: Any = None
        self._lock = threading.Lock()

    def _submit(self, message: Any) -> None:
        with self._lock:
            if self._publisher is None:
                self._publisher = self.settings.publisher(self._retry_after_s)
        self._publisher.submit(message, self.settings.queues.jobs)

    async def submit(self, body: bytes, header_length: int | None, version: str | None) -> Response:
        """Queue ``body`` (already checked) as a job: 202 with its ``Location``.

        Raises:
            BrokerUnavailable: the broker or the record store is down (503).
        """
        message = make_message(self.settings.target, body, header_length, version)
        await asyncio.to_thread(self._submit, message)
        location = f"{JOBS_PATH}/{message.job_id}"
        return json_response(
            {"id": message.job_id, "status": "queued", "location": location},
            202,
            headers={"Location": location, "Preference-Applied": PREFER_ASYNC},
        )
