"""``JobConsumer`` without Ray: the real consumer class over a real Redis (records and
the unprocessable queue), its target's deployment handle replaced by a stand-in that
answers ``answer_body`` as scripted. Covers every outcome: stored answers, retries,
the last attempt, skipped redeliveries, messages that are not jobs, held-job counts;
and the Celery adapter that reads the broker URLs from the environment."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig

from serve_app.deploy.app_args import ConsumerAppArgs
from serve_app.jobs.broker import BrokerUnavailable, QueueNames, celery_settings, redis_client
from serve_app.jobs.message import JobMessage, make_message
from serve_app.jobs.settings import QueueSettings
from serve_app.jobs.store import CANCELLED, FAILED, RUNNING, SUCCEEDED, JobStore, StoredAnswer
from serve_app.local.broker import EmbeddedRedis
from serve_app.server.job_adapter import EnvCeleryAdapter, env_ref
from serve_app.server.job_consumer import UNPROCESSABLE_TASK, JobConsumer, RetryJob

ENV = "SERVE_APP_TEST_BROKER_URL"
TARGET = "minilm"
QUEUES = QueueNames.of("serve-app", TARGET)
MAX_RETRIES = 2
JOB_TIMEOUT_S = 7.0
JSON = {"content-type": "application/json"}
BODY = b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["hi"]}]}'
ANSWER = b'{"model_name":"minilm","outputs":[{"name":"embedding","data":[0.5]}]}'


@pytest.fixture
def redis(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A client of the module's Redis (empty), whose URL the consumer's env names."""
    monkeypatch.setenv(ENV, redis_server.url)
    client = redis_client(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def store(redis: Any) -> JobStore:
    return JobStore(redis, 600, prefix="serve-app")


Outcome = tuple[int, dict[str, str], bytes] | BaseException


class StandInHandle:
    """The target's ``DeploymentHandle`` as the consumer uses it:
    ``answer_body.remote(body, header_length, version).result(timeout_s=...)``."""

    def __init__(self, *outcomes: Outcome, during: Callable[[], None] | None = None) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[bytes, int | None, str | None, float]] = []
        self.during = during
        """Run inside the call, while the consumer holds the job."""

    @property
    def answer_body(self) -> StandInHandle:
        return self

    def remote(self, body: bytes, header_length: int | None, version: str | None) -> Any:
        handle = self

        class Response:
            def result(self, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
                handle.calls.append((body, header_length, version, timeout_s))
                if handle.during is not None:
                    handle.during()
                outcome = handle.outcomes.pop(0)
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome

        return Response()


def consumer(handle: StandInHandle, store: JobStore) -> JobConsumer:
    args = ConsumerAppArgs(
        queue=QueueSettings(target=TARGET, broker_url_env=ENV, prefix="serve-app"),
        app=TARGET,
        deployment="ModelDeployment",
        max_retries=MAX_RETRIES,
        job_timeout_s=JOB_TIMEOUT_S,
    )
    return JobConsumer(args.model_dump(mode="json"), handle=handle, store=store)


def submitted(store: JobStore, message: JobMessage | None = None) -> JobMessage:
    """A job recorded as queued (as ``JobPublisher`` leaves it)."""
    message = message or make_message(TARGET, BODY)
    assert store.create(message.job_id, TARGET, message.submitted_at_s)
    return message


def deliver(c: JobConsumer, message: JobMessage, attempt: int = 0) -> str:
    return c.answer((), message.task_kwargs(), attempt=attempt)


def error_of(answer: StoredAnswer | None) -> str:
    assert answer is not None
    return str(json.loads(answer.body)["error"])


def unprocessable(redis: Any) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """The unprocessable queue's messages, oldest first: (task, args, kwargs)."""
    found = []
    for raw in reversed(redis.lrange(QUEUES.unprocessable, 0, -1)):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], args, kwargs))
    return found


def test_a_json_answer_is_stored_as_the_target_gave_it(store: JobStore) -> None:
    handle = StandInHandle((200, JSON, ANSWER))
    message = submitted(store)
    assert deliver(consumer(handle, store), message) == SUCCEEDED
    assert handle.calls == [(BODY, None, None, JOB_TIMEOUT_S)]
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.attempts) == (SUCCEEDED, 1)
    assert record.answer == StoredAnswer(200, ANSWER, "application/json", None)


