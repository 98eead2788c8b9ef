"""A load run end to end: send the load, sample the cluster meanwhile, write the results
folder (``requests.parquet``, ``samples.parquet``, ``run.json``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from loadtest.harness.machine import machine_info
from loadtest.observe.analysis import REQUESTS_FILE, RUN_FILE, SAMPLES_FILE
from loadtest.observe.sampler import Sampler
from loadtest.traffic.generator import Requests, Target, closed_loop, open_loop
from loadtest.traffic.profiles import Profile
from serve_app.schema_base import StrictModel


class RunSettings(StrictModel):
    """What a run did; written into ``run.json``."""

    base_url: str = Field(description="Ingress URL, e.g. http://127.0.0.1:8000.")
    model: str = Field(description="Model or pipeline name (OIP route).")
    profile: Profile | None = Field(None, description="Open-loop profile; None for a sweep.")
    concurrency: list[int] = Field(default_factory=list, description="Closed-loop levels.")
    level_s: float = Field(10.0, gt=0, description="Seconds per concurrency level.")
    arrivals: str = Field("poisson", description="uniform or poisson arrival times.")
    seed: int = Field(0, description="Seed of the Poisson arrivals.")
    timeout_s: float = Field(30.0, gt=0, description="Client timeout per request.")
    max_connections: int = Field(1024, ge=1, description="Open sockets at most.")
    cooldown_s: float = Field(0.0, ge=0, description="Sampling after the load ends.")
    serve_api_url: str | None = Field(None, description="Dashboard URL (Serve REST API).")
    metrics_urls: list[str] = Field(default_factory=list, description="Prometheus pages.")
    sample_period_s: float = Field(0.5, gt=0, description="Sampler period.")
    rows: int = Field(1, ge=1, description="Rows per request (generated payloads).")
    note: str = Field("", description="Free text: what this run is for.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Caller's own facts.")


def infer_url(base_url: str, model: str) -> str:
    """The OIP infer URL of ``model`` at ``base_url``."""
    return f"{base_url.rstrip('/')}/v2/models/{model}/infer"


def write_results(
    out: Path, requests: pa.Table, sampler: Sampler | None, settings: RunSettings, wall_t0: float
) -> Path:
    """Write the results folder; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(requests, out / REQUESTS_FILE)
    if sampler is not None:
        pq.write_table(sampler.table(), out / SAMPLES_FILE)
    run = {
        **settings.model_dump(mode="json"),
        "wall_start_s": wall_t0,
        "machine": machine_info(),
    }
    (out / RUN_FILE).write_text(json.dumps(run, indent=1) + "\n")
    return out


def _sampler(settings: RunSettings, t0: float, token: str | None) -> Sampler | None:
    if not settings.serve_api_url and not settings.metrics_urls:
        return None
    return Sampler(
        serve_api_url=settings.serve_api_url,
        metrics_urls=settings.metrics_urls,
        token=token,
        period_s=settings.sample_period_s,
        t0=t0,
    )


def run_open_loop(settings: RunSettings, body: bytes, out: Path, token: str | None = None) -> Path:
    """Send ``settings.profile`` open loop, sampling meanwhile and for ``cooldown_s``
    after; write the results folder."""
    assert settings.profile is not None, "an open-loop run needs a profile"
    profile = settings.profile
    arrivals = profile.arrivals(
        "uniform" if settings.arrivals == "uniform" else "poisson", settings.seed
    )
    phases = [str(p) for p in profile.phase_at(arrivals)]
    target = Target(infer_url(settings.base_url, settings.model), body, name=settings.model)
    t0, wall_t0 = time.monotonic() + 0.5, time.time() + 0.5
    sampler = _sampler(settings, t0, token)
    if sampler is not None:
        sampler.start()
    try:
        requests = asyncio.run(
            open_loop(target, arrivals, phases, settings.timeout_s, settings.max_connections, t0)
        )
        remaining_s = t0 + profile.duration_s + settings.cooldown_s - time.monotonic()
        if remaining_s > 0:
            time.sleep(remaining_s)
    finally:
        if sampler is not None:
            sampler.stop()
    return write_results(out, requests.table(wall_t0), sampler, settings, wall_t0)


def run_sweep(settings: RunSettings, body: bytes, out: Path, token: str | None = None) -> Path:
    """Closed loop at each of ``settings.concurrency`` for ``level_s`` (like Triton's
    perf_analyzer concurrency sweep); each level is a phase ``c=<n>``."""
    target = Target(infer_url(settings.base_url, settings.model), body, name=settings.model)
    t0, wall_t0 = time.monotonic(), time.time()
    sampler = _sampler(settings, t0, token)
    if sampler is not None:
        sampler.start()
    parts = []
    try:
        for n in settings.concurrency:
            offset = time.monotonic() - t0
            part = asyncio.run(
                closed_loop(target, n, settings.level_s, settings.timeout_s, f"c={n}")
            )
            part.scheduled_s += offset
            part.sent_s += offset
            parts.append(part)
    finally:
        if sampler is not None:
            sampler.stop()
    tables = [p.table(wall_t0) for p in parts] or [Requests.empty(0, settings.model).table(wall_t0)]
    return write_results(out, pa.concat_tables(tables), sampler, settings, wall_t0)
