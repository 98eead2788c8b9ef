"""Model version rollout on a running ``serve-app demo`` under continuous traffic, with
``serve-app deploy`` as a user runs it: publish version N+1, deploy the unchanged
AppConfig (``latest`` is pinned at deploy time, so the new number is a config change and
Serve rolls the replicas), and count every response by the ``model_version`` that
computed it.

- A good new version: zero failed requests, responses move from v1 to v2 and stay there.
- A corrupt new version: ``serve-app deploy`` refuses before touching Serve (the
  running version keeps serving, still zero failures) and names the file; forced past
  the check (``--no-verify``), Serve's rolling update fails on the replica's own
  verification, and the old version still answers every request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.observe.sampler import http_get, read_token
from loadtest.traffic.payloads import generated_body, model_metadata
from serve_app.local.demo import MLP_HEAD
from serve_app.repository.manifest import MANIFEST_NAME, Manifest
from serve_app.repository.publish import publish
from serve_app.server.oip_server import STATUS_PERIOD_S, STATUS_STALE_S
from tests.integration.conftest import copy_model, free_port
from tests.integration.demo_process import REPO_ROOT, Demo, demo_process, serve_diagnosis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLLING, SIDED = "rolling", "sided"


@dataclass
class Rollout:
    """The module's demo, its AppConfig file, repository root and dashboard URL."""

    demo: Demo
    config_path: Path
    root: Path
    dashboard_url: str


@pytest.fixture(scope="module")
def rollout(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rollout]:
    root = tmp_path_factory.mktemp("rollout-repo")
    copy_model(model_root / MLP_HEAD, root / ROLLING)
    copy_model(model_root / MLP_HEAD, root / SIDED)
    publish_next(root, SIDED)  # versions 1 and 2
    dashboard = free_port()
    config = {
        "repository": {"root": str(root)},
        "http": {
            "host": "127.0.0.1",
            "port": free_port(),
            "admin_ports": [free_port(), free_port()],
        },
        "models": [
            {
                "name": ROLLING,
                "num_replicas": 2,
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
                "graceful_shutdown_timeout_s": 5,
                "resources": {"num_cpus": 0.1, "torch_threads": 1},
            },
            {
                "name": SIDED,
                "version_policy": {"latest_n": 2},
                "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
                "graceful_shutdown_timeout_s": 5,
                "resources": {"num_cpus": 0.1, "torch_threads": 1},
            },
        ],
    }
    folder = tmp_path_factory.mktemp("rollout-demo")
    args = ["--num-cpus", "4", "--dashboard-port", str(dashboard)]
    with demo_process(config, folder, *args) as demo:
        yield Rollout(demo, folder / "app.yaml", root, f"http://127.0.0.1:{dashboard}")


def publish_next(root: Path, model: str = ROLLING, corrupt: bool = False) -> Path:
    """Publish a copy of version 1's weights as the next version of ``model`` (one byte
    flipped after publishing when ``corrupt``); returns the weight file."""
    v1 = root / model / "1"
    manifest = Manifest.model_validate_json((v1 / MANIFEST_NAME).read_text())
    target = publish(
        v1 / "model.safetensors", root, model, format=manifest.format,
        task=manifest.task, architecture=manifest.architecture,
    )  # fmt: skip
    weights = target / "model.safetensors"
    if corrupt:
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    return weights


@dataclass
class Traffic:
    """Closed-loop senders (each waits ``pause_s`` between requests) recording every
    outcome in order: the ``model_version`` of a 200, else the status or error name."""

    url: str
    body: bytes
    senders: int = 2
    pause_s: float = 0.02
    outcomes: list[tuple[float, str]] = field(default_factory=list)
    bodies: dict[str, list[str]] = field(default_factory=dict)
    """Each distinct body of each non-200 status (the first 5), to name a failure."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _send(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    r = client.post(self.url, content=self.body)
                    if r.status_code == 200:
                        outcome = f"v{r.json()['model_version']}"
                    else:
                        outcome = str(r.status_code)
                        seen = self.bodies.setdefault(outcome, [])
                        if r.text[:300] not in seen and len(seen) < 5:
                            seen.append(r.text[:300])
                except httpx.HTTPError as e:
                    outcome = type(e).__name__
                self.outcomes.append((t, outcome))
                time.sleep(self.pause_s)

    def __enter__(self) -> Traffic:
        self._threads = [threading.Thread(target=self._send) for _ in range(self.senders)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def assert_no_failure(self, versions: set[str]) -> None:
        """Every request was answered 200 by one of ``versions``: no failure allowed.

        CI once saw 404 bursts here (53-84 of ~2000 requests) whose body came from the
        session Ray's server app: two local Rays handed out direct-ingress ports from the
        same range, and HAProxy still pointed at a stopped replica's port that the other
        Ray had reused. tests/conftest.py now runs this module before the session's Ray
        starts, so any failure is a regression; its bodies are in the message."""
        counts = self.counts()
        failed = {o: n for o, n in counts.items() if o not in versions}
        assert failed == {}, (dict(counts), self.bodies)

    def counts(self, since: float = 0.0) -> Counter[str]:
        """Outcomes of requests sent at or after ``since`` (monotonic seconds)."""
        return Counter(o for t, o in self.outcomes if t >= since)


def serve_app_deploy(rollout: Rollout, *extra: str) -> subprocess.CompletedProcess[str]:
    """``serve-app deploy`` on the module's AppConfig, as a user runs it."""
    cmd = [sys.executable, "-m", "serve_app.cli", "deploy", "--config", str(rollout.config_path),
           "--address", rollout.dashboard_url, "--wait-s", "240", *extra]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def traffic_for(rollout: Rollout) -> Traffic:
    body = generated_body(model_metadata(rollout.demo.url, ROLLING))
    return Traffic(f"{rollout.demo.url}/v2/models/{ROLLING}/infer", body)


