"""Drain and faults under HTTP load through the default ingress (HAProxy), every request
counted: ``serve-app demo`` in its own process, open-loop traffic from ``loadtest``, and
a fault injected mid-run by signalling the demo's own processes.

Each test prints its counts (sent, succeeded, failed by kind) and writes them, raw, as
``fault_counts.json`` next to its run; with ``SERVE_APP_FAULT_RESULTS=<folder>`` also as
``<folder>/<fault>.json`` (``loadtest/results/faults`` holds the committed ones, quoted in
docs/operations.md). The last test stops the demo with SIGTERM while requests are in
flight.
"""

from __future__ import annotations

import json
import os
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

from loadtest.harness.machine import machine_info
from loadtest.observe.analysis import load_run, summarize, target_series
from loadtest.observe.sampler import http_get, read_token
from loadtest.run import RunSettings, run_open_loop
from loadtest.traffic import profiles
from loadtest.traffic.payloads import generated_body, model_metadata
from serve_app.local.demo import MLP_HEAD
from tests.integration.conftest import copy_model, error_of, free_port
from tests.integration.demo_process import (
    REPLICA_STALL_S,
    Demo,
    demo_process,
    descendants,
    running,
    wait_for_replicas,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BACKPRESSURE = (
    "HTTP 503: overloaded: the model is at max_ongoing_requests + max_queued_requests; retry later"
)
"""A model's answer beyond max_ongoing + max_queued requests: Serve's backpressure_config
503, put in our error shape by the HAProxy wrapper (serve_app/local/haproxy_errors.py)."""
KILLED_IN_FLIGHT = {"ServerDisconnectedError", "ClientPayloadError"}
"""What a client sees of a request a SIGKILLed replica had in flight: the connection ends
before the answer starts (ServerDisconnectedError) or in the middle of its body
(ClientPayloadError, "Response payload is not completed"; seen once in CI at 16:44 UTC
2026-12-02, 1 of 427 requests, in the corrupt-weights kill)."""
VICTIM, SHRINKER, CONTROLLED, SLOW = "victim", "shrinker", "steady", "slow"
FRAGILE = "fragile"
FAULT_RESULTS_ENV = "SERVE_APP_FAULT_RESULTS"
"""A folder where each test also writes its raw counts as ``<fault>.json``."""


def write_counts(fault: str, counts: dict[str, Any], out: Path) -> Path:
    """Write ``counts`` with the test, date, machine and versions: as
    ``out/fault_counts.json``, and as ``<fault>.json`` in ``$SERVE_APP_FAULT_RESULTS``
    when set. Returns the first path."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    record = {"fault": fault, "test": test, **counts, "machine": machine_info()}
    text = json.dumps(record, indent=1) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_counts.json").write_text(text)
    folder = os.environ.get(FAULT_RESULTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{fault}.json").write_text(text)
    return out / "fault_counts.json"


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
    # A private copy of the repository (the session's stays untouched).
    root = tmp_path_factory.mktemp("faults-repo")
    shutil.copytree(model_root / MLP_HEAD, root / MLP_HEAD)
    copy_model(model_root / MLP_HEAD, root / FRAGILE)
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
            # Its own copy of the weights: one test corrupts them.
            head(FRAGILE, repository_name=FRAGILE, num_replicas=2),
            # Scales out on a burst (a 20 ms batch window keeps ~rate x 20 ms requests in
            # flight), back in while the low rate goes on.
            head(
                SHRINKER,
                batching={"max_batch_size": 4, "batch_wait_timeout_s": 0.02},
                max_ongoing_requests=4,
                resources={"num_cpus": 0.25, "torch_threads": 1},
                autoscaling={
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 1,
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
    profile: profiles.Profile | None = None,
    fault_at_s: float = 4,
    name: str,
) -> tuple[Any, dict[str, Any], Any]:
    """Open-loop load on ``model`` (default: 30 req/s for 12 s); ``fault()`` runs
    ``fault_at_s`` in. Writes the raw counts (``write_counts``, as ``name``). Returns the
    run, its summary and what ``fault`` returned."""
    settings = RunSettings(
        base_url=faulty.demo.url, model=model, profile=profile or profiles.constant(30, 12),
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
    write_counts(name, {
        "model": model,
        "load": {"profile": settings.profile.model_dump(mode="json"), "fault_at_s": fault_at_s},
        "sent": o["requests"], "succeeded": o["requests"] - o["failed"], "failed": o["failed"],
        "errors": o["errors"],
        "phases": {p: {k: v[k] for k in ("requests", "failed", "errors")}
                   for p, v in s["phases"].items()},
    }, out)  # fmt: skip
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
    # 120 req/s from 1 s to 14 s scales out; 5 req/s after that, until 40 s, scales in.
    profile = profiles.step(5, 120, at_s=1, duration_s=40, down_at_s=14)
    run, s, _ = under_load(faulty, SHRINKER, lambda: None, tmp_path, profile=profile,
                           name="autoscaling-scale-in")  # fmt: skip
    series = target_series(run)[f"{SHRINKER}/ModelDeployment"]
    t, replicas = series["t_s"], series["running"]
    peak_s = float(t[np.nanargmax(replicas)])
    print(f"running replicas: max {np.nanmax(replicas):.0f} at {peak_s:.1f} s, "
          f"{replicas[t < 40][-1]:.0f} at the end of the load")  # fmt: skip
    errors = {phase: v["errors"] for phase, v in s["phases"].items()}
    print(f"errors by phase: {errors}")
    assert np.nanmax(replicas) >= 2
    assert replicas[t < 40][-1] == 1  # scaled in while the 5 req/s went on
    # Scaling in under load loses nothing: no failure of any kind after the drop.
    assert (errors["before"], errors["after-drop"]) == ({}, {})
    # During the burst, only the model's own overload answer may come (its queue full
    # while new replicas start on a slow machine; seen on one core): nothing else.
    assert set(errors["after-step"]) <= {BACKPRESSURE}, errors


def test_serve_controller_killed_under_load_fails_no_request(
    faulty: Running, tmp_path: Path
) -> None:
    def kill_controller() -> int:
        (controller,) = demo_processes(faulty.demo, "ServeController")
        controller.send_signal(signal.SIGKILL)
        return controller.pid

    _, s, pid = under_load(faulty, CONTROLLED, kill_controller, tmp_path,
                           name="controller-killed")  # fmt: skip
    assert pid is not None
    assert (s["overall"]["failed"], s["overall"]["errors"]) == (0, {})
    # Serve restarts its controller (Ray restarts the detached actor: no replica state
    # to follow meanwhile, hence a plain bound, generous for a slow machine).
    deadline = time.monotonic() + 180
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

    run, s, pid = under_load(faulty, VICTIM, kill_one_replica, tmp_path, name="replica-killed")
    o = s["overall"]
    req = run.requests
    late = req["sent_s"] >= 4 + 5  # 5 s after the kill: replaced, or the other serves all
    late_failed = int((req["status"][late] != 200).sum())
    print(f"failed after the first 5 s of the fault: {late_failed}")
    assert late_failed == 0
    # At 30 req/s and ~5 ms a request, ~0.15 requests are on a replica at any time: the
    # requests the kill can lose are the ones it had in flight, whose connections the
    # replica's death closed.
    assert set(o["errors"]) <= KILLED_IN_FLIGHT and o["failed"] <= 3, o["errors"]
    # Replaced: Serve starts another replica (seconds on a fast machine, more on a slow
    # one) once it has noticed the death; until then its view still counts the killed
    # replica as RUNNING, so its count alone cannot tell (CI saw 2 RUNNING, 1 process).
    deadline_s = time.monotonic() + 180
    while True:
        wait_for_replicas(faulty.demo, faulty.dashboard_url, VICTIM, replicas=2)
        alive = {p.pid for p in demo_processes(faulty.demo, f"ServeReplica:{VICTIM}:")}
        if len(alive) == 2 and pid not in alive:
            break
        assert time.monotonic() < deadline_s, f"replica {pid} not replaced in 180 s: {alive}"
        time.sleep(1)


def wait_for_ready(
    faulty: Running, client: httpx.Client, expected: Callable[[httpx.Response], bool]
) -> None:
    """Poll ``/v2/health/ready`` until ``expected(response)``, for as long as the answer
    or the replicas of ``FRAGILE`` keep changing (a replacement retrying, failing its
    checksum, starting); fail with Serve's view after ``REPLICA_STALL_S`` of no change."""
    import json

    from serve_app.deploy import progress

    token = read_token()

    def poll() -> tuple[httpx.Response, progress.Snapshot]:
        url = f"{faulty.dashboard_url}/api/serve/applications/"
        return client.get("/v2/health/ready"), progress.from_rest(
            json.loads(http_get(url, token, 10))
        )

    try:
        progress.follow(
            poll,
            done=lambda p: expected(p[0]),
            key=lambda p: (p[0].status_code, progress.progress_key(p[1], [FRAGILE])),
            stall_s=REPLICA_STALL_S,
            describe=lambda p: (
                f"ready: {p[0].status_code} {p[0].text[:300]}\n"
                + progress.describe(p[1], [FRAGILE], only_unfinished=False)
            ),
            what="the expected /v2/health/ready answer",
            interval_s=1.0,
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}\ndemo output:\n" + "".join(faulty.demo.lines[-30:])) from e


def test_corrupt_weights_keep_serving_and_block_new_replicas(
    faulty: Running, tmp_path: Path
) -> None:
    weights = faulty.root / FRAGILE / "1" / "model.safetensors"
    good = weights.read_bytes()
    body = generated_body(model_metadata(faulty.demo.url, FRAGILE))
    path = f"/v2/models/{FRAGILE}/infer"
    client = httpx.Client(base_url=faulty.demo.url, timeout=30)
    before = client.post(path, content=body).json()["outputs"]

    def corrupt_then_kill_a_replica() -> int:
        data = bytearray(good)
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))  # in place: the same inode, as a bad copy would
        time.sleep(3)  # running replicas keep serving from memory meanwhile
        replicas = demo_processes(faulty.demo, f"ServeReplica:{FRAGILE}:")
        replicas[0].send_signal(signal.SIGKILL)
        return replicas[0].pid

    try:
        run, s, pid = under_load(faulty, FRAGILE, corrupt_then_kill_a_replica, tmp_path,
                                 profile=profiles.constant(30, 16), fault_at_s=3,
                                 name="weights-corrupted")  # fmt: skip
        assert pid is not None
        # Only what the killed replica had in flight may fail (as in the kill test).
        errors = s["overall"]["errors"]
        assert set(errors) <= KILLED_IN_FLIGHT and s["overall"]["failed"] <= 3, errors
        # Its replacement verifies, refuses, and the reason names the file.
        mismatch = f"sha256 mismatch for {weights}"
        wait_for_ready(faulty, client, lambda r: r.status_code == 503 and mismatch in r.text)
        models = {m["name"]: m for m in client.get("/v2/models").json()["models"]}
        print(f"{FRAGILE} while corrupt: {models[FRAGILE]}")
        assert mismatch in models[FRAGILE]["reason"]
        # The surviving replica verified before the corruption and holds its weights in
        # its own memory: same answers, bit for bit.
        for _ in range(10):
            answer = client.post(path, content=body)
            assert answer.status_code == 200 and answer.json()["outputs"] == before
    finally:
        weights.write_bytes(good)  # repaired: the next retry starts a replica
    wait_for_ready(faulty, client, lambda r: r.status_code == 200)
    wait_for_replicas(faulty.demo, faulty.dashboard_url, FRAGILE, replicas=2)
    assert len(demo_processes(faulty.demo, f"ServeReplica:{FRAGILE}:")) == 2


