"""``/v2/jobs/<id>`` without Ray: ``JobRoutes`` over records in a real Redis, errors
turned into responses by the app's one mapper (``error_response``). Status documents,
the stored answer byte for byte, cancelling, unknown and invalid ids, a store that is
down; and the queue depths the server exports."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette.responses import Response

from serve_app.jobs.broker import JobPublisher, QueueNames, redis_client
from serve_app.jobs.message import make_message
from serve_app.jobs.settings import QueueSettings
from serve_app.jobs.store import FAILED, SUCCEEDED, JobStore, StoredAnswer
from serve_app.local.broker import EmbeddedRedis
from serve_app.server.http import error_response
from serve_app.server.job_routes import JobRoutes, QueueDepthReporter

ENV = "SERVE_APP_TEST_BROKER_URL"
RETRY_AFTER_S = 3
SUBMITTED_AT_S = 1_700_000_000.5
ANSWER = b'{"model_name":"minilm","outputs":[{"name":"embedding","data":[0.5]}]}'
BINARY = StoredAnswer(
    200, b'{"outputs":[{"name":"y"}]}\x00\xff\x80@', "application/octet-stream", 26
)


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[Any]:
    """A client of the module's Redis (empty database)."""
    client = redis_client(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(redis: Any) -> JobStore:
    return JobStore(redis, 600, prefix="serve-app")


@pytest.fixture
def routes(store: JobStore) -> JobRoutes:
    return JobRoutes([], RETRY_AFTER_S, store=store)


def call(route: Callable[[str], Awaitable[Response]], job_id: str) -> Response:
    """The route's response, or the error it raised as the app answers it."""

    async def go() -> Response:
        try:
            return await route(job_id)
        except Exception as e:
            return error_response(e)

    return asyncio.run(go())


def body(response: Response) -> Any:
    return json.loads(bytes(response.body))


def queued(store: JobStore, job_id: str = "job-1") -> str:
    assert store.create(job_id, "minilm", SUBMITTED_AT_S)
    return job_id


def running(store: JobStore, job_id: str = "job-1") -> str:
    store.start(queued(store, job_id), "minilm", SUBMITTED_AT_S)
    return job_id


def finished(store: JobStore, answer: StoredAnswer, job_id: str = "job-1") -> str:
    state = SUCCEEDED if answer.status_code < 400 else FAILED
    assert store.finish(running(store, job_id), state, answer)
    return job_id


def test_a_queued_jobs_status_says_when_to_ask_again(routes: JobRoutes, store: JobStore) -> None:
    response = call(routes.status, queued(store))
    assert response.status_code == 200
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert response.headers["content-type"] == "application/json"
    assert body(response) == {
        "id": "job-1",
        "status": "queued",
        "model": "minilm",
        "submitted_at_s": SUBMITTED_AT_S,
        "attempts": 0,
        "location": "/v2/jobs/job-1",
    }


def test_a_running_jobs_status(routes: JobRoutes, store: JobStore) -> None:
    response = call(routes.status, running(store))
    doc = body(response)
    assert (doc["status"], doc["attempts"]) == ("running", 1)
    assert doc["started_at_s"] > SUBMITTED_AT_S
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)


def test_a_succeeded_jobs_status_embeds_its_json_answer(routes: JobRoutes, store: JobStore) -> None:
    response = call(routes.status, finished(store, StoredAnswer(200, ANSWER)))
    assert response.status_code == 200
    assert "retry-after" not in response.headers
    doc = body(response)
    assert (doc["status"], doc["status_code"]) == ("succeeded", 200)
    assert doc["response"] == json.loads(ANSWER)
    assert doc["finished_at_s"] >= doc["started_at_s"]


def test_a_binary_answer_is_not_embedded_in_the_status(routes: JobRoutes, store: JobStore) -> None:
    doc = body(call(routes.status, finished(store, BINARY)))
    assert (doc["status"], doc["status_code"]) == ("succeeded", 200)
    assert "response" not in doc


def test_the_answer_is_202_until_the_job_is_done(routes: JobRoutes, store: JobStore) -> None:
    response = call(routes.answer, queued(store))
    assert response.status_code == 202
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert body(response)["status"] == "queued"
    store.start("job-1", "minilm", SUBMITTED_AT_S)
    response = call(routes.answer, "job-1")
    assert (response.status_code, body(response)["status"]) == (202, "running")


@pytest.mark.parametrize(
    "answer",
    [
        StoredAnswer(200, ANSWER),
        BINARY,
        StoredAnswer(400, b'{"error":"input \'text\' must be BYTES","request_id":"r1"}'),
        StoredAnswer(503, b'{"error":"job failed after 4 attempts; last: HTTP 503"}'),
    ],
    ids=["json", "binary", "refused", "failed-every-attempt"],
)
def test_the_answer_is_what_the_synchronous_route_gave(
    routes: JobRoutes, store: JobStore, answer: StoredAnswer
) -> None:
    response = call(routes.answer, finished(store, answer))
    assert response.status_code == answer.status_code
    assert bytes(response.body) == answer.body
    assert response.headers["content-type"] == answer.content_type
    length = response.headers.get("inference-header-content-length")
    assert length == (None if answer.header_length is None else str(answer.header_length))
    assert "retry-after" not in response.headers


