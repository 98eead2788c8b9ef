"""``JobConsumer``: a Serve task consumer that answers one target's jobs.

Each replica runs Ray Serve's Celery worker (``@task_consumer``, one thread per job
it holds, ``max_ongoing_requests`` of them) on the target's queue and answers each
job by calling the target's own deployment through a handle (``answer_body``), so
queued and synchronous requests share replicas and batches and get the same answer.

Delivery (Celery, acknowledged late): a job's message is acknowledged only after its
answer is stored; a consumer that dies holding a job leaves it unacknowledged, and the
broker delivers it again (Redis after ``redelivery_after_s``). The job record makes a
second delivery harmless: a finished or cancelled job is skipped, and of two answers
the first stored wins.

Outcomes: a 2xx or 4xx answer is the job's answer (a 4xx is the same error the
synchronous route gives). A 5xx/429 answer, a timeout or an unreachable target is
retried ``max_retries`` times, backing off, then the job is ``failed`` and its message
moves to the failed queue (Ray's adapter). A message that is not a job moves to the
unprocessable queue with the reason. Neither blocks the queue.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
from ray import serve
from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import task_consumer, task_handler

from serve_app.deploy.app_args import CONSUMER_DEPLOYMENT, ConsumerAppArgs
from serve_app.jobs.broker import celery_settings
from serve_app.jobs.message import TASK_NAME, JobMessage, parse_message
from serve_app.jobs.store import FAILED, RUNNING, SUCCEEDED, StoredAnswer
from serve_app.server.job_adapter import EnvCeleryAdapter, env_ref
from serve_app.server.job_autoscaling import IN_FLIGHT_METRIC
from serve_app.server.job_metrics import RayJobMetrics

logger = logging.getLogger("ray.serve")

RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers that say "not now" rather than "not this request": the job is retried."""
READY_POLL_S = 1.0
UNPROCESSABLE_TASK = "serve_app.unprocessable"
"""Task name of the messages put on the unprocessable queue (nothing consumes them)."""


class RetryJob(Exception):
    """The target could not answer now; Celery retries the job (backing off)."""


