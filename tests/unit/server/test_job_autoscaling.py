"""``QueueDepthPolicy`` without Ray's controller: the policy called as the controller
calls it (inside its event loop, with an ``AutoscalingContext``-shaped stand-in),
reading a real Redis queue. Desired consumers = (waiting + held + overdue + HTTP) /
target, from zero."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from serve_app.jobs.broker import UNACKED_INDEX_KEY, UNACKED_KEY, redis_client
from serve_app.local.broker import EmbeddedRedis
from serve_app.server.job_autoscaling import IN_FLIGHT_METRIC, QueueDepthPolicy

ENV = "SERVE_APP_TEST_BROKER_URL"
QUEUE = "serve-app.minilm"
TARGET_ONGOING = 16


@pytest.fixture
def redis(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A client of the module's Redis (empty), named by ``ENV`` as the controller's is."""
    monkeypatch.setenv(ENV, redis_server.url)
    client = redis_client(redis_server.url)
    client.flushdb()
    yield client
    client.close()


def context(replicas: int, held: list[float] | None = None, http: float = 0.0) -> Any:
    """What the policy reads of an ``AutoscalingContext``."""
    metrics = {IN_FLIGHT_METRIC: {f"replica-{i}": n for i, n in enumerate(held or [])}}
    return SimpleNamespace(
        current_num_replicas=replicas,
        total_num_requests=http,
        aggregated_metrics=metrics if held else {},
        config=SimpleNamespace(get_target_ongoing_requests=lambda: TARGET_ONGOING),
        policy_state={},
    )


def decide(policy: QueueDepthPolicy, ctx: Any) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The decisions before and after the poll the first call starts (both calls on one
    loop, as in the controller; the second after the poll has finished)."""

    async def go() -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        first = policy(ctx)
        polls = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*polls)
        return first, policy(ctx)

    return asyncio.run(go())


def waiting(redis: Any, n: int) -> None:
    if n:
        redis.lpush(QUEUE, *[b"{}"] * n)


def test_zero_consumers_wake_for_the_first_job(redis: Any) -> None:
    waiting(redis, 3)
    before, after = decide(QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60), context(0))
    assert before == (0, {"queue_length": 0, "in_flight": 0, "overdue": 0})
    assert after == (1, {"queue_length": 3, "in_flight": 0, "overdue": 0})


def test_zero_consumers_stay_at_zero_with_nothing_to_do(redis: Any) -> None:
    _, after = decide(QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60), context(0))
    assert after == (0, {"queue_length": 0, "in_flight": 0, "overdue": 0})


def test_waiting_and_held_jobs_together_size_the_consumers(redis: Any) -> None:
    waiting(redis, 40)
    policy = QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60)
    before, after = decide(policy, context(2, held=[5.0, 3.0]))
    assert before[0] == 8 / TARGET_ONGOING  # held only: the queue not read yet
    assert after == (3.0, {"queue_length": 40, "in_flight": 8.0, "overdue": 0})


def test_a_drained_queue_in_the_consumers_hands_keeps_them(redis: Any) -> None:
    """Nothing waits, but 2 consumers hold 32 jobs: scaling down would kill them mid-job."""
    _, after = decide(QueueDepthPolicy(ENV, QUEUE), context(2, held=[16.0, 16.0]))
    assert after[0] == 2.0


def test_http_load_counts_too(redis: Any) -> None:
    waiting(redis, 10)
    _, after = decide(QueueDepthPolicy(ENV, QUEUE), context(1, held=[2.0], http=4.0))
    assert after[0] == 16 / TARGET_ONGOING


def test_overdue_deliveries_wake_a_consumer(redis: Any) -> None:
    """A consumer died holding a job: only a running consumer puts it back on the queue."""
    now_s = time.time()
    redis.zadd(
        UNACKED_INDEX_KEY,
        {"died": now_s - 400, "running-elsewhere": now_s - 5, "other-target": now_s - 400},
    )
    # kombu keeps each as JSON [message, exchange, routing key]: only this queue's count.
    redis.hset(UNACKED_KEY, "died", json.dumps([{}, QUEUE, QUEUE]))
    redis.hset(UNACKED_KEY, "running-elsewhere", json.dumps([{}, QUEUE, QUEUE]))
    redis.hset(UNACKED_KEY, "other-target", json.dumps([{}, "other", "serve-app.other"]))
    policy = QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60, redelivery_after_s=300)
    _, after = decide(policy, context(0))
    assert after == (1, {"queue_length": 0, "in_flight": 0, "overdue": 1})
    # without redelivery_after_s (a RabbitMQ broker) they are not looked for
    _, after = decide(QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60), context(0))
    assert after[0] == 0


def test_an_unset_broker_variable_is_logged_and_held_jobs_still_count(
    redis: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waiting(redis, 40)  # unseen: the policy does not know where the queue is
    monkeypatch.delenv(ENV)
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addHandler(caplog.handler)  # Ray's logger may not propagate
    try:
        with caplog.at_level(logging.ERROR, logger="ray.serve"):
            policy = QueueDepthPolicy(ENV, QUEUE, poll_interval_s=60)
    finally:
        serve_logger.removeHandler(caplog.handler)
    errors = {r.getMessage() for r in caplog.records if r.levelno == logging.ERROR}
    assert errors == {
        f"queue {QUEUE}: {ENV} is not set in the Serve controller's environment; its "
        "consumers scale on held jobs only"
    }
    _, after = decide(policy, context(2, held=[8.0, 16.0]))
    assert after == (24 / TARGET_ONGOING, {"queue_length": 0, "in_flight": 24.0, "overdue": 0})
    _, after = decide(policy, context(0))
    assert after[0] == 0