def test_a_binary_answer_keeps_its_bytes_and_headers(store: JobStore) -> None:
    header = (
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],'
        b'"parameters":{"binary_data_size":4}}]}'
    )
    request = header + b"\x00\x00\x80?"
    answer = b'{"outputs":[{"name":"y","parameters":{"binary_data_size":4}}]}\x00\xff\x80@'
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": "59"}
    handle = StandInHandle((200, headers, answer))
    message = submitted(store, make_message(TARGET, request, len(header), version="2"))
    assert deliver(consumer(handle, store), message) == SUCCEEDED
    assert handle.calls == [(request, len(header), "2", JOB_TIMEOUT_S)]
    stored = store.get(message.job_id).answer  # type: ignore[union-attr]
    assert stored == StoredAnswer(200, answer, "application/octet-stream", 59)


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_a_4xx_is_the_jobs_answer_and_not_retried(store: JobStore, status: int) -> None:
    error = b'{"error":"input \'text\' must be BYTES","request_id":"r1"}'
    handle = StandInHandle((status, JSON, error))
    message = submitted(store)
    assert deliver(consumer(handle, store), message) == FAILED
    assert len(handle.calls) == 1
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.answer) == (FAILED, StoredAnswer(status, error))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_not_now_with_retries_left_is_retried_and_the_job_keeps_running(
    store: JobStore, status: int
) -> None:
    handle = StandInHandle((status, JSON, b'{"error":"overloaded, retry later"}'))
    message = submitted(store)
    with pytest.raises(RetryJob) as e:
        deliver(consumer(handle, store), message, attempt=MAX_RETRIES - 1)
    assert str(e.value) == f"attempt {MAX_RETRIES}: HTTP {status} overloaded, retry later"
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.answer) == (RUNNING, None)


def test_the_last_attempt_stores_the_failure_and_still_raises(store: JobStore) -> None:
    """Raising lets Ray's adapter move the message to the failed queue."""
    handle = StandInHandle((503, JSON, b'{"error":"overloaded, retry later"}'))
    message = submitted(store)
    with pytest.raises(RetryJob, match=f"^attempt {MAX_RETRIES + 1}: HTTP 503 overloaded"):
        deliver(consumer(handle, store), message, attempt=MAX_RETRIES)
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.answer.status_code) == (FAILED, 503)  # type: ignore[union-attr]
    assert json.loads(record.answer.body) == {  # type: ignore[union-attr]
        "error": f"job failed after {MAX_RETRIES + 1} attempts; last: HTTP 503 overloaded, "
        "retry later",
        "request_id": message.job_id,
    }


@pytest.mark.parametrize("raised", [TimeoutError("7 s"), ConnectionError("replica died")])
def test_a_target_that_does_not_answer_is_a_503(store: JobStore, raised: Exception) -> None:
    name = type(raised).__name__
    handle = StandInHandle(raised, raised)
    c = consumer(handle, store)
    message = submitted(store)
    with pytest.raises(RetryJob, match=f"^attempt 1: HTTP 503 the target did not answer: {name}$"):
        deliver(c, message, attempt=0)
    assert store.get(message.job_id).state == RUNNING  # type: ignore[union-attr]
    with pytest.raises(RetryJob):
        deliver(c, message, attempt=MAX_RETRIES)
    record = store.get(message.job_id)
    assert record is not None and (record.state, record.attempts) == (FAILED, 2)
    assert error_of(record.answer) == (
        f"job failed after {MAX_RETRIES + 1} attempts; last: HTTP 503 the target did not "
        f"answer: {name}"
    )


def test_a_redelivered_finished_job_is_skipped(store: JobStore) -> None:
    handle = StandInHandle((200, JSON, ANSWER), (200, JSON, b'{"second":true}'))
    c = consumer(handle, store)
    message = submitted(store)
    assert deliver(c, message) == SUCCEEDED
    before = store.get(message.job_id)
    assert deliver(c, message) == SUCCEEDED
    assert len(handle.calls) == 1
    assert store.get(message.job_id) == before