def test_a_new_version_rolls_out_under_traffic_without_a_failed_request(
    rollout: Rollout,
) -> None:
    with traffic_for(rollout) as traffic:
        time.sleep(3)
        publish_next(rollout.root)
        t0 = time.monotonic()
        deployed = serve_app_deploy(rollout)
        rolled_s = time.monotonic() - t0
        time.sleep(3)
    print(deployed.stdout[-2000:], deployed.stderr[-2000:])
    counts = traffic.counts()
    after = traffic.counts(since=t0 + rolled_s)
    print(f"rolled out in {rolled_s:.1f} s; responses {dict(counts)}; after: {dict(after)}")
    assert deployed.returncode == 0, serve_diagnosis(rollout.demo, rollout.dashboard_url, ROLLING)
    assert f"{ROLLING}: version 1 -> 2" in deployed.stdout
    assert set(counts) == {"v1", "v2"}  # no failure of any kind, both versions answered
    assert set(after) == {"v2"}  # once deploy returns, only the new version answers
    versions = [o for _, o in sorted(traffic.outcomes)]
    last_v1 = max(i for i, o in enumerate(versions) if o == "v1")
    print(f"request order: first v2 #{versions.index('v2')}, last v1 #{last_v1}")


def test_versions_side_by_side_each_on_its_own_route_and_rolled_by_latest_n(
    rollout: Rollout,
) -> None:
    base = f"{rollout.demo.url}/v2/models/{SIDED}"
    body = generated_body(model_metadata(rollout.demo.url, SIDED))

    def version_of(path: str) -> object:
        r = httpx.post(f"{base}{path}/infer", content=body, timeout=30)
        return r.json()["model_version"] if r.status_code == 200 else (r.status_code, r.text)

    assert httpx.get(base).json()["versions"] == ["1", "2"]
    assert [version_of(p) for p in ("", "/versions/2", "/versions/1")] == ["2", "2", "1"]
    code, text = version_of("/versions/7")  # type: ignore[misc]
    assert code == 404 and "version 7 not found (serving versions 1, 2)" in text
    listed = [m["name"] for m in httpx.get(f"{rollout.demo.url}/v2/models").json()["models"]]
    assert listed.count(SIDED) == 1 and not [n for n in listed if n.startswith(f"{SIDED}.")]
    # A new version: latest_n moves the window to 2 and 3 on the next deploy.
    publish_next(rollout.root, SIDED)
    deployed = serve_app_deploy(rollout)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    assert f"{SIDED}.latest-1: version 1 -> 2" in deployed.stdout
    assert httpx.get(base).json()["versions"] == ["2", "3"]
    assert [version_of(p) for p in ("", "/versions/3", "/versions/2")] == ["3", "3", "2"]
    code, text = version_of("/versions/1")  # type: ignore[misc]
    assert code == 404 and "(serving versions 2, 3)" in text
    ready_after_s = server_ready_after_s(rollout)
    print(f"server ready {ready_after_s:.1f} s after the deploy returned")


def server_ready_after_s(rollout: Rollout) -> float:
    """Seconds until the server application's readiness is 200. It reads Serve's state
    from a cached view refreshed every STATUS_PERIOD_S, so it may lag a deploy that just
    returned; it must catch up before the view counts as stale (STATUS_STALE_S)."""
    start = time.monotonic()
    while True:
        r = httpx.get(f"{rollout.demo.url}/v2/health/ready", timeout=10)
        if r.status_code == 200:
            return time.monotonic() - start
        assert time.monotonic() - start < STATUS_STALE_S, (r.status_code, r.text)
        time.sleep(STATUS_PERIOD_S / 4)


def stable_replicas(rollout: Rollout) -> set[str]:
    """Replica ids of the model's own (stable) application, as Serve reports them."""
    apps = json.loads(
        http_get(f"{rollout.dashboard_url}/api/serve/applications/", read_token(), 10)
    )["applications"]
    return {r["replica_id"] for r in apps[ROLLING]["deployments"]["ModelDeployment"]["replicas"]}