def test_a_cancelled_job_has_no_answer(routes: JobRoutes, store: JobStore) -> None:
    store.cancel(queued(store))
    response = call(routes.answer, "job-1")
    assert response.status_code == 409
    assert body(response)["error"] == "job job-1 was cancelled; it has no answer"
    assert body(call(routes.status, "job-1"))["status"] == "cancelled"


def test_a_queued_job_is_cancelled(routes: JobRoutes, store: JobStore) -> None:
    response = call(routes.cancel, queued(store))
    assert response.status_code == 200
    doc = body(response)
    assert (doc["id"], doc["status"]) == ("job-1", "cancelled")
    assert "finished_at_s" in doc
    assert store.get("job-1").state == "cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize("state", ["running", "succeeded"])
def test_a_job_that_runs_or_ran_is_not_cancelled(
    routes: JobRoutes, store: JobStore, state: str
) -> None:
    if state == "running":
        running(store)
    else:
        finished(store, StoredAnswer(200, ANSWER))
    response = call(routes.cancel, "job-1")
    assert response.status_code == 409
    assert body(response)["error"] == (f"job job-1 is {state}; only a queued job can be cancelled")
    assert store.get("job-1").state == state  # type: ignore[union-attr]


@pytest.mark.parametrize("route", ["status", "answer", "cancel"])
def test_an_unknown_job_is_404(routes: JobRoutes, route: str) -> None:
    response = call(getattr(routes, route), "never-submitted")
    assert response.status_code == 404
    assert body(response)["error"] == "unknown job 'never-submitted' (never submitted, or expired)"


@pytest.mark.parametrize("route", ["status", "answer", "cancel"])
@pytest.mark.parametrize("job_id", ["a b", "../job-1", "x" * 65, "job-1:response"])
def test_an_invalid_job_id_is_404_without_reading_the_store(route: str, job_id: str) -> None:
    routes = JobRoutes([], RETRY_AFTER_S, store=JobStore(_DeadClient(), 600))
    response = call(getattr(routes, route), job_id)
    assert response.status_code == 404
    assert body(response)["error"] == f"unknown job {job_id[:80]!r}"


class _DeadClient:
    """A Redis client whose every command fails: the id check must come first."""

    def register_script(self, script: str) -> Any:
        return self._fail

    def __getattr__(self, name: str) -> Any:
        return self._fail

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the store was read")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("route", ["status", "answer", "cancel"])
def test_a_store_that_is_down_is_503_with_retry_after(route: str) -> None:
    client = redis_client(f"redis://:pw@127.0.0.1:{closed_port()}/0")
    routes = JobRoutes([], RETRY_AFTER_S, store=JobStore(client, 600))
    response = call(getattr(routes, route), "job-1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert body(response)["error"] == "job store unavailable: ConnectionError"


QUEUE = QueueSettings(target="minilm", broker_url_env=ENV, prefix="serve-app")


def test_the_store_is_the_first_queues_from_its_environment_variable(
    redis_server: EmbeddedRedis, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, redis_server.url)
    queued(store)
    assert body(call(JobRoutes([QUEUE], RETRY_AFTER_S).status, "job-1"))["status"] == "queued"


def test_an_unset_store_variable_is_503_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    response = call(JobRoutes([QUEUE], RETRY_AFTER_S).status, "job-1")
    assert response.status_code == 503
    assert body(response)["error"].startswith(
        f"the broker URL is not set: environment variable {ENV} is empty"
    )
    # BUG: the configured Retry-After (3) is lost on this path: resolve_url's
    # BrokerUnavailable carries its default of 1 s (see the report).
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)


def test_a_server_without_job_targets_has_no_jobs() -> None:
    response = call(JobRoutes([], RETRY_AFTER_S).status, "job-1")
    assert response.status_code == 404
    assert body(response)["error"] == "this server takes no jobs (no jobs.targets configured)"


def test_queue_depths_are_reported_per_target_and_kind(
    redis_server: EmbeddedRedis, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, redis_server.url)
    settings = [
        QueueSettings(target=t, broker_url_env=ENV, prefix="serve-app")
        for t in ("minilm", "triage")
    ]
    publisher = JobPublisher(redis_server.url, store, redelivery_after_s=300)
    try:
        for _ in range(3):
            publisher.submit(
                make_message("minilm", b"{}"), QueueNames.of("serve-app", "minilm").jobs
            )
        publisher.publish("serve_app.unprocessable", "serve-app.triage.unprocessable", kwargs={})
    finally:
        publisher.close()
    seen: list[tuple[str, str, int]] = []
    QueueDepthReporter(settings, 60.0, lambda *d: seen.append(d)).read_once()
    assert seen == [
        ("minilm", "jobs", 3),
        ("minilm", "failed", 0),
        ("minilm", "unprocessable", 0),
        ("triage", "jobs", 0),
        ("triage", "failed", 0),
        ("triage", "unprocessable", 1),
    ]