def test_of_two_deliveries_running_at_once_the_first_answer_stored_wins(
    store: JobStore,
) -> None:
    """A delivery the broker made again while the first still ran (its consumer seemed
    dead): the second answers first, the first's later answer is not stored."""
    message = submitted(store)
    second = StandInHandle((200, JSON, b'{"from":"second"}'))
    first = StandInHandle(
        (200, JSON, b'{"from":"first"}'),
        during=lambda: deliver(consumer(second, store), message),
    )
    deliver(consumer(first, store), message)
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.attempts) == (SUCCEEDED, 2)
    assert record.answer.body == b'{"from":"second"}'  # type: ignore[union-attr]


def test_a_cancelled_job_is_skipped(store: JobStore) -> None:
    handle = StandInHandle((200, JSON, ANSWER))
    message = submitted(store)
    assert store.cancel(message.job_id) == CANCELLED
    assert deliver(consumer(handle, store), message) == CANCELLED
    assert handle.calls == []
    record = store.get(message.job_id)
    assert record is not None and (record.state, record.answer) == (CANCELLED, None)


def test_positional_arguments_go_to_the_unprocessable_queue(store: JobStore, redis: Any) -> None:
    handle = StandInHandle()
    c = consumer(handle, store)
    assert c.answer(("a", 2), {}, attempt=0) == "unprocessable"
    assert unprocessable(redis) == [
        (
            UNPROCESSABLE_TASK,
            [],
            {
                "reason": "a job takes keyword arguments only, got 2 positional",
                "args": ["a", 2],
                "kwargs": {},
            },
        )
    ]
    assert handle.calls == []
    assert redis.keys("serve-app:job:*") == []  # no job id: no record


def test_a_broken_job_with_a_readable_id_is_failed_400(store: JobStore, redis: Any) -> None:
    message = submitted(store)
    kwargs = {"job_id": message.job_id, "target": TARGET, "body_b64": "QQ"}  # bad base64
    assert consumer(StandInHandle(), store).answer((), kwargs, attempt=0) == "unprocessable"
    ((task, args, body),) = unprocessable(redis)
    assert (task, args, body["kwargs"]) == (UNPROCESSABLE_TASK, [], kwargs)
    assert body["reason"].startswith("not a job message: ")
    record = store.get(message.job_id)
    assert record is not None
    assert (record.state, record.answer.status_code) == (FAILED, 400)  # type: ignore[union-attr]
    assert error_of(record.answer) == f"not a job: {body['reason']}"


def test_garbage_kwargs_are_unprocessable_and_leave_no_record(store: JobStore, redis: Any) -> None:
    kwargs = {"hello": "world", "n": 1}
    assert consumer(StandInHandle(), store).answer((), kwargs, attempt=0) == "unprocessable"
    ((_, _, body),) = unprocessable(redis)
    assert body == {
        "reason": "not a job message: job_id: Field required; target: Field required; "
        "hello: Extra inputs are not permitted",  # the first three errors
        "args": [],
        "kwargs": kwargs,
    }
    assert redis.keys("serve-app:job:*") == []


def test_a_job_for_another_target_is_unprocessable(store: JobStore, redis: Any) -> None:
    message = submitted(store, make_message("mlp-head", BODY))
    handle = StandInHandle()
    assert deliver(consumer(handle, store), message) == "unprocessable"
    assert handle.calls == []
    ((_, _, body),) = unprocessable(redis)
    assert body["reason"] == "job for 'mlp-head' on the queue of 'minilm'"
    assert store.get(message.job_id).state == FAILED  # type: ignore[union-attr]


def test_held_jobs_are_reported_for_autoscaling(store: JobStore) -> None:
    holding = threading.Barrier(3)  # two jobs in the handle, and the test
    release = threading.Event()

    def hold() -> None:
        holding.wait(10)
        release.wait(10)

    handle = StandInHandle((200, JSON, ANSWER), (503, JSON, b"{}"), during=hold)
    c = consumer(handle, store)
    assert c.record_autoscaling_stats() == {"in_flight": 0.0}
    outcomes: list[Any] = []

    def run(message: JobMessage) -> None:
        try:
            outcomes.append(c.infer(**message.task_kwargs()))
        except RetryJob as e:
            outcomes.append(e)

    threads = [threading.Thread(target=run, args=(submitted(store),)) for _ in range(2)]
    for t in threads:
        t.start()
    holding.wait(10)
    assert c.record_autoscaling_stats() == {"in_flight": 2.0}
    release.set()
    for t in threads:
        t.join(10)
    assert len(outcomes) == 2 and SUCCEEDED in outcomes  # the other raised RetryJob
    assert c.record_autoscaling_stats() == {"in_flight": 0.0}  # released on raise too