def test_a_canary_takes_its_share_rolls_back_and_is_promoted_without_a_failed_request(
    rollout: Rollout,
) -> None:
    original = rollout.config_path.read_text()
    new = int(publish_next(rollout.root).parent.name)
    stable = new - 1
    config = yaml.safe_load(original)
    config["models"][0].update(version=stable, canary={"version": new, "percent": 25})
    with_canary = yaml.safe_dump(config)
    replicas = stable_replicas(rollout)
    base = f"{rollout.demo.url}/v2/models/{ROLLING}"
    try:
        rollout.config_path.write_text(with_canary)
        started = serve_app_deploy(rollout)
        assert started.returncode == 0, started.stderr[-2000:]
        with traffic_for(rollout) as traffic:
            time.sleep(6)
        split = traffic.counts()
        direct = {
            v: httpx.post(f"{base}/versions/{v}/infer", content=traffic.body, timeout=30).json()[
                "model_version"
            ]
            for v in (stable, new)
        }
        # Roll back, under traffic: the canary's share returns to the stable version.
        with traffic_for(rollout) as traffic:
            time.sleep(1)
            rolled_back = serve_app_deploy(rollout, "--rollback", ROLLING)
            back = time.monotonic()
            time.sleep(2)
        after_rollback, settled = traffic.counts(), traffic.counts(since=back)
        assert rolled_back.returncode == 0, rolled_back.stderr[-2000:]
        assert "canary" not in yaml.safe_load(rollout.config_path.read_text())["models"][0]
        # Starting and ending a canary restarted no replica of the stable version.
        assert stable_replicas(rollout) == replicas
        # Again, then promote it, under traffic.
        rollout.config_path.write_text(with_canary)
        assert serve_app_deploy(rollout).returncode == 0
        with traffic_for(rollout) as traffic:
            time.sleep(2)
            t0 = time.monotonic()
            promoted = serve_app_deploy(rollout, "--promote", ROLLING)
            done = time.monotonic()
            time.sleep(3)
        share = split[f"v{new}"] / sum(split.values())
        print(f"canary split over 6 s: {dict(split)} ({share:.1%} to v{new}); rollback: "
              f"{dict(after_rollback)}, after it {dict(settled)}; "
              f"promotion in {done - t0:.1f} s: {dict(traffic.counts())}")  # fmt: skip
        assert set(split) == {f"v{stable}", f"v{new}"}  # nothing failed
        assert 0.15 < share < 0.35  # 25 % declared; ~400 requests: +-3 standard deviations
        assert direct == {stable: str(stable), new: str(new)}
        assert set(after_rollback) <= {f"v{stable}", f"v{new}"}
        assert set(settled) == {f"v{stable}"}
        assert promoted.returncode == 0, promoted.stderr[-2000:]
        traffic.assert_no_failure({f"v{stable}", f"v{new}"})
        assert set(traffic.counts(since=done)) == {f"v{new}"}
        promoted_config = yaml.safe_load(rollout.config_path.read_text())["models"][0]
        assert promoted_config["version"] == new and "canary" not in promoted_config
    finally:
        rollout.config_path.write_text(original)  # latest, which is now the promoted one


def test_a_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(
    rollout: Rollout,
) -> None:
    served = yaml.safe_load(rollout.config_path.read_text())  # unchanged: latest
    assert served["models"][0].get("version", "latest") == "latest"
    traffic = traffic_for(rollout)
    before = httpx.post(traffic.url, content=traffic.body, timeout=30).json()["model_version"]
    with traffic:
        time.sleep(2)
        weights = publish_next(rollout.root, corrupt=True)
        refused = serve_app_deploy(rollout)
        # Forced past the client's check: the new replicas verify for themselves.
        forced = serve_app_deploy(rollout, "--no-verify")
        time.sleep(2)
    counts = traffic.counts()
    print(f"refused: {refused.stderr.strip()[-600:]}")
    print(f"forced: {forced.stderr.strip()[-600:]}")
    print(f"responses: {dict(counts)}")
    assert refused.returncode == 2
    assert f"sha256 mismatch for {weights}" in refused.stderr
    assert "the running versions keep serving" in refused.stderr
    assert forced.returncode == 2
    assert str(weights) in forced.stderr
    traffic.assert_no_failure({f"v{before}"})  # every request: by the old version


def test_deploy_names_an_unreachable_dashboard_and_a_wrong_token(rollout: Rollout) -> None:
    port = free_port()
    gone = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "deploy", "--config", str(rollout.config_path),
         "--address", f"http://127.0.0.1:{port}", "--no-verify"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 2 and "is Ray running" in gone.stderr
    wrong = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "deploy", "--config", str(rollout.config_path),
         "--address", rollout.dashboard_url, "--no-verify"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "RAY_AUTH_TOKEN": "wrong"},
    )  # fmt: skip
    print(gone.stderr[-300:], wrong.stderr[-300:])
    assert wrong.returncode == 2 and "the Ray token is missing or wrong" in wrong.stderr