class JobConsumer:
    """Answers the jobs of one target (``ConsumerAppArgs``); see the module doc."""

    def __init__(self, args: dict[str, Any], handle: Any = None, store: Any = None) -> None:
        self.args = ConsumerAppArgs.model_validate(args)
        queue = self.args.queue
        self.target = queue.target
        self._store = store if store is not None else queue.store()
        self._dead_letters: Any = None
        self._handle = handle or serve.get_deployment_handle(self.args.deployment, self.args.app)
        self._metrics: Any = RayJobMetrics(self.target) if handle is None else _NoMetrics()
        self._lock = threading.Lock()
        self._in_flight = 0
        if handle is None:
            self._wait_for_target()

    def _wait_for_target(self) -> None:
        """Return once the target answers (its metadata): until then this replica has
        not started its worker, so it takes no job it could not answer.

        Raises:
            RuntimeError: no answer within ``ready_timeout_s`` (the replica fails to start
                and Serve tries again).
        """
        failure: list[BaseException] = []

        def wait() -> None:  # a handle's .result() must not run on the replica's loop
            deadline_s = time.monotonic() + self.args.ready_timeout_s
            while True:
                remaining_s = deadline_s - time.monotonic()
                try:
                    self._handle.metadata.remote().result(timeout_s=max(1.0, remaining_s))
                    return
                except Exception as e:
                    if time.monotonic() + READY_POLL_S >= deadline_s:
                        failure.append(e)
                        return
                    time.sleep(READY_POLL_S)

        waiter = threading.Thread(target=wait, name="wait-for-target", daemon=True)
        waiter.start()
        waiter.join()
        if failure:
            raise RuntimeError(
                f"jobs of {self.target!r}: the target ({self.args.app}/{self.args.deployment}) "
                f"did not answer within {self.args.ready_timeout_s:.0f} s: {failure[0]!r}"
            )
        logger.info(
            "jobs of %r: target ready, consuming %s", self.target, self.args.queue.queues.jobs
        )

    def check_health(self) -> None:
        """Fail when Ray's Celery worker thread ended (Serve then replaces the replica):
        a consumer that consumes nothing must not look healthy."""
        worker = getattr(getattr(self, "_adapter", None), "_worker_thread", None)
        if worker is not None and not worker.is_alive():
            raise RuntimeError(f"jobs of {self.target!r}: the Celery worker stopped consuming")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Jobs this replica holds (see ``QueueDepthPolicy``)."""
        with self._lock:
            return {IN_FLIGHT_METRIC: float(self._in_flight)}

    @contextlib.contextmanager
    def _holding(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @task_handler(name=TASK_NAME)
    def infer(self, *args: Any, **kwargs: Any) -> str:
        """Answer one job (Celery calls this on one of its threads); returns the outcome."""
        with self._holding():
            return self.answer(args, kwargs, attempt=_celery_retries())

    def answer(self, args: tuple[Any, ...], kwargs: dict[str, Any], attempt: int) -> str:
        """Answer the job in ``args``/``kwargs`` (delivery ``attempt``, 0 first).

        Raises:
            RetryJob: the target could not answer now and retries remain.
        """
        try:
            message = parse_message(args, kwargs)
            if message.target != self.target:
                raise ValueError(f"job for {message.target!r} on the queue of {self.target!r}")
        except ValueError as e:
            self._unprocessable(str(e), args, kwargs)
            return "unprocessable"
        state = self._store.start(message.job_id, self.target, message.submitted_at_s)
        if state != RUNNING:  # answered by an earlier delivery, or cancelled
            self._metrics.observe("skipped")
            return state
        try:
            status, headers, payload = self._handle.answer_body.remote(
                message.body(), message.header_length, message.version
            ).result(timeout_s=self.args.job_timeout_s)
        except Exception as e:  # unreachable, overloaded or too slow: try again later
            status, headers = 503, {"content-type": "application/json"}
            payload = _error_body(f"the target did not answer: {type(e).__name__}", message)
        answer = StoredAnswer(
            status_code=int(status),
            body=bytes(payload),
            content_type=headers.get("content-type", "application/json"),
            header_length=_int_or_none(headers.get("inference-header-content-length")),
        )
        if answer.status_code in RETRIED_STATUSES:
            return self._retry_or_fail(message, answer, attempt)
        state = SUCCEEDED if answer.status_code < 400 else FAILED
        stored = self._store.finish(message.job_id, state, answer)
        self._metrics.observe(state if stored else "skipped", time.time() - message.submitted_at_s)
        return state

    def _retry_or_fail(self, message: JobMessage, answer: StoredAnswer, attempt: int) -> str:
        reason = f"attempt {attempt + 1}: HTTP {answer.status_code} {_error_text(answer)}"
        if attempt < self.args.max_retries:
            self._metrics.observe("retried")
            raise RetryJob(reason)
        failed = StoredAnswer(
            status_code=answer.status_code,
            body=_error_body(
                f"job failed after {attempt + 1} attempts; last: HTTP {answer.status_code} "
                f"{_error_text(answer)}",
                message,
            ),
        )
        self._store.finish(message.job_id, FAILED, failed)
        self._metrics.observe("dead_lettered", time.time() - message.submitted_at_s)
        raise RetryJob(reason)  # out of retries: Ray's adapter moves it to the failed queue

    def _unprocessable(self, reason: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Move a message that is not a job to the unprocessable queue; its record (when
        its id was readable) says why."""
        queues = self.args.queue.queues
        logger.warning("jobs of %r: unprocessable message: %s", self.target, reason)
        if self._dead_letters is None:
            self._dead_letters = self.args.queue.publisher()
        body = {"reason": reason, "args": list(args), "kwargs": kwargs}
        self._dead_letters.publish(UNPROCESSABLE_TASK, queues.unprocessable, kwargs=_jsonable(body))
        job_id = kwargs.get("job_id")
        if isinstance(job_id, str) and 0 < len(job_id) <= 64:
            with contextlib.suppress(Exception):
                if self._store.start(job_id, self.target, time.time()) == RUNNING:
                    answer = StoredAnswer(400, _error_body(f"not a job: {reason}", None, job_id))
                    self._store.finish(job_id, FAILED, answer)
        self._metrics.observe("unprocessable")


class _NoMetrics:
    def observe(self, outcome: str, latency_s: float | None = None) -> None:
        pass


def _celery_retries() -> int:
    from celery import current_task

    request = getattr(current_task, "request", None)
    return int(getattr(request, "retries", 0) or 0)


def _int_or_none(v: Any) -> int | None:
    return None if v in (None, "") else int(v)


def _error_text(answer: StoredAnswer) -> str:
    try:
        return str(orjson.loads(answer.body).get("error", ""))[:300]
    except Exception:
        return ""


def _error_body(text: str, message: JobMessage | None, job_id: str | None = None) -> bytes:
    request_id = job_id or (message.job_id if message is not None else "")
    return orjson.dumps({"error": text, "request_id": request_id})


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot carry written as its repr."""
    return orjson.loads(orjson.dumps(value, default=repr))


def consumer_deployment(args: ConsumerAppArgs) -> Any:
    """The Serve deployment of ``args``'s consumers: ``JobConsumer`` under Ray's
    ``@task_consumer`` on the target's queue, with its failed and unprocessable queues."""
    queue = args.queue
    names = queue.queues
    config = TaskProcessorConfig(
        queue_name=names.jobs,
        adapter=EnvCeleryAdapter,
        adapter_config=CeleryAdapterConfig(
            broker_url=env_ref(queue.broker_url_env),
            backend_url=env_ref(queue.results_url_env or queue.broker_url_env),
            # Redis transport options; EnvCeleryAdapter drops them for another broker.
            app_custom_config=celery_settings(queue.redelivery_after_s, queue.result_ttl_s),
            # The job record holds the answer: no second copy in Celery's result backend
            # (a Redis transaction per job).
            task_custom_config={"ignore_result": True},
        ),
        max_retries=args.max_retries,
        failed_task_queue_name=names.failed,
        unprocessable_task_queue_name=names.unprocessable,
    )
    consumer_class = task_consumer(task_processor_config=config)(JobConsumer)
    return serve.deployment(name=CONSUMER_DEPLOYMENT)(consumer_class)