def test_sigterm_lets_in_flight_requests_finish_and_leaves_nothing(
    faulty: Running, tmp_path: Path
) -> None:
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
    # New requests meanwhile: served while the model's route still exists, then refused
    # with 503 by the server app (never a connection error or a 500).
    after: list[Any] = []
    refusal: httpx.Response | None = None
    while time.monotonic() - t0 < 15 and (not after or after[-1] == 200):
        time.sleep(0.5)
        try:
            refusal = httpx.post(url, content=body, timeout=5)
            after.append(refusal.status_code)
        except httpx.HTTPError as e:
            after.append(type(e).__name__)
    for t in clients:
        t.join(60)
    faulty.demo.proc.wait(60)
    stop_s = time.monotonic() - t0
    _, alive = psutil.wait_procs(tree, timeout=15)
    left = [p.pid for p in alive if running(p)]
    print(f"in flight: {results}; sent after SIGTERM: {after}; stopped in {stop_s:.1f} s")
    print("".join(ln for ln in faulty.demo.lines if ln.startswith(("draining", "stopped"))))
    assert refusal is not None
    print(f"refusal: {refusal.status_code} {dict(refusal.headers)} {refusal.text[:500]}")
    write_counts("sigterm-drain", {
        "model": SLOW, "in_flight": results, "sent_after_sigterm": after,
        "refusal": {"status": refusal.status_code, "body": refusal.text[:500],
                    "retry_after": refusal.headers.get("retry-after")},
        "stop_s": round(stop_s, 1), "exit_code": faulty.demo.proc.returncode, "left": left,
    }, tmp_path)  # fmt: skip
    assert results == [200] * 6
    assert set(after[:-1]) <= {200} and after[-1] == 503
    # The refusal is the server app's (serve_app/server/oip_server.py: the model's route
    # is gone, "/" takes it), in our error shape with Retry-After: not an ingress page.
    # HAProxy's own 503 ("unavailable: no replica of this application can take the
    # request now; retry later", serve_app/local/haproxy_errors.py) would fail on the
    # message; it does not answer here, because the server app
    # keeps "/" until the last step of the stop. The reason depends on the server's
    # view of Serve, read every second: DELETING once it has seen the delete, or, in the
    # second before, the last RUNNING with no route (seen 2026-12-03: "(RUNNING)" before
    # the message said why).
    assert (refusal.status_code, refusal.headers.get("retry-after")) == (503, "1")
    status, message = error_of(refusal)
    assert (status, message) in {
        (503, f"model {SLOW!r} is not ready (DELETING)"),
        (503, f"model {SLOW!r} is not ready (no route to it: starting or stopping; "
              "last state RUNNING)"),
    }  # fmt: skip
    assert faulty.demo.proc.returncode == 0 and left == []
