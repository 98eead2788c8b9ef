"""``/v2/jobs/<id>``: a job's status, its answer, and cancelling it while queued; plus
the queues' depths for the metrics.

- ``GET /v2/jobs/<id>``: the status document (``queued``, ``running``, ``succeeded``,
  ``failed``, ``cancelled``), with the answer embedded under ``response`` once there
  is one and it is JSON.
- ``GET /v2/jobs/<id>/response``: the answer exactly as the synchronous route gave it
  (status, content type, binary header length, body); ``202`` with the status document
  and ``Retry-After`` while the job is not done; ``409`` for a cancelled job.
- ``DELETE /v2/jobs/<id>``: cancel a queued job (``200``, also when it already was);
  ``409`` once it runs or ended otherwise; ``404`` for an unknown or expired one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from typing import Any

import orjson
from starlette.responses import Response

from serve_app.errors import ModelNotFound, ServeAppError, ServiceUnavailable
from serve_app.jobs.broker import BrokerUnavailable, queue_depths, redacted
from serve_app.jobs.message import JOB_ID_PATTERN
from serve_app.jobs.settings import QueueSettings
from serve_app.jobs.store import CANCELLED, JobRecord, JobStore
from serve_app.server.http import json_response

logger = logging.getLogger("ray.serve")
_JOB_ID = re.compile(JOB_ID_PATTERN)


class JobNotFound(ModelNotFound):
    """No such job, or its record expired (HTTP 404)."""


class JobConflict(ServeAppError):
    """The job is not in a state that allows this (HTTP 409)."""

    status_code = 409


class JobRoutes:
    """The job routes over the records of ``queues`` (they share one record store)."""

    def __init__(
        self, queues: list[QueueSettings], retry_after_s: int = 1, store: JobStore | None = None
    ) -> None:
        self.queues = queues
        self._retry_after_s = retry_after_s
        self._store = store
        self._lock = threading.Lock()

    def _records(self) -> JobStore:
        with self._lock:
            if self._store is None:
                if not self.queues:
                    raise JobNotFound("this server takes no jobs (no jobs.targets configured)")
                self._store = self.queues[0].store()
            return self._store

    async def _call(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            return fn(self._records(), *args)

        try:
            return await asyncio.to_thread(run)
        except ServiceUnavailable as e:  # e.g. the store's variable unset: our Retry-After
            raise BrokerUnavailable(e.message, self._retry_after_s) from e
        except ServeAppError:
            raise
        except Exception as e:  # the store is down: say so, with when to retry
            raise BrokerUnavailable(
                f"job store unavailable: {type(e).__name__}", self._retry_after_s
            ) from e

    async def _record(self, job_id: str) -> JobRecord:
        if not _JOB_ID.match(job_id):
            raise JobNotFound(f"unknown job {job_id[:80]!r}")
        record = await self._call(JobStore.get, job_id)
        if record is None:
            raise JobNotFound(f"unknown job {job_id!r} (never submitted, or expired)")
        return record

    async def status(self, job_id: str) -> Response:
        """``GET /v2/jobs/<id>``."""
        record = await self._record(job_id)
        doc = record.to_json()
        doc["location"] = f"/v2/jobs/{job_id}"
        answer = record.answer
        if answer is not None and answer.header_length is None:
            try:
                doc["response"] = orjson.loads(answer.body)
            except orjson.JSONDecodeError:
                pass
        headers = None if record.done else {"Retry-After": str(self._retry_after_s)}
        return json_response(doc, headers=headers)

    async def answer(self, job_id: str) -> Response:
        """``GET /v2/jobs/<id>/response``."""
        record = await self._record(job_id)
        if record.state == CANCELLED:
            raise JobConflict(f"job {job_id} was cancelled; it has no answer")
        if record.answer is None:
            return json_response(
                record.to_json(), 202, headers={"Retry-After": str(self._retry_after_s)}
            )
        answer = record.answer
        headers = {"content-type": answer.content_type}
        if answer.header_length is not None:
            headers["inference-header-content-length"] = str(answer.header_length)
        return Response(answer.body, status_code=answer.status_code, headers=headers)

    async def cancel(self, job_id: str) -> Response:
        """``DELETE /v2/jobs/<id>``."""
        await self._record(job_id)
        state = await self._call(JobStore.cancel, job_id)
        if state is None:
            raise JobNotFound(f"unknown job {job_id!r} (never submitted, or expired)")
        if state != CANCELLED:
            raise JobConflict(f"job {job_id} is {state}; only a queued job can be cancelled")
        return json_response((await self._record(job_id)).to_json())


class QueueDepthReporter:
    """A daemon thread that reads each target's queue depths every ``period_s`` and
    hands them to ``sink(target, queue_kind, depth)``."""

    def __init__(self, queues: list[QueueSettings], period_s: float, sink: Any) -> None:
        self.queues = queues
        self.period_s = period_s
        self._sink = sink
        self._failing: str | None = None

    def start(self) -> None:
        """Start reporting (nothing to do without queues)."""
        if self.queues:
            threading.Thread(target=self._loop, name="queue-depths", daemon=True).start()

    def read_once(self) -> None:
        """Read and report every target's depths once."""
        for q in self.queues:
            names = q.queues.all()
            depths = queue_depths(q.broker_url(), list(names.values()))
            for kind, name in names.items():
                self._sink(q.target, kind, depths[name])

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with the replica
            try:
                self.read_once()
                self._failing = None
            except Exception as e:
                reason = f"{type(e).__name__}: {redacted(str(e))}"
                if reason != self._failing:  # log a new failure once, not every period
                    logger.warning("queue depths unavailable: %s", reason)
                self._failing = reason
            time.sleep(self.period_s)
