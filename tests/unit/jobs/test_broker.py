"""The broker side against a real Redis: URLs from the environment (never shown with
their password), publishing through ``JobPublisher`` (record first, nothing left behind
when the broker or the store refuses), queue depths and overdue deliveries."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_app.jobs.broker import (
    UNACKED_INDEX_KEY,
    BrokerUnavailable,
    JobExists,
    JobPublisher,
    QueueNames,
    overdue_unacked,
    queue_depths,
    redacted,
    redis_client,
    resolve_url,
)
from serve_app.jobs.message import TASK_NAME, make_message
from serve_app.jobs.store import QUEUED, JobStore
from serve_app.local.broker import EmbeddedRedis

ENV = "SERVE_APP_TEST_BROKER_URL"
QUEUES = QueueNames.of("serve-app", "minilm")
BODY = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["hi"]}]}'


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(redis: Any) -> JobStore:
    return JobStore(redis, 600, prefix="serve-app")


@pytest.fixture
def publisher(redis_url: str, store: JobStore) -> Iterator[JobPublisher]:
    pub = JobPublisher(redis_url, store, redelivery_after_s=300, retry_after_s=2)
    yield pub
    pub.close()


def test_an_unset_url_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(BrokerUnavailable) as e:
        resolve_url(ENV)
    assert e.value.status_code == 503
    assert str(e.value).startswith(
        f"the broker URL is not set: environment variable {ENV} is empty"
    )
    monkeypatch.setenv(ENV, "  ")
    with pytest.raises(BrokerUnavailable, match=f"job record store URL is not set: .* {ENV} "):
        resolve_url(ENV, "job record store")
    monkeypatch.setenv(ENV, " redis://:pw@127.0.0.1:6379/0\n")
    assert resolve_url(ENV) == "redis://:pw@127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.7:6379/0", "redis://:***@10.0.0.7:6379/0"),
        ("amqp://serve:s3cret@rabbit:5672//", "amqp://serve:***@rabbit:5672//"),
        (
            "rediss://default:p%40ss%3Aw@redis.example:6380/2",
            "rediss://default:***@redis.example:6380/2",
        ),
        ("redis://s3cret:s3cret@h:6379/0", "redis://s3cret:***@h:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redacted_urls_hide_the_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_queue_names_per_target() -> None:
    assert QUEUES.all() == {
        "jobs": "serve-app.minilm",
        "failed": "serve-app.minilm.failed",
        "unprocessable": "serve-app.minilm.unprocessable",
    }


def test_published_jobs_are_recorded_and_counted_in_the_queue(
    redis_url: str, redis: Any, store: JobStore, publisher: JobPublisher
) -> None:
    messages = [make_message("minilm", BODY) for _ in range(5)]
    for message in messages:
        publisher.submit(message, QUEUES.jobs)
    depths = queue_depths(redis_url, list(QUEUES.all().values()))
    assert depths == {QUEUES.jobs: 5, QUEUES.failed: 0, QUEUES.unprocessable: 0}
    for message in messages:
        record = store.get(message.job_id)
        assert record is not None
        assert (record.state, record.target) == (QUEUED, "minilm")
        assert record.submitted_at_s == pytest.approx(message.submitted_at_s)
    # The oldest message is a Celery task whose id is the job's and whose kwargs are it.
    raw = json.loads(redis.lrange(QUEUES.jobs, -1, -1)[0])
    assert raw["headers"]["task"] == TASK_NAME
    assert raw["headers"]["id"] == messages[0].job_id
    args, kwargs, _ = json.loads(base64.b64decode(raw["body"]))
    assert (args, kwargs) == ([], messages[0].task_kwargs())


def test_a_job_id_taken_is_refused_and_the_first_job_kept(
    redis_url: str, store: JobStore, publisher: JobPublisher
) -> None:
    message = make_message("minilm", BODY)
    publisher.submit(message, QUEUES.jobs)
    with pytest.raises(JobExists, match=f"job id {message.job_id} exists"):
        publisher.submit(message, QUEUES.jobs)
    assert store.get(message.job_id).state == QUEUED  # type: ignore[union-attr]
    assert queue_depths(redis_url, [QUEUES.jobs]) == {QUEUES.jobs: 1}


def test_a_stopped_redis_is_a_503_at_once(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    client = redis_client(url)
    publisher = JobPublisher(url, JobStore(client, 600), redelivery_after_s=300, retry_after_s=2)
    try:
        publisher.submit(make_message("minilm", BODY), QUEUES.jobs)  # pooled connections
        server.stop()
        with pytest.raises(BrokerUnavailable) as e:
            publisher.submit(make_message("minilm", BODY), QUEUES.jobs)
    finally:
        server.stop()
        publisher.close()
        client.close()
    assert (e.value.status_code, e.value.retry_after_s) == (503, 2)
    assert str(e.value) == "job store unavailable: ConnectionError"


def test_a_broker_that_refuses_leaves_no_record_behind(
    monkeypatch: pytest.MonkeyPatch, store: JobStore, redis: Any
) -> None:
    port = closed_port()
    broker_url = f"redis://:s3cret@127.0.0.1:{port}/0"
    publisher = JobPublisher(broker_url, store, redelivery_after_s=300, retry_after_s=2)
    message = make_message("minilm", BODY)
    started_s = time.monotonic()
    try:
        with pytest.raises(BrokerUnavailable) as e:
            publisher.submit(message, QUEUES.jobs)
    finally:
        publisher.close()
    # A refused publish is retried twice, at most 1 s apart (task_publish_retry_policy).
    assert time.monotonic() - started_s < 5.0
    assert (e.value.status_code, e.value.retry_after_s) == (503, 2)
    assert str(e.value).startswith(
        f"broker redis://:***@127.0.0.1:{port}/0 did not take the job: OperationalError"
    )
    assert "s3cret" not in str(e.value)
    assert store.get(message.job_id) is None
    assert redis.keys("*") == []


def test_overdue_deliveries_are_counted_from_the_unacked_index(redis: Any) -> None:
    now_s = time.time()
    redis.zadd(UNACKED_INDEX_KEY, {"died-long-ago": now_s - 900, "died": now_s - 301})
    redis.zadd(UNACKED_INDEX_KEY, {"running": now_s - 10, "just-taken": now_s})
    assert overdue_unacked(redis, redelivery_after_s=300) == 2
    assert overdue_unacked(redis, redelivery_after_s=600) == 1
    assert overdue_unacked(redis, redelivery_after_s=1) == 3
