"""Jobs on RabbitMQ, the source designs' broker: the same demo, its broker an AMQP URL
and its records in Redis. A job wakes the consumers from zero (the policy reads the
queue's depth from RabbitMQ's management API), is answered as the synchronous route
answers, and the consumers go back to zero. Skipped where rabbitmq-server is not
installed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.local.broker import EmbeddedRedis
from tests.integration import rabbitmq
from tests.integration.conftest import free_port
from tests.integration.demo_process import Demo, demo_process, descendants

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not rabbitmq.available(), reason=rabbitmq.SKIP_REASON),
]
BODY = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["by AMQP"]}]}


def config(root: Path) -> dict[str, Any]:
    return {
        "repository": {"root": str(root)},
        # Serve's proxy: nothing here needs HAProxy, whose 35 s drain would double the
        # test's time at stop.
        "http": {"port": free_port(), "ingress": "proxy"},
        "models": [
            {"name": "minilm", "version": 1, "resources": {"num_cpus": 1, "torch_threads": 1}}
        ],
        "jobs": {
            "targets": ["minilm"],
            "results_url_env": "SERVE_APP_RESULTS_URL",
            "rabbitmq_management_url_env": "SERVE_APP_RABBITMQ_API",
            "consumers": {"poll_interval_s": 0.5, "upscale_delay_s": 0, "downscale_delay_s": 4},
        },
    }


@pytest.fixture(scope="module")
def demo(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    broker = rabbitmq.RabbitMQ()
    records = EmbeddedRedis(tmp_path_factory.mktemp("records"))
    broker.start()
    try:
        env = {
            "SERVE_APP_BROKER_URL": broker.url,
            "SERVE_APP_RESULTS_URL": records.start(),
            "SERVE_APP_RABBITMQ_API": broker.management_url,
        }
        folder = tmp_path_factory.mktemp("demo-rabbitmq")
        with demo_process(config(model_root), folder, extra_env=env) as running:
            running.broker = broker  # type: ignore[attr-defined]
            yield running
    finally:
        records.stop()
        broker.stop()


def consumers(demo: Demo) -> int:
    title = "ServeReplica:jobs-minilm:JobConsumer"
    found = 0
    for p in descendants(demo.proc.pid):
        try:
            found += title in " ".join(p.cmdline())
        except Exception:
            continue
    return found


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline_s = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.25)
    return value


def test_a_job_on_rabbitmq_wakes_consumers_and_is_answered_as_sync(demo: Demo) -> None:
    with httpx.Client(base_url=demo.url, timeout=30) as client:
        wait_for(lambda: consumers(demo) == 0, 60, "no consumer before the job")
        sync = client.post("/v2/models/minilm/infer", json=BODY)
        assert sync.status_code == 200
        r = client.post("/v2/models/minilm/infer", json=BODY, headers={"Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        location = r.headers["location"]

        def done() -> dict[str, Any] | None:
            doc = client.get(location).json()
            return doc if doc["status"] in ("succeeded", "failed") else None

        doc = wait_for(done, 120, "the job answered")
        assert doc["status"] == "succeeded"
        assert client.get(f"{location}/response").content == sync.content
        # The management API's counts lag up to its 5 s statistics interval.
        broker = demo.broker  # type: ignore[attr-defined]
        wait_for(lambda: broker.queue_messages("serve-app.minilm") == 0, 30, "queue empty")
        wait_for(lambda: consumers(demo) == 0, 60, "consumers back at zero")
