"""The broker side of inference jobs: URLs from the environment, queue names, the
Celery settings producers and consumers share, publishing and queue depth.

Broker URLs carry a password, so they never appear in a config file: the config names
the environment variable that holds each (filled from a Kubernetes Secret in a cluster,
by ``serve-app demo`` locally). Redis is the default broker and the only result store;
RabbitMQ (``amqp://``) works as the broker with Redis for the records.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serve_app.errors import ServeAppError, ServiceUnavailable
from serve_app.jobs.message import TASK_NAME, JobMessage
from serve_app.jobs.store import JobStore

CONNECT_TIMEOUT_S = 2.0
"""How long a producer waits for the broker before the submit is a 503."""


class BrokerUnavailable(ServiceUnavailable):
    """The broker or the record store did not take the job (HTTP 503, Retry-After)."""


class JobExists(ServeAppError):
    """A job with the id a producer chose exists already (HTTP 409)."""

    status_code = 409


def resolve_url(env_name: str, what: str = "broker") -> str:
    """The URL in environment variable ``env_name``.

    Raises:
        BrokerUnavailable: the variable is unset or empty (names the variable).
    """
    url = os.environ.get(env_name, "").strip()
    if not url:
        raise BrokerUnavailable(
            f"the {what} URL is not set: environment variable {env_name} is empty "
            "(serve-app demo sets it for its embedded Redis; in a cluster it comes from "
            "the broker Secret)"
        )
    return url


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def is_redis(url: str) -> bool:
    """Whether ``url`` names a Redis server."""
    return urlsplit(url).scheme in ("redis", "rediss", "redis+socket")


@dataclass(frozen=True)
class QueueNames:
    """The three queues of one target: jobs, jobs that failed every retry, and
    messages that are not jobs."""

    jobs: str
    failed: str
    unprocessable: str

    @classmethod
    def of(cls, prefix: str, target: str) -> QueueNames:
        """The queues of ``target`` under ``prefix`` (``<prefix>.<target>[.failed|...]``)."""
        base = f"{prefix}.{target}"
        return cls(base, f"{base}.failed", f"{base}.unprocessable")

    def all(self) -> dict[str, str]:
        """Kind (``jobs``, ``failed``, ``unprocessable``) -> queue name."""
        return {"jobs": self.jobs, "failed": self.failed, "unprocessable": self.unprocessable}


def celery_settings(
    redelivery_after_s: int, result_ttl_s: int, redis: bool = True
) -> dict[str, Any]:
    """Celery settings producers and consumers share.

    One message reserved per consumer thread (``worker_prefetch_multiplier: 1``): what a
    consumer holds is what it works on, and the queue's depth is the backlog. On Redis an
    unacknowledged message returns to its queue ``redelivery_after_s`` after delivery
    (kombu's ``visibility_timeout``): a job that takes longer runs twice, once per
    delivery (the first answer stored wins). ``redis``: the broker is Redis (its
    transport options are set)."""
    transport: dict[str, Any] = {}
    if redis:
        transport = {
            "visibility_timeout": redelivery_after_s,
            # A running consumer sweeps for overdue messages this often (kombu's default
            # is 10 s x a throttle of 10: 100 s late on top of the timeout).
            "unacked_restore_interval": max(1, min(10, redelivery_after_s // 4)),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            "socket_timeout": 30,
        }
    return {
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_expires": result_ttl_s,
        "worker_prefetch_multiplier": 1,
        "broker_connection_timeout": CONNECT_TIMEOUT_S,
        "broker_connection_retry_on_startup": True,
        # Celery gives up on a lost broker after 100 attempts and its worker thread ends,
        # leaving a replica that consumes nothing: retry for as long as it takes.
        "broker_connection_max_retries": None,
        "broker_transport_options": transport,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    }


def redis_client(url: str, timeout_s: float = 10.0) -> Any:
    """A Redis client for ``url`` (redis-py): connects within ``CONNECT_TIMEOUT_S``,
    each command within ``timeout_s``."""
    import redis

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=min(CONNECT_TIMEOUT_S, timeout_s),
        socket_timeout=timeout_s,
        health_check_interval=30,
    )


class JobPublisher:
    """Puts jobs on their target's queue: the record first, then the message (a message
    without a record would still run; a record without a message is removed)."""

    def __init__(
        self,
        broker_url: str,
        store: JobStore,
        redelivery_after_s: int,
        retry_after_s: int = 1,
    ) -> None:
        from celery import Celery

        self._app = Celery("serve_app", broker=broker_url)
        self._app.conf.update(
            celery_settings(redelivery_after_s, store.ttl_s, redis=is_redis(broker_url))
        )
        self._broker = redacted(broker_url)
        self.store = store
        self.retry_after_s = retry_after_s

    def submit(self, message: JobMessage, queue: str) -> None:
        """Record ``message`` as queued and publish it on ``queue``.

        Raises:
            BrokerUnavailable: the store or the broker did not take it (nothing is left
                queued: the client may retry).
            JobExists: a job with this id exists (a producer chose the id).
        """
        try:
            if not self.store.create(message.job_id, message.target, message.submitted_at_s):
                raise JobExists(f"job id {message.job_id} exists")
        except JobExists:
            raise
        except Exception as e:
            raise BrokerUnavailable(
                f"job store unavailable: {type(e).__name__}", self.retry_after_s
            ) from e
        try:
            self.publish(TASK_NAME, queue, message.task_kwargs(), task_id=message.job_id)
        except Exception as e:
            try:
                self.store.delete(message.job_id)
            except Exception:  # the store went too: the record expires by itself
                pass
            raise BrokerUnavailable(
                f"broker {self._broker} did not take the job: {type(e).__name__}",
                self.retry_after_s,
            ) from e

    def publish(
        self,
        name: str,
        queue: str,
        kwargs: dict[str, Any] | None = None,
        args: list[Any] | None = None,
        task_id: str | None = None,
    ) -> None:
        """Publish one Celery task message (raises the broker's error)."""
        self._app.send_task(name, args=args, kwargs=kwargs, queue=queue, task_id=task_id)

    def close(self) -> None:
        """Release the broker connections."""
        self._app.close()


UNACKED_INDEX_KEY = "unacked_index"
"""kombu's Redis sorted set of delivered, unacknowledged messages (score: delivery time)."""
UNACKED_KEY = "unacked"
"""kombu's Redis hash of those messages: tag -> JSON ``[message, exchange, routing_key]``."""
OVERDUE_SCAN_LIMIT = 1000


def overdue_unacked(client: Any, redelivery_after_s: float, queue: str | None = None) -> int:
    """Messages of ``queue`` (None: any) delivered more than ``redelivery_after_s`` ago
    and never acknowledged (their consumer died): a running consumer puts them back on
    their queues, so their count must wake one when none runs. Redis brokers only.

    Cheap when there are none (one ``ZCOUNT``); otherwise reads the overdue messages'
    routing keys (at most ``OVERDUE_SCAN_LIMIT``), so one target's dead consumer does not
    wake every target's consumers."""
    ceiling = f"({time.time() - redelivery_after_s}"
    if queue is None or not client.zcount(UNACKED_INDEX_KEY, 0, ceiling):
        return int(client.zcount(UNACKED_INDEX_KEY, 0, ceiling)) if queue is None else 0
    tags = client.zrangebyscore(UNACKED_INDEX_KEY, 0, ceiling, start=0, num=OVERDUE_SCAN_LIMIT)
    count = 0
    for raw in client.hmget(UNACKED_KEY, tags) if tags else []:
        try:
            if raw is not None and json.loads(raw)[2] == queue:
                count += 1
        except (ValueError, IndexError, TypeError):
            continue
    return count


def queue_depths(broker_url: str, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each of ``queues`` (not counting those consumers hold).

    Redis: the length of each queue's list (Celery keeps one list per queue). RabbitMQ:
    a passive declare's message count (0 for a queue not declared yet)."""
    if is_redis(broker_url):
        client = redis_client(broker_url)
        try:
            pipe = client.pipeline()
            for q in queues:
                pipe.llen(q)
            return dict(zip(queues, (int(n) for n in pipe.execute()), strict=True))
        finally:
            client.close()
    from kombu import Connection

    depths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        for q in queues:
            channel = conn.channel()
            try:
                depths[q] = int(channel.queue_declare(q, passive=True).message_count)
            except Exception:  # not declared yet: nothing waits in it
                depths[q] = 0
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    return depths
