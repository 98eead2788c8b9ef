"""Autoscaling under real traffic, measured the way a user measures it: ``serve-app
demo`` (HAProxy ingress, dashboard and metrics on loopback) and ``serve-app loadtest``'s
open-loop generator and sampler, with short autoscaling delays.

- A step load raises an autoscaling model from 1 to at least 3 replicas, p99 comes back
  under the objective, replicas return to 1 after the load, and no request fails. The
  step (30 req/s) is far below what saturates even one slow core, with a target of 0.125
  ongoing requests so it still asks for the maximum: at 100 req/s one core served 73
  req/s with a p50 of 11 s and two requests timed out, which tests the machine, not the
  scaling; and on a saturated box a new replica's process can take longer to start than
  the step lasts (seen once in CI: target 4, none started in 45 s, generator lag 0.5 s).
- With a fractional logical GPU (0.25 each, one GPU), scale-up stops at 4 running
  replicas while the target asks for more; the excess requests wait (queue limits are
  high), so none fails either.

The model is ``mlp-head`` with a 20 ms batching window: each request waits for its batch,
so ~20 ms x rate requests are in flight, which is what Serve scales on. Both tests first
check that the generator kept to its schedule (``require_the_load_was_sent``): a machine
too slow to send the load skips, saying so, rather than failing on a load never sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.observe.analysis import load_run, summarize, target_series
from loadtest.observe.sampler import read_token
from loadtest.run import RunSettings, run_open_loop
from loadtest.traffic import profiles
from loadtest.traffic.payloads import generated_body, model_metadata
from serve_app.local.demo import MLP_HEAD
from tests.integration.conftest import free_port
from tests.integration.demo_process import Demo, demo_process, serve_diagnosis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCALER, SCALER_GPU = "scaler", "scaler-gpu"
SLO_MS = 250.0
"""p99 objective once scaled (generous: two shared cores also run the generator)."""
GENERATOR_LAG_LIMIT_MS = 500.0
"""Beyond this p99 lag (requests leaving later than scheduled) the generator did not send
the load the test is about: the machine is too slow that day, which says nothing of the
product, so the test skips and says so instead of asserting on a load never sent."""


def require_the_load_was_sent(overall: dict[str, Any]) -> None:
    """Skip (machine too slow) when the generator fell behind its schedule."""
    lag_ms = overall["generator_lag_p99_ms"]
    if lag_ms is not None and lag_ms > GENERATOR_LAG_LIMIT_MS:
        pytest.skip(
            f"machine too slow: the load generator ran {lag_ms:.0f} ms behind schedule at "
            f"p99 (limit {GENERATOR_LAG_LIMIT_MS:.0f} ms), so the load to scale on was not sent"
        )


def autoscaling(max_replicas: int, target_ongoing_requests: float) -> dict[str, Any]:
    return {
        "min_replicas": 1,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
        "upscale_delay_s": 1,
        "downscale_delay_s": 2,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }


def scaler(
    name: str, resources: dict[str, Any], max_replicas: int, target_ongoing_requests: float
) -> dict[str, Any]:
    return {
        "name": name,
        "repository_name": MLP_HEAD,
        "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02},
        "max_ongoing_requests": 4,
        "max_queued_requests": 1024,
        "graceful_shutdown_timeout_s": 2,
        "resources": {**resources, "torch_threads": 1},
        "autoscaling": autoscaling(max_replicas, target_ongoing_requests),
    }


@pytest.fixture(scope="module")
def demo(
    model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Demo, RunSettings]]:
    config = {
        "repository": {"root": str(model_root)},
        "http": {
            "host": "127.0.0.1",
            "port": free_port(),
            "admin_ports": [free_port(), free_port()],
        },
        "models": [
            scaler(SCALER, {"num_cpus": 0.25}, 4, target_ongoing_requests=0.125),
            scaler(SCALER_GPU, {"num_cpus": 0, "num_gpus": 0.25}, 8, target_ongoing_requests=0.1),
        ],
    }
    dashboard, metrics = free_port(), free_port()
    folder = tmp_path_factory.mktemp("autoscaling-demo")
    args = ["--num-cpus", "4", "--num-gpus", "1", "--dashboard-port", str(dashboard)]
    with demo_process(config, folder, *args, "--metrics-port", str(metrics)) as running:
        base = RunSettings(
            base_url=running.url,
            model=SCALER,
            serve_api_url=f"http://127.0.0.1:{dashboard}",
            metrics_urls=[f"http://127.0.0.1:{metrics}"],
        )
        yield running, base


def load(
    demo: tuple[Demo, RunSettings],
    model: str,
    profile: profiles.Profile,
    cooldown_s: float,
    out: Path,
) -> Any:
    running, base = demo
    settings = base.model_copy(
        update={"model": model, "profile": profile, "cooldown_s": cooldown_s}
    )
    body = generated_body(model_metadata(running.url, model))
    run = load_run(run_open_loop(settings, body, out, read_token()))
    return run, summarize(run, SLO_MS)


def test_a_step_scales_out_recovers_and_scales_back_without_a_failure(
    demo: tuple[Demo, RunSettings], tmp_path: Path
) -> None:
    profile = profiles.step(2, 30, at_s=5, duration_s=35)
    run, s = load(demo, SCALER, profile, cooldown_s=20, out=tmp_path)
    o = s["overall"]
    d = s["deployments"][f"{SCALER}/ModelDeployment"]
    print({"overall": o, "deployment": d})
    require_the_load_was_sent(o)
    assert (o["failed"], o["errors"]) == (0, {})
    assert o["requests"] >= 0.9 * profile.expected_requests()
    assert d["max_running"] >= 3, serve_diagnosis(demo[0], demo[1].serve_api_url or "", SCALER)
    late = (run.requests["sent_s"] >= 27) & (run.requests["sent_s"] < 35)
    late_p99_ms = float(np.percentile(run.requests["latency_s"][late], 99) * 1e3)
    # The generator measures latency on its own event loop: on a busy machine its delay
    # (its lag behind schedule, at most GENERATOR_LAG_LIMIT_MS here) is in every latency
    # it reads, so the objective holds for what the server adds on top of it.
    lag_ms = o["generator_lag_p99_ms"] or 0.0
    print(f"p99 over the last 8 s of the step: {late_p99_ms:.0f} ms (generator lag {lag_ms:.0f})")
    assert late_p99_ms < SLO_MS + lag_ms
    assert d["scale_down"]["replicas_final"] == 1.0 and d["scale_down"]["scale_down_s"] is not None


def test_fractional_gpus_cap_the_scale_out_and_the_excess_waits(
    demo: tuple[Demo, RunSettings], tmp_path: Path
) -> None:
    # 40 req/s with a target of 0.1 ongoing requests asks for the maximum (8); 200 req/s
    # once left a slow machine's generator 5.7 s behind, and 100 req/s on one core timed
    # requests out. 50 s: on busy cores each new replica takes several seconds to start.
    profile = profiles.step(2, 40, at_s=3, duration_s=50)
    run, s = load(demo, SCALER_GPU, profile, cooldown_s=5, out=tmp_path)
    series = target_series(run)[f"{SCALER_GPU}/ModelDeployment"]
    o = s["overall"]
    print({"overall": o, "max_target": np.nanmax(series["target_replicas"])})
    require_the_load_was_sent(o)
    assert (o["failed"], o["errors"]) == (0, {})
    assert np.nanmax(series["running"]) == 4, serve_diagnosis(
        demo[0], demo[1].serve_api_url or "", SCALER_GPU
    )  # 4 x 0.25 fills the one logical GPU
    assert np.nanmax(series["target_replicas"]) > 4  # it asked for more
    assert np.nanmax(series["starting"]) >= 1  # which pended, unplaceable
