"""The load-test package without a cluster: profiles, the open-loop generator against a
local no-op server, the sampler's parsers, the analysis of a synthetic run and its
report picture."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loadtest.observe.analysis import load_run, summarize
from loadtest.observe.sampler import metric_sums, replica_counts
from loadtest.reports.load import report
from loadtest.traffic import profiles
from loadtest.traffic.generator import Target, closed_loop, open_loop

# --- profiles --------------------------------------------------------------------------


def test_step_profile_rates_phases_and_arrivals() -> None:
    p = profiles.step(5, 50, at_s=10, duration_s=30, down_at_s=20)
    assert p.rate_at(np.array([0, 9.99, 10, 19.99, 20, 29])).tolist() == [5, 5, 50, 50, 5, 5]
    assert p.phase_at(np.array([0, 10, 25])).tolist() == ["before", "after-step", "after-drop"]
    assert p.expected_requests() == 5 * 10 + 50 * 10 + 5 * 10
    uniform = p.arrivals("uniform")
    assert len(uniform) == 600
    assert np.sum(uniform < 10) == 50 and np.sum((uniform >= 10) & (uniform < 20)) == 500
    poisson = p.arrivals("poisson", seed=3)
    assert abs(len(poisson) - 600) < 4 * np.sqrt(600)
    assert np.all(np.diff(poisson) >= 0) and poisson.max() < 30


def test_diurnal_day_is_quiet_at_night_and_peaks_in_the_evening() -> None:
    p = profiles.diurnal(night_rate=0.5, peak_rate=20, day_s=240)
    hour_s = 10.0
    assert p.peak_rate == 20 and min(r for _, r in p.knots) == 0.5
    assert p.rate_at(20 * hour_s)[0] == 20  # 20:00
    assert p.rate_at(3 * hour_s)[0] == 0.5  # 03:00
    assert [name for _, name in p.phases] == ["night", "morning", "midday", "evening", "late"]


def test_profiles_refuse_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="rates must be >= 0"):
        profiles.ramp(-1, 5, 10)
    with pytest.raises(ValueError, match="never go back in time"):
        profiles.Profile(kind="ramp", knots=[(0, 1), (5, 1), (4, 1)], phases=[(0, "x")])


# --- generator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noop_server() -> Iterator[str]:
    """An aiohttp server on 127.0.0.1: /ok answers 200, /busy 503, in its own thread."""
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=b'{"outputs": []}')

    async def busy(_: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "1"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            text='ray_serve_replica_processing_queries{application="m",deployment="D"} 2.0\n'
        )

    async def details(_: web.Request) -> web.Response:
        replicas = [{"state": "RUNNING"}]
        body = {
            "applications": {
                "m": {"deployments": {"D": {"target_num_replicas": 1, "replicas": replicas}}}
            }
        }
        return web.json_response(body)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes(
        [
            web.post("/ok", ok),
            web.post("/busy", busy),
            web.post("/v2/models/{name}/infer", ok),
            web.get("/metrics", metrics),
            web.get("/api/serve/applications/", details),
        ]
    )
    runner = web.AppRunner(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_open_loop_sends_on_schedule_and_records_every_outcome(noop_server: str) -> None:
    arrivals = profiles.constant(200, 1.0).arrivals("uniform")
    out = asyncio.run(open_loop(Target(f"{noop_server}/ok", b"{}", name="m"), arrivals))
    assert len(out.status) == 200 and set(out.status.tolist()) == {200}
    lag_s = out.sent_s - out.scheduled_s
    assert np.percentile(lag_s, 50) < 0.02, np.percentile(lag_s, [50, 99])
    busy = asyncio.run(open_loop(Target(f"{noop_server}/busy", b"{}"), arrivals[:20]))
    assert set(busy.status.tolist()) == {503}
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/x"
    refused = asyncio.run(open_loop(Target(dead, b"{}"), arrivals[:3]))
    assert refused.status.tolist() == [0, 0, 0]
    assert set(refused.error) == {"ClientConnectorError"}


def test_closed_loop_keeps_n_requests_in_flight(noop_server: str) -> None:
    out = asyncio.run(closed_loop(Target(f"{noop_server}/ok", b"{}"), 4, 0.5, phase="c=4"))
    assert len(out.status) > 20 and set(out.phase) == {"c=4"}
    assert set(out.status.tolist()) == {200}


# --- sampler ---------------------------------------------------------------------------


def test_a_run_samples_on_the_load_clock_and_scrapes_metrics_periodically(
    noop_server: str, tmp_path: Path
) -> None:
    from loadtest.run import RunSettings, run_open_loop

    settings = RunSettings(
        base_url=noop_server,
        model="m",
        profile=profiles.constant(20, 4.5),
        serve_api_url=noop_server,
        metrics_urls=[f"{noop_server}/metrics"],
    )
    run = load_run(run_open_loop(settings, b"{}", tmp_path))
    t, scraped = run.samples["t_s"].astype(float), set(run.samples["metrics_t_s"].tolist())
    assert -0.6 < t.min() < 0.1 and t.max() > 4.0  # sampling starts with the load's clock
    assert len(scraped) >= 2  # metrics every 2 s, REST API every 0.5 s
    assert set(run.samples["running"].tolist()) == {1}
    assert set(run.samples["processing"].tolist()) == {2.0}
    assert (run.requests["status"] == 200).all()


def test_metric_sums_add_up_replicas_per_deployment() -> None:
    page = (
        "# TYPE ray_serve_replica_processing_queries gauge\n"
        'ray_serve_replica_processing_queries{application="m",deployment="D",replica="a"} 3.0\n'
        'ray_serve_replica_processing_queries{application="m",deployment="D",replica="b"} 2.0\n'
        'ray_serve_deployment_queued_queries{application="m",deployment="D",handle="h"} 7.0\n'
        'ray_serve_other{application="m",deployment="D"} 99.0\n'
    )
    assert metric_sums(page) == {("m", "D"): {"processing": 5.0, "queued": 7.0}}


def test_replica_counts_from_serve_details() -> None:
    details = {
        "applications": {
            "m": {
                "deployments": {
                    "D": {
                        "target_num_replicas": 3,
                        "replicas": [
                            {"state": "RUNNING"},
                            {"state": "RUNNING"},
                            {"state": "STARTING"},
                        ],
                    }
                }
            }
        }
    }
    assert replica_counts(details) == {
        ("m", "D"): {"running": 2, "starting": 1, "target_replicas": 3}
    }


# --- analysis and report of a synthetic run -------------------------------------------


def write_synthetic_run(folder: Path) -> None:
    """Step 10 -> 100 req/s at 10 s for 20 s; latency 10 ms, 500 ms for 4 s after the
    step; 2 requests get 503; replicas 1 -> 3 at 13 s, back to 1 at 24 s (load ends 20)."""
    p = profiles.step(10, 100, at_s=10, duration_s=20)
    sent = p.arrivals("uniform")
    latency = np.where((sent >= 10) & (sent < 14), 0.5, 0.01)
    status = np.full(sent.size, 200, np.int16)
    status[[150, 160]] = 503
    pq.write_table(
        pa.table(
            {
                "scheduled_s": sent,
                "sent_s": sent,
                "latency_s": latency,
                "status": status,
                "error": [""] * sent.size,
                "phase": [str(x) for x in p.phase_at(sent)],
                "target": ["m"] * sent.size,
            }
        ),
        folder / "requests.parquet",
    )
    t = np.arange(0, 30, 0.5)
    running = np.where((t >= 13) & (t < 24), 3, 1)
    target = np.where((t >= 11) & (t < 22), 3, 1)
    pq.write_table(
        pa.table(
            {
                "t_s": t,
                "app": ["m"] * t.size,
                "deployment": ["D"] * t.size,
                "running": running,
                "starting": np.zeros(t.size),
                "target_replicas": target,
                "processing": np.ones(t.size),
                "queued": np.zeros(t.size),
                "target_metric": target.astype(float),
                "error": [""] * t.size,
            }
        ),
        folder / "samples.parquet",
    )
    (folder / "run.json").write_text(
        json.dumps({"model": "m", "profile": p.model_dump(mode="json")})
    )


def test_summary_of_a_synthetic_step(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path)
    s = summarize(load_run(tmp_path), slo_ms=100)
    assert s["overall"]["requests"] == 1100 and s["overall"]["failed"] == 2
    assert s["overall"]["errors"] == {"HTTP 503": 2}
    assert s["phases"]["before"]["p99_ms"] == 10.0
    d = s["deployments"]["m/D"]
    assert d["max_running"] == 3.0
    # 1 replica for 13 s + 3 for 11 s + 1 for 6 s (samples run to 29.5 s; t_end = 29.5)
    assert d["replica_seconds"] == pytest.approx(13 + 33 + 5.5, abs=0.01)
    (step,) = d["reaction"]
    assert (step["replicas_before"], step["replicas_target"], step["replicas_reached_s"]) == (
        1.0,
        3.0,
        3.0,
    )
    assert step["p99_under_slo_s"] == 4.0  # the last 2 s window over the SLO ends at 14 s
    assert d["scale_down"] == {
        "load_end_s": 20.0,
        "replicas_at_end_of_load": 3.0,
        "replicas_final": 1.0,
        "scale_down_s": 4.0,
    }


def test_report_writes_numbers_and_a_picture(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path)
    summary = report(tmp_path, slo_ms=100, title="synthetic")
    assert json.loads((tmp_path / "report.json").read_text()) == summary
    md = (tmp_path / "report.md").read_text()
    assert "| after-step | 1000 | 998 | 2 |" in md
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# --- Locust ----------------------------------------------------------------------------


def test_locust_runs_the_same_profile(noop_server: str, tmp_path: Path) -> None:
    """Headless Locust with ``ProfileShape``: users follow the profile's rate, and a 4 s
    constant 20 req/s profile sends ~80 requests, none failing."""
    import subprocess
    import sys

    from loadtest.traffic.locust_profile import profile_from_env, users_at

    env_profile = {"LOADTEST_PROFILE": "step", "LOADTEST_LOW": "2", "LOADTEST_HIGH": "9.5"}
    shape = profile_from_env({**env_profile, "LOADTEST_AT_S": "3", "LOADTEST_DURATION_S": "6"})
    assert [users_at(shape, t) for t in (0, 2.9, 3, 5)] == [2, 2, 10, 10]

    payload = tmp_path / "request.json"
    payload.write_text('{"inputs": []}')
    env = {
        **os.environ,
        "LOADTEST_MODEL": "m",
        "LOADTEST_PAYLOAD": str(payload),
        "LOADTEST_PROFILE": "constant",
        "LOADTEST_RATE": "20",
        "LOADTEST_DURATION_S": "4",
    }
    cmd = [sys.executable, "-m", "locust", "-f", "loadtest/traffic/locustfile.py", "--headless"]
    out = subprocess.run(
        [*cmd, "--host", noop_server, "--csv", str(tmp_path / "stats"), "--only-summary"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (tmp_path / "stats_stats.csv").read_text().splitlines()
    total = next(r for r in rows if ",Aggregated," in r).split(",")
    requests, failures = int(total[2]), int(total[3])
    assert failures == 0 and 50 <= requests <= 100, total


def test_an_http_error_keeps_why_from_its_body() -> None:
    from loadtest.observe.analysis import error_label
    from loadtest.traffic.generator import error_reason

    oip = json.dumps({"error": "overloaded, retry later", "request_id": "r1"}).encode()
    assert error_reason(oip) == "overloaded, retry later"
    haproxy = b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available</body></html>"
    assert error_reason(haproxy) == "503 Service Unavailable"
    assert error_reason(b"x" * 500) == "x" * 120
    assert error_reason(b"") == ""
    assert error_label(503, "overloaded, retry later") == "HTTP 503: overloaded, retry later"
    assert (error_label(503, ""), error_label(0, "timeout")) == ("HTTP 503", "timeout")
