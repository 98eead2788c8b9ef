"""Numbers from a load run's files: throughput, latency percentiles, errors, replica-
seconds, and how fast replicas and latency followed each load step. Pure numpy over the
Parquet columns, so it is unit-tested without a cluster."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from loadtest.traffic.profiles import Profile

REQUESTS_FILE = "requests.parquet"
SAMPLES_FILE = "samples.parquet"
RUN_FILE = "run.json"


@dataclass
class Run:
    """A results folder, loaded."""

    requests: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    settings: dict[str, Any]

    @property
    def profile(self) -> Profile | None:
        """The open-loop profile of the run, if it had one."""
        raw = self.settings.get("profile")
        return Profile.model_validate(raw) if raw else None


def load_run(folder: Path) -> Run:
    """Read ``requests.parquet``, ``samples.parquet`` (optional) and ``run.json``."""
    requests = {
        k: np.asarray(v) for k, v in pq.read_table(folder / REQUESTS_FILE).to_pydict().items()
    }
    samples: dict[str, np.ndarray] = {}
    if (folder / SAMPLES_FILE).exists():
        table = pq.read_table(folder / SAMPLES_FILE).to_pydict()
        samples = {k: np.asarray(v, dtype=object) for k, v in table.items()}
    return Run(requests, samples, json.loads((folder / RUN_FILE).read_text()))


def percentile_ms(latency_s: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile in ms (None without data)."""
    return None if latency_s.size == 0 else round(float(np.percentile(latency_s, q)) * 1e3, 2)


def error_label(status: int, error: str) -> str:
    """``HTTP 503: overloaded, retry later`` (``HTTP 503`` when the body said nothing), or
    the client-side error (``timeout``, ``ClientConnectorError``)."""
    if status:
        return f"HTTP {status}: {error}" if error else f"HTTP {status}"
    return error or "no answer"