def adapter_config(broker_env: str, backend_env: str) -> TaskProcessorConfig:
    return TaskProcessorConfig(
        queue_name=QUEUES.jobs,
        adapter=EnvCeleryAdapter,
        adapter_config=CeleryAdapterConfig(
            broker_url=env_ref(broker_env),
            backend_url=env_ref(backend_env),
            app_custom_config=celery_settings(300, 600),
        ),
        max_retries=MAX_RETRIES,
        failed_task_queue_name=QUEUES.failed,
        unprocessable_task_queue_name=QUEUES.unprocessable,
    )


def test_the_adapter_reads_its_urls_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "amqp://serve:pw@rabbit:5672//")
    monkeypatch.setenv("SERVE_APP_TEST_RESULTS_URL", "redis://:pw@redis:6379/1")
    config = adapter_config(ENV, "SERVE_APP_TEST_RESULTS_URL")
    assert config.adapter_config.broker_url == f"env:{ENV}"  # type: ignore[union-attr]
    resolved = EnvCeleryAdapter(config)._config.adapter_config
    assert (resolved.broker_url, resolved.backend_url) == (
        "amqp://serve:pw@rabbit:5672//",
        "redis://:pw@redis:6379/1",
    )
    # Redis transport options mean nothing to RabbitMQ: dropped
    assert "broker_transport_options" not in resolved.app_custom_config
    assert resolved.app_custom_config["worker_prefetch_multiplier"] == 1


def test_the_adapter_keeps_redis_transport_options_and_names_an_unset_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, "redis://:pw@127.0.0.1:6379/0")
    resolved = EnvCeleryAdapter(adapter_config(ENV, ENV))._config.adapter_config
    options = resolved.app_custom_config["broker_transport_options"]
    assert options["visibility_timeout"] == 300
    monkeypatch.delenv(ENV)
    with pytest.raises(BrokerUnavailable, match=f"environment variable {ENV} is empty"):
        EnvCeleryAdapter(adapter_config(ENV, ENV))


def test_health_fails_once_the_celery_worker_thread_ended(store: JobStore) -> None:
    """Celery's worker thread can end (e.g. it gave up on the broker): the replica must
    then fail its health check so Serve replaces it, not sit healthy consuming nothing."""
    import threading
    from types import SimpleNamespace

    c = consumer(StandInHandle(), store)
    c.check_health()  # no adapter yet (Ray starts it after the constructor)
    alive = threading.Event()
    worker = threading.Thread(target=alive.wait)
    worker.start()
    c._adapter = SimpleNamespace(_worker_thread=worker)  # type: ignore[attr-defined]
    c.check_health()
    alive.set()
    worker.join()
    with pytest.raises(RuntimeError, match="the Celery worker stopped consuming"):
        c.check_health()


def test_stop_ends_a_worker_that_started_a_moment_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's stop is a broadcast that a Celery worker still starting never hears: the
    replica then exited with Celery consuming (jobs taken and dropped). The adapter's
    stop is in-process: a real worker (in-memory broker) stopped 0.1 s after its start
    ends at once; Ray's own stop leaves it running past its 5 s wait."""
    from types import SimpleNamespace

    import ray.serve.task_processor as task_processor
    from celery.worker import state

    monkeypatch.setattr(
        task_processor, "get_replica_context", lambda: SimpleNamespace(replica_tag="r1")
    )
    monkeypatch.setattr(state, "should_stop", None)
    quiet = {"worker_hijack_root_logger": False, "worker_redirect_stdouts": False}
    config = TaskProcessorConfig(
        queue_name="stop-test",
        adapter=EnvCeleryAdapter,
        adapter_config=CeleryAdapterConfig(
            broker_url="memory://", backend_url="cache+memory://", app_custom_config=quiet
        ),
    )
    adapter = EnvCeleryAdapter(config)
    adapter.initialize(2)
    adapter.start_consumer()
    worker = adapter._worker_thread
    assert worker is not None
    time.sleep(0.1)
    t0 = time.monotonic()
    adapter.stop_consumer(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - t0 < 3
