"""Job records in a real Redis: every transition of ``JobStore``, the races its Lua
scripts settle (cancel only while queued, the first answer wins), and the time to live
each write re-arms."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from serve_app.jobs.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobStore,
    StoredAnswer,
)

TTL_S = 1000
SUBMITTED_AT_S = 1_700_000_000.25
OK = StoredAnswer(200, b'{"outputs":[]}')
BINARY = StoredAnswer(
    200, b'{"outputs":[]}\x00\xff\xfe', "application/octet-stream", header_length=14
)
REFUSED = StoredAnswer(400, b'{"error":"bad input"}')


@pytest.fixture
def store(redis: Any) -> JobStore:
    return JobStore(redis, TTL_S, prefix="serve-app")


def queued(store: JobStore, job_id: str = "job-1") -> str:
    assert store.create(job_id, "minilm", SUBMITTED_AT_S)
    return job_id


def running(store: JobStore, job_id: str = "job-1") -> str:
    queued(store, job_id)
    assert store.start(job_id, "minilm", SUBMITTED_AT_S) == RUNNING
    return job_id


def test_a_created_job_is_queued_and_its_id_taken(store: JobStore, redis: Any) -> None:
    job_id = queued(store)
    record = store.get(job_id)
    assert record is not None
    assert (record.state, record.target, record.submitted_at_s) == (
        QUEUED,
        "minilm",
        SUBMITTED_AT_S,
    )
    assert record.attempts == 0
    assert record.started_at_s is record.finished_at_s is record.answer is None
    assert not record.done
    assert redis.exists("serve-app:job:job-1") == 1
    assert store.create(job_id, "other", 1.0) is False
    assert store.get(job_id).target == "minilm"  # type: ignore[union-attr]


def test_each_delivery_runs_the_job_and_counts_an_attempt(store: JobStore) -> None:
    job_id = queued(store)
    assert store.start(job_id, "minilm", SUBMITTED_AT_S) == RUNNING
    first = store.get(job_id)
    assert first is not None and (first.state, first.attempts) == (RUNNING, 1)
    assert first.started_at_s is not None
    assert store.start(job_id, "minilm", SUBMITTED_AT_S) == RUNNING  # redelivered
    assert store.get(job_id).attempts == 2  # type: ignore[union-attr]


def test_a_delivery_without_a_record_creates_it(store: JobStore) -> None:
    """A producer of one's own publishes without writing a record, or it expired."""
    assert store.start("job-9", "minilm", SUBMITTED_AT_S) == RUNNING
    record = store.get("job-9")
    assert record is not None
    assert (record.state, record.target, record.submitted_at_s, record.attempts) == (
        RUNNING,
        "minilm",
        SUBMITTED_AT_S,
        1,
    )


@pytest.mark.parametrize(("state", "answer"), [(SUCCEEDED, OK), (FAILED, REFUSED)])
def test_a_job_is_finished_once_and_the_first_answer_kept(
    store: JobStore, state: str, answer: StoredAnswer
) -> None:
    job_id = running(store)
    assert store.finish(job_id, state, answer) is True
    other = SUCCEEDED if state == FAILED else FAILED
    assert store.finish(job_id, other, StoredAnswer(503, b"later")) is False
    record = store.get(job_id)
    assert record is not None and record.done
    assert (record.state, record.answer) == (state, answer)
    assert record.finished_at_s is not None
    assert record.to_json()["status_code"] == answer.status_code


@pytest.mark.parametrize("final", [SUCCEEDED, FAILED, CANCELLED])
def test_a_delivery_of_an_ended_job_returns_its_state_and_changes_nothing(
    store: JobStore, final: str
) -> None:
    job_id = queued(store)
    if final == CANCELLED:
        assert store.cancel(job_id) == CANCELLED
    else:
        store.start(job_id, "minilm", SUBMITTED_AT_S)
        store.finish(job_id, final, OK)
    before = store.get(job_id)
    assert store.start(job_id, "minilm", SUBMITTED_AT_S) == final
    assert store.get(job_id) == before


