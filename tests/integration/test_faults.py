"""Drain and faults under HTTP load through the default ingress (HAProxy), every request
counted: ``serve-app demo`` in its own process, open-loop traffic from ``loadtest``, and
a fault injected mid-run by signalling the demo's own processes.

Each test prints its counts (sent, succeeded, failed by kind); the closing notes quote
them. The last test stops the demo with SIGTERM while requests are in flight.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from loadtest import profiles
from loadtest.analysis import load_run, summarize, target_series
from loadtest.payloads import generated_body, model_metadata
from loadtest.run import RunSettings, run_open_loop
from loadtest.sampler import read_token
from serve_app.demo import MLP_HEAD
from tests.integration.conftest import free_port
from tests.integration.demo_process import Demo, demo_process, descendants, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VICTIM, SHRINKER, FRAGILE, CONTROLLED, SLOW = "victim", "shrinker", "fragile", "steady", "slow"


def head(name: str, **extra: Any) -> dict[str, Any]:
    """A model on the small MLP head's weights (fast to load, ~1 ms a batch)."""
    return {
        "name": name,
        "repository_name": MLP_HEAD,
        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "max_ongoing_requests": 16,
        "max_queued_requests": 256,
        "graceful_shutdown_timeout_s": 5,
        "resources": {"num_cpus": 0.1, "torch_threads": 1},
        **extra,
    }


@dataclass
class Running:
    """The module's demo, its private repository root and its dashboard URL."""

    demo: Demo
    root: Path
    dashboard_url: str


