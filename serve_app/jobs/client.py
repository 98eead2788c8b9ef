"""A producer's helpers: put a job on a target's queue without going through HTTP, and
read its record. The broker and the record store are found as the server finds them:
their URLs in environment variables (``SERVE_APP_BROKER_URL`` by default).

    from serve_app.jobs.client import submit_job, job_record

    job_id = submit_job("minilm", {"inputs": [{"name": "text", "datatype": "BYTES",
                                                "shape": [1], "data": ["hello"]}]})
    record = job_record(job_id)  # state, and once done, record.answer (status, body)

The request is not checked here as the HTTP route checks it: a malformed one is queued
and answered with the 4xx the synchronous route gives (its record says so).
"""

from __future__ import annotations

from typing import Any

import orjson

from serve_app.jobs.message import make_message
from serve_app.jobs.settings import QueueSettings
from serve_app.jobs.store import JobRecord


def _settings(target: str, broker_url_env: str, prefix: str, **extra: Any) -> QueueSettings:
    return QueueSettings(target=target, broker_url_env=broker_url_env, prefix=prefix, **extra)


def submit_job(
    target: str,
    request: dict[str, Any],
    *,
    broker_url_env: str = "SERVE_APP_BROKER_URL",
    prefix: str = "serve-app",
    results_url_env: str | None = None,
    job_id: str | None = None,
) -> str:
    """Queue ``request`` (an OIP request body, as JSON) for ``target``; returns the job
    id (poll ``GET /v2/jobs/<id>`` or :func:`job_record`).

    Raises:
        BrokerUnavailable: the broker or the record store did not take it.
    """
    settings = _settings(target, broker_url_env, prefix, results_url_env=results_url_env)
    message = make_message(target, orjson.dumps(request), job_id=job_id)
    publisher = settings.publisher()
    try:
        publisher.submit(message, settings.queues.jobs)
    finally:
        publisher.close()
    return message.job_id


def job_record(
    job_id: str,
    *,
    broker_url_env: str = "SERVE_APP_BROKER_URL",
    prefix: str = "serve-app",
    results_url_env: str | None = None,
) -> JobRecord | None:
    """The job's record (None: unknown or expired)."""
    settings = _settings("any", broker_url_env, prefix, results_url_env=results_url_env)
    return settings.store().get(job_id)
