"""Asynchronous submission without Ray: the ``Prefer`` header parsed as RFC 7240 says,
a response split into what a consumer stores, and ``JobSubmitter`` queueing a checked
request on a real Redis (202 + Location) or answering 503 when it cannot."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from serve_app.jobs.broker import BrokerUnavailable, redis_client
from serve_app.jobs.settings import QueueSettings
from serve_app.jobs.store import QUEUED, JobStore
from serve_app.local.broker import EmbeddedRedis
from serve_app.server.job_submit import JobSubmitter, response_parts, wants_async

ENV = "SERVE_APP_TEST_BROKER_URL"
SETTINGS = QueueSettings(target="minilm", broker_url_env=ENV, prefix="serve-app")
BODY = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["hi"]}]}'


def request(*prefer: str) -> Request:
    headers = [(b"content-type", b"application/json")]
    headers += [(b"prefer", value.encode("latin-1")) for value in prefer]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ((), False),
        (("respond-async",), True),
        (("Respond-Async",), True),
        (("RESPOND-ASYNC",), True),
        (("  respond-async  ",), True),
        (("respond-async, wait=10",), True),
        (("wait=10, respond-async",), True),
        (("wait=10,respond-async",), True),
        (("respond-async; foo=bar",), True),
        (("return=minimal", "respond-async"), True),  # several Prefer headers
        (("return=minimal", "wait=5"), False),
        (("wait=10; respond-async",), False),  # a parameter of wait, not a preference
        (("respond-asynchronously",), False),
        (("no-respond-async",), False),
        (("",), False),
    ],
)
def test_wants_async(prefer: tuple[str, ...], expected: bool) -> None:
    assert wants_async(request(*prefer)) is expected


def test_a_response_keeps_its_status_body_and_describing_headers() -> None:
    body = b'{"outputs":[]}\x00\xff'
    response = Response(
        body,
        status_code=207,
        headers={"inference-header-content-length": "14", "x-request-id": "r1"},
        media_type="application/octet-stream",
    )
    assert response_parts(response) == (
        207,
        {"content-type": "application/octet-stream", "inference-header-content-length": "14"},
        body,
    )


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[Any]:
    client = redis_client(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def test_a_submitted_job_is_queued_and_located(
    redis_server: EmbeddedRedis, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, redis_server.url)
    submitter = JobSubmitter(SETTINGS, retry_after_s=2)
    response = asyncio.run(submitter.submit(BODY, None, "2"))
    assert response.status_code == 202
    doc = json.loads(bytes(response.body))
    job_id = doc["id"]
    assert doc == {"id": job_id, "status": "queued", "location": f"/v2/jobs/{job_id}"}
    assert response.headers["location"] == f"/v2/jobs/{job_id}"
    assert response.headers["preference-applied"] == "respond-async"
    record = JobStore(redis, 60, prefix="serve-app").get(job_id)
    assert record is not None and (record.state, record.target) == (QUEUED, "minilm")
    (raw,) = redis.lrange("serve-app.minilm", 0, -1)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    assert (kwargs["job_id"], kwargs["version"]) == (job_id, "2")
    assert kwargs["request"] == json.loads(BODY)


def test_without_a_broker_url_a_submit_is_503_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(BrokerUnavailable) as e:
        asyncio.run(JobSubmitter(SETTINGS).submit(BODY, None, None))
    assert e.value.status_code == 503
    assert str(e.value).startswith(f"the broker URL is not set: environment variable {ENV}")