def request_summary(req: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    """Counts, throughput and latency percentiles of the requests selected by ``mask``."""
    mask = np.ones(len(req["status"]), bool) if mask is None else mask
    status, sent = req["status"][mask], req["sent_s"][mask]
    latency = req["latency_s"][mask]
    ok = status == 200
    errors = Counter(
        error_label(int(s), str(e))
        for s, e in zip(status[~ok], req["error"][mask][~ok], strict=True)
    )
    span_s = float((sent + latency).max() - sent.min()) if sent.size else 0.0
    lag = sent - req["scheduled_s"][mask]
    return {
        "requests": int(status.size),
        "ok": int(ok.sum()),
        "failed": int((~ok).sum()),
        "errors": dict(sorted(errors.items())),
        "throughput_rps": round(ok.sum() / span_s, 2) if span_s > 0 else None,
        "p50_ms": percentile_ms(latency[ok], 50),
        "p95_ms": percentile_ms(latency[ok], 95),
        "p99_ms": percentile_ms(latency[ok], 99),
        "max_ms": percentile_ms(latency[ok], 100),
        "generator_lag_p99_ms": percentile_ms(lag, 99),
    }


def deployment_series(samples: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``app/deployment`` -> time-ordered columns (``t_s``, ``running``, ``target_replicas``,
    ``processing``, ``queued``) as float arrays (NaN where missing)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if not samples:
        return out
    keys = [f"{a}/{d}" for a, d in zip(samples["app"], samples["deployment"], strict=True)]
    for key in sorted(set(keys) - {"/"}):
        rows = np.array([k == key for k in keys])
        t = samples["t_s"][rows].astype(float)
        order = np.argsort(t)
        out[key] = {
            c: np.array([np.nan if v is None else float(v) for v in samples[c][rows]])[order]
            for c in ("t_s", "running", "starting", "target_replicas", "processing", "queued")
        }
    return out


def target_series(run: Run) -> dict[str, dict[str, np.ndarray]]:
    """``deployment_series`` of the target's own application (all, if it has none)."""
    series = deployment_series(run.samples)
    own = {k: v for k, v in series.items() if k.split("/")[0] == run.settings.get("model")}
    return own or series


def replica_seconds(series: dict[str, np.ndarray], t_from: float, t_to: float) -> float:
    """Integral of RUNNING replicas over [t_from, t_to] (step-wise between samples)."""
    t, running = series["t_s"], np.nan_to_num(series["running"])
    if t.size == 0:
        return 0.0
    edges = np.clip(np.append(t, t_to), t_from, t_to)
    return float(np.sum(running * np.diff(edges)))


def steps(profile: Profile) -> list[tuple[float, float, float]]:
    """(t_s, rate before, rate after) of every instantaneous rate change."""
    return [
        (t0, r0, r1)
        for (t0, r0), (t1, r1) in zip(profile.knots, profile.knots[1:], strict=False)
        if t0 == t1 and r0 != r1
    ]


def rolling_p99_ms(
    req: dict[str, np.ndarray], window_s: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """p99 latency of served requests in consecutive windows, by send time: (window end
    times, p99 ms; NaN for a window without a served request)."""
    ok = req["status"] == 200
    sent, latency = req["sent_s"][ok], req["latency_s"][ok]
    if sent.size == 0:
        return np.zeros(0), np.zeros(0)
    ends = np.arange(window_s, float(req["sent_s"].max()) + window_s, window_s)
    p99 = np.full(ends.size, np.nan)
    for i, end in enumerate(ends):
        window = latency[(sent >= end - window_s) & (sent < end)]
        if window.size:
            p99[i] = np.percentile(window, 99) * 1e3
    return ends, p99


def reaction(
    run: Run, series: dict[str, np.ndarray] | None, slo_ms: float, window_s: float = 2.0
) -> list[dict[str, Any]]:
    """For each step of the profile: how long until a deployment's RUNNING replicas
    (``series``: its columns from ``deployment_series``) reached the target it settled on
    after the step, and (for a step up) until the rolling p99 came back under ``slo_ms``
    and stayed there until the next step."""
    profile = run.profile
    if profile is None or series is None:
        return []
    t, running, target = series["t_s"], series["running"], series["target_replicas"]
    ends, p99 = rolling_p99_ms(run.requests, window_s)
    changes = steps(profile)
    out = []
    for i, (at, before, after) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else profile.duration_s
        after_step = (t >= at) & (t <= until)
        settled = target[after_step][-1] if after_step.any() else np.nan
        reached = t[after_step & (running == settled) & (target == settled)]
        item: dict[str, Any] = {
            "at_s": at,
            "rate_before": before,
            "rate_after": after,
            "replicas_before": float(running[t < at][-1]) if (t < at).any() else None,
            "replicas_target": None if np.isnan(settled) else float(settled),
            "replicas_reached_s": round(float(reached[0] - at), 2) if reached.size else None,
        }
        if after > before:
            in_phase = (ends > at) & (ends <= until)
            over = in_phase & ~(p99 <= slo_ms)  # NaN (nothing served) counts as over
            last_over = ends[over].max() if over.any() else None
            recovered = last_over is None or last_over < until - window_s
            item["p99_under_slo_s"] = (
                0.0 if last_over is None else round(float(last_over - at), 2) if recovered else None
            )
        out.append(item)
    return out


def scale_down(run: Run, series: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    """After the load ends: how long until RUNNING replicas fell to their final count."""
    profile = run.profile
    if series is None or series["t_s"].size == 0:
        return None
    load_end = profile.duration_s if profile else float(run.requests["sent_s"].max())
    t, running = series["t_s"], series["running"]
    after = t >= load_end
    if not after.any():
        return None
    final = running[after][-1]
    before = t < load_end
    at_end = float(running[before][-1]) if before.any() else None
    # The first time it sat at the final count for good (0 if it already did).
    higher = t[after & (running > final)]
    scale_down_s: float | None
    if at_end is not None and at_end <= final and not higher.size:
        scale_down_s = 0.0
    else:
        settled = t[after & (running == final)]
        if higher.size:
            settled = settled[settled > higher.max()]
        scale_down_s = round(float(settled[0] - load_end), 2) if settled.size else None
    return {
        "load_end_s": load_end,
        "replicas_at_end_of_load": at_end,
        "replicas_final": float(final),
        "scale_down_s": scale_down_s,
    }


def summarize(run: Run, slo_ms: float) -> dict[str, Any]:
    """Everything the report prints, as one JSON-able dict."""
    req = run.requests
    phases = sorted(
        set(req["phase"].tolist()), key=lambda p: float(req["sent_s"][req["phase"] == p].min())
    )
    series = target_series(run)
    t_end = float(max([req["sent_s"].max() + 0.0] + [s["t_s"].max() for s in series.values()]))
    out: dict[str, Any] = {
        "slo_ms": slo_ms,
        "overall": request_summary(req),
        "phases": {p: request_summary(req, req["phase"] == p) for p in phases if p},
        "deployments": {},
    }
    for key, s in series.items():
        out["deployments"][key] = {
            "replica_seconds": round(replica_seconds(s, 0.0, t_end), 1),
            "max_running": float(np.nanmax(s["running"])) if s["running"].size else None,
            "reaction": reaction(run, s, slo_ms),
            "scale_down": scale_down(run, s),
        }
    return out