def test_only_a_queued_job_is_cancelled(store: JobStore) -> None:
    job_id = queued(store)
    assert store.cancel(job_id) == CANCELLED
    record = store.get(job_id)
    assert record is not None and (record.state, record.answer) == (CANCELLED, None)
    assert record.finished_at_s is not None
    assert store.finish(job_id, SUCCEEDED, OK) is False  # a late answer is not stored
    assert store.get(job_id).state == CANCELLED  # type: ignore[union-attr]

    running_id = running(store, "job-2")
    assert store.cancel(running_id) == RUNNING  # the route answers 409 with it
    assert store.get(running_id).state == RUNNING  # type: ignore[union-attr]
    store.finish(running_id, SUCCEEDED, OK)
    assert store.cancel(running_id) == SUCCEEDED
    assert store.get(running_id).state == SUCCEEDED  # type: ignore[union-attr]

    assert store.cancel("never-submitted") is None


def test_binary_answers_keep_their_header_length_and_bytes(store: JobStore) -> None:
    store.finish(running(store, "binary"), SUCCEEDED, BINARY)
    store.finish(running(store, "json"), SUCCEEDED, OK)
    assert store.get("binary").answer == BINARY  # type: ignore[union-attr]
    json_answer = store.get("json").answer  # type: ignore[union-attr]
    assert json_answer == StoredAnswer(200, b'{"outputs":[]}', "application/json", None)


def test_every_write_re_arms_the_time_to_live(store: JobStore, redis: Any) -> None:
    key = store.key("job-1")
    queued(store)
    assert TTL_S - 5 < redis.ttl(key) <= TTL_S
    for write in (
        lambda: store.start("job-1", "minilm", SUBMITTED_AT_S),
        lambda: store.finish("job-1", SUCCEEDED, OK),
    ):
        redis.expire(key, 7)
        write()
        assert TTL_S - 5 < redis.ttl(key) <= TTL_S

    key = store.key("job-2")
    queued(store, "job-2")
    redis.expire(key, 7)
    store.cancel("job-2")
    assert TTL_S - 5 < redis.ttl(key) <= TTL_S

    assert store.start("job-3", "minilm", SUBMITTED_AT_S) == RUNNING  # created by start
    assert TTL_S - 5 < redis.ttl(store.key("job-3")) <= TTL_S


def test_an_expired_record_is_unknown(store: JobStore, redis: Any) -> None:
    queued(store)
    assert redis.expireat(store.key("job-1"), 1)  # a time in the past: expired now
    assert store.get("job-1") is None
    assert store.cancel("job-1") is None


def test_delete_forgets_a_job(store: JobStore) -> None:
    store.delete(queued(store))
    assert store.get("job-1") is None
    assert store.create("job-1", "minilm", SUBMITTED_AT_S) is True


def test_two_answers_stored_at_once_leave_exactly_one(store: JobStore) -> None:
    """Two deliveries of each job finish at the same moment: one answer per job wins."""
    jobs = [running(store, f"race-{i}") for i in range(20)]
    barrier = threading.Barrier(2)
    won: dict[str, list[bytes]] = {job_id: [] for job_id in jobs}

    def deliver(body: bytes) -> None:
        for job_id in jobs:
            barrier.wait()
            if store.finish(job_id, SUCCEEDED, StoredAnswer(200, body)):
                won[job_id].append(body)

    threads = [threading.Thread(target=deliver, args=(b,)) for b in (b"first", b"second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for job_id in jobs:
        assert len(won[job_id]) == 1, won[job_id]
        assert store.get(job_id).answer.body == won[job_id][0]  # type: ignore[union-attr]


def test_the_status_document_names_the_job_and_its_progress(store: JobStore) -> None:
    job_id = queued(store)
    assert store.get(job_id).to_json() == {  # type: ignore[union-attr]
        "id": "job-1",
        "status": "queued",
        "model": "minilm",
        "submitted_at_s": SUBMITTED_AT_S,
        "attempts": 0,
    }
    store.start(job_id, "minilm", SUBMITTED_AT_S)
    store.finish(job_id, FAILED, REFUSED)
    doc = store.get(job_id).to_json()  # type: ignore[union-attr]
    assert (doc["status"], doc["attempts"], doc["status_code"]) == ("failed", 1, 400)
    assert doc["finished_at_s"] >= doc["started_at_s"] > SUBMITTED_AT_S
    assert "response" not in doc