@pytest.fixture(scope="module")
def faulty(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # A private copy of the repository: one test corrupts a file on it.
    root = tmp_path_factory.mktemp("faults-repo")
    shutil.copytree(model_root / MLP_HEAD, root / MLP_HEAD)
    dashboard = free_port()
    config = {
        "repository": {"root": str(root)},
        "http": {
            "host": "127.0.0.1",
            "port": free_port(),
            "admin_ports": [free_port(), free_port()],
        },  # fmt: skip
        "models": [
            head(VICTIM, num_replicas=2),
            head(CONTROLLED, num_replicas=1),
            head(FRAGILE, num_replicas=2),
            head(
                SHRINKER,
                autoscaling={
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "initial_replicas": 3,
                    "target_ongoing_requests": 8,
                    "upscale_delay_s": 60,
                    "downscale_delay_s": 3,
                    "metrics_interval_s": 0.5,
                    "look_back_period_s": 1,
                },
            ),
            # Every request waits 2 s for its batch: in flight when SIGTERM comes.
            head(SLOW, batching={"max_batch_size": 16, "batch_wait_timeout_s": 2.0}),
        ],  # fmt: skip
    }
    args = ["--num-cpus", "4", "--dashboard-port", str(dashboard)]
    with demo_process(config, tmp_path_factory.mktemp("faults-demo"), *args) as running_demo:
        yield Running(running_demo, root, f"http://127.0.0.1:{dashboard}")


def under_load(
    faulty: Running,
    model: str,
    fault: Callable[[], Any],
    out: Path,
    *,
    rate: float = 30,
    duration_s: float = 12,
    fault_at_s: float = 4,
) -> tuple[Any, dict[str, Any], Any]:
    """Constant open-loop load on ``model``; ``fault()`` runs ``fault_at_s`` in. Returns
    the run, its summary and what ``fault`` returned."""
    settings = RunSettings(
        base_url=faulty.demo.url, model=model, profile=profiles.constant(rate, duration_s),
        serve_api_url=faulty.dashboard_url, cooldown_s=2,
    )  # fmt: skip
    body = generated_body(model_metadata(faulty.demo.url, model))
    result: list[Any] = []
    timer = threading.Timer(fault_at_s, lambda: result.append(fault()))
    timer.start()
    try:
        run = load_run(run_open_loop(settings, body, out, read_token()))
    finally:
        timer.join()
    s = summarize(run, slo_ms=1000)
    o = s["overall"]
    print(f"{model}: sent {o['requests']}, succeeded {o['requests'] - o['failed']}, "
          f"failed {o['failed']} {o['errors']}")  # fmt: skip
    return run, s, result[0] if result else None


def demo_processes(demo: Demo, title: str) -> list[psutil.Process]:
    """The demo's processes whose command line (Ray's process title) contains ``title``."""
    found = []
    for p in descendants(demo.proc.pid):
        try:
            if title in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def test_scale_down_under_load_fails_no_request(faulty: Running, tmp_path: Path) -> None:
    run, s, _ = under_load(faulty, SHRINKER, lambda: None, tmp_path, rate=20,
                           duration_s=20)  # fmt: skip
    series = target_series(run)[f"{SHRINKER}/ModelDeployment"]
    assert np.nanmax(series["running"]) == 3  # initial_replicas
    assert series["running"][-1] == 1  # scaled down while the load went on
    assert (s["overall"]["failed"], s["overall"]["errors"]) == (0, {})


def test_serve_controller_killed_under_load_fails_no_request(
    faulty: Running, tmp_path: Path
) -> None:
    def kill_controller() -> int:
        (controller,) = demo_processes(faulty.demo, "ServeController")
        controller.send_signal(signal.SIGKILL)
        return controller.pid

    _, s, pid = under_load(faulty, CONTROLLED, kill_controller, tmp_path)
    assert pid is not None
    assert (s["overall"]["failed"], s["overall"]["errors"]) == (0, {})
    # Serve restarts its controller; the new one answers the REST API again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs = demo_processes(faulty.demo, "ServeController")
        if procs and procs[0].pid != pid:
            break
        time.sleep(1)
    assert procs and procs[0].pid != pid


def test_replica_killed_under_load_loses_at_most_its_in_flight_requests(
    faulty: Running, tmp_path: Path
) -> None:
    def kill_one_replica() -> int:
        victims = demo_processes(faulty.demo, f"ServeReplica:{VICTIM}:")
        assert len(victims) == 2
        victims[0].send_signal(signal.SIGKILL)
        return victims[0].pid

    run, s, pid = under_load(faulty, VICTIM, kill_one_replica, tmp_path)
    o = s["overall"]
    req = run.requests
    late = req["sent_s"] >= 4 + 5  # 5 s after the kill: replaced, or the other serves all
    late_failed = int((req["status"][late] != 200).sum())
    print(f"failed after the first 5 s of the fault: {late_failed}")
    assert late_failed == 0
    # At 30 req/s and ~5 ms a request, ~0.15 requests are on a replica at any time: the
    # requests the kill can lose are the ones it had in flight.
    assert o["failed"] <= 3, o["errors"]
    assert len(demo_processes(faulty.demo, f"ServeReplica:{VICTIM}:")) == 2  # replaced


def test_corrupt_weights_keep_serving_and_block_new_replicas(faulty: Running) -> None:
    weights = faulty.root / MLP_HEAD / "1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    body = generated_body(model_metadata(faulty.demo.url, FRAGILE))
    path = f"/v2/models/{FRAGILE}/infer"
    with httpx.Client(base_url=faulty.demo.url, timeout=30) as c:
        # Running replicas hold verified weights in memory: they keep serving.
        assert [c.post(path, content=body).status_code for _ in range(20)] == [200] * 20
        # A new replica (here: the replacement of a killed one) verifies and refuses.
        demo_processes(faulty.demo, f"ServeReplica:{FRAGILE}:")[0].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = c.get("/v2/health/ready")
            if ready.status_code == 503 and str(weights) in ready.text:
                break
            time.sleep(1)
        print(ready.status_code, ready.text[:300])
        assert ready.status_code == 503 and f"sha256 mismatch for {weights}" in ready.text
        models = {m["name"]: m for m in c.get("/v2/models").json()["models"]}
        assert f"sha256 mismatch for {weights}" in models[FRAGILE]["reason"]
        # The replica that verified before the corruption still answers.
        assert [c.post(path, content=body).status_code for _ in range(20)] == [200] * 20


def test_sigterm_lets_in_flight_requests_finish_and_leaves_nothing(faulty: Running) -> None:
    body = generated_body(model_metadata(faulty.demo.url, SLOW))
    url = f"{faulty.demo.url}/v2/models/{SLOW}/infer"
    results: list[Any] = []

    def post() -> None:
        try:
            results.append(httpx.post(url, content=body, timeout=30).status_code)
        except httpx.HTTPError as e:
            results.append(type(e).__name__)

    clients = [threading.Thread(target=post) for _ in range(6)]
    for t in clients:
        t.start()
    time.sleep(0.5)  # all six wait in the 2 s batch window
    tree = descendants(faulty.demo.proc.pid)
    t0 = time.monotonic()
    faulty.demo.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    try:
        refused: Any = httpx.post(url, content=body, timeout=5).status_code
        print(httpx.post(url, content=body, timeout=5).text[:200])
    except httpx.HTTPError as e:
        refused = type(e).__name__
    for t in clients:
        t.join(60)
    faulty.demo.proc.wait(60)
    stop_s = time.monotonic() - t0
    _, alive = psutil.wait_procs(tree, timeout=15)
    left = [p.pid for p in alive if running(p)]
    print(f"in flight: {results}; after SIGTERM: {refused}; stopped in {stop_s:.1f} s")
    print("".join(ln for ln in faulty.demo.lines if ln.startswith(("draining", "stopped"))))
    assert results == [200] * 6
    assert refused == 503  # the server app answers for a stopping model until the end
    assert faulty.demo.proc.returncode == 0 and left == []
