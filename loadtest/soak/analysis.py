"""Numbers of a soak run: latency and errors per minute, and per process group the RSS
and file descriptors at the start (after a warm-up) and at the end of the load, their
least-squares slope, and whether they grew. Pure numpy, unit-tested without Ray.

RSS is judged by what a day-long run would survive: a group is flagged when the
container's memory, at its current usage (the whole tree's RSS at the end of the
window) plus the group's growth for ``DAY_H`` hours, would pass the container's memory
limit. The growth counted is the least-squares slope less ``SLOPE_Z`` standard errors
(``sure_slope_per_h``), so sampling noise on a flat series projects no growth; a short
run therefore flags only leaks it can tell apart from noise.

File descriptors keep the noise rule: the fitted growth over the window,
``slope * window``, exceeds ``max(GROWTH_REL * start, FDS_GROWTH_MIN)``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from loadtest.observe.analysis import error_label, percentile_ms

MIB = 2**20
S_PER_H = 3600.0
GROWTH_REL = 0.05
"""FD growth beyond noise: more than this fraction of the start value..."""
FDS_GROWTH_MIN = 10.0
"""...and more than this many descriptors."""
DAY_H = 24.0
"""RSS: the run length a deployment must survive at the measured growth."""
SLOPE_Z = 2.0
"""RSS: standard errors taken off the fitted slope before projecting it (about a 97.5%
one-sided lower bound for independent noise)."""
NEGLIGIBLE_MIB_PER_H = 0.01
"""RSS: a sure slope below this (the reports' precision; a flat series' float error) is 0."""


def per_minute(req: dict[str, np.ndarray], minute_s: float = 60.0) -> list[dict[str, Any]]:
    """Requests by the minute they were scheduled in (from the load's start; a request
    sent late past the end of the load still counts in the last minute): count, served,
    failed, errors by label, p50/p99 of the served in ms (None without one), and the p99
    of the generator's own lag (send time - schedule: the client's share of a slow minute)."""
    scheduled = req["scheduled_s"]
    if scheduled.size == 0:
        return []
    minute = np.floor(scheduled / minute_s).astype(int)
    out = []
    for m in range(int(minute.max()) + 1):
        sel = minute == m
        status, latency = req["status"][sel], req["latency_s"][sel]
        lag = req["sent_s"][sel] - scheduled[sel]
        ok = status == 200
        errors = Counter(
            error_label(int(s), str(e))
            for s, e in zip(status[~ok], req["error"][sel][~ok], strict=True)
        )
        out.append(
            {
                "minute": m,
                "t_start_s": m * minute_s,
                "requests": int(sel.sum()),
                "ok": int(ok.sum()),
                "failed": int((~ok).sum()),
                "errors": dict(sorted(errors.items())),
                "p50_ms": percentile_ms(latency[ok], 50),
                "p99_ms": percentile_ms(latency[ok], 99),
                "generator_lag_p99_ms": percentile_ms(lag[~np.isnan(lag)], 99),
            }
        )
    return out


def group_series(
    proc: dict[str, np.ndarray], wall_start_s: float
) -> dict[str, dict[str, np.ndarray]]:
    """Process rows (``proc_sampler.COLUMNS``) -> per group, per sample time: ``t_s``
    (seconds from ``wall_start_s``), summed ``rss_bytes`` and ``fds``, and the number of
    ``processes`` of the group in that sample. Time-ordered float arrays."""
    out: dict[str, dict[str, np.ndarray]] = {}
    groups = np.asarray(proc["group"], dtype=object)
    for group in sorted(set(groups.tolist())):
        sel = groups == group
        wall = np.asarray(proc["wall_s"], float)[sel]
        times = np.unique(wall)
        idx = np.searchsorted(times, wall)
        rss = np.bincount(idx, np.asarray(proc["rss_bytes"], float)[sel], times.size)
        fds = np.bincount(idx, np.asarray(proc["fds"], float)[sel], times.size)
        count = np.bincount(idx, minlength=times.size).astype(float)
        out[group] = {"t_s": times - wall_start_s, "rss_bytes": rss, "fds": fds, "processes": count}
    return out


def summed(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several groups' series as one (summed at each sample time any of them has)."""
    times = np.unique(np.concatenate([p["t_s"] for p in parts]))
    out = {"t_s": times}
    for key in ("rss_bytes", "fds", "processes"):
        total = np.zeros(times.size)
        for p in parts:
            np.add.at(total, np.searchsorted(times, p["t_s"]), p[key])
        out[key] = total
    return out


def trend(
    t_s: np.ndarray, values: np.ndarray, t_from_s: float, t_to_s: float, edge_s: float
) -> dict[str, float] | None:
    """Over the samples in [``t_from_s``, ``t_to_s``]: ``start`` and ``end`` (means of the
    samples in the first and last ``edge_s``), the least-squares ``slope_per_h`` (units
    per hour) and its standard error ``slope_se_per_h`` (nan with under 3 samples),
    ``window_s`` and ``growth`` = slope * window; ``late_slope_per_h``, the slope of the
    second half alone (lower than the whole's: settling; as high: steady growth). None
    with under 2 samples."""
    sel = (t_s >= t_from_s) & (t_s <= t_to_s)
    t, v = t_s[sel], values[sel]
    if t.size < 2 or t.max() == t.min():
        return None
    slope_per_s, intercept = (float(x) for x in np.polyfit(t, v, 1))
    se_per_s = np.nan
    if t.size >= 3:
        residuals = v - (slope_per_s * t + intercept)
        spread = float(((t - t.mean()) ** 2).sum())
        se_per_s = float(np.sqrt((residuals**2).sum() / (t.size - 2) / spread))
    late = t >= (t_from_s + t_to_s) / 2
    late_per_s = float(np.polyfit(t[late], v[late], 1)[0]) if late.sum() >= 2 else np.nan
    window_s = float(t_to_s - t_from_s)
    first, last = v[t < t_from_s + edge_s], v[t > t_to_s - edge_s]
    return {
        "start": float(first.mean() if first.size else v[0]),
        "end": float(last.mean() if last.size else v[-1]),
        "slope_per_h": slope_per_s * S_PER_H,
        "slope_se_per_h": se_per_s * S_PER_H,
        "late_slope_per_h": late_per_s * S_PER_H,
        "window_s": window_s,
        "growth": slope_per_s * window_s,
    }


def verdict(tr: dict[str, float] | None, scale: float, growth_min: float) -> dict[str, Any]:
    """``trend`` in display units (values divided by ``scale``), with the noise
    ``threshold`` = max(GROWTH_REL * start, ``growth_min``) and ``grows`` (growth above
    it). The rule for file descriptors."""
    if tr is None:
        return {"grows": None}
    start, growth = tr["start"] / scale, tr["growth"] / scale
    threshold = max(GROWTH_REL * start, growth_min)
    return {
        "start": _round(start),
        "end": _round(tr["end"] / scale),
        "slope_per_h": _round(tr["slope_per_h"] / scale),
        "late_slope_per_h": _round(tr["late_slope_per_h"] / scale),
        "growth": _round(growth),
        "threshold": _round(threshold),
        "grows": bool(growth > threshold),
    }


def sure_slope(slope_per_h: float, slope_se_per_h: float) -> float:
    """The growth per hour a projection counts: the slope less ``SLOPE_Z`` standard
    errors, never below 0 (no standard error: the slope as fitted)."""
    se = 0.0 if np.isnan(slope_se_per_h) else slope_se_per_h
    return max(0.0, slope_per_h - SLOPE_Z * se)


def day_verdict(
    tr: dict[str, float] | None, usage_bytes: float, limit_bytes: float
) -> dict[str, Any]:
    """RSS ``trend`` of one group in MiB, projected over ``DAY_H`` hours.

    Args:
        tr: The group's RSS ``trend`` (bytes), or None when it was not in the window.
        usage_bytes: The container's current usage (the tree's RSS at the window's end).
        limit_bytes: The container's memory limit.

    Returns:
        ``start``, ``end``, ``slope_per_h`` (MiB/h) with ``slope_se_per_h``,
        ``late_slope_per_h``, ``sure_slope_per_h`` (what is projected),
        ``projected_day`` (usage + sure slope x ``DAY_H``), ``limit``, ``hours_to_limit``
        (None without growth), ``grows`` (sure slope above 0) and ``fails_within_day``
        (projected above the limit); ``{"grows": None}`` when ``tr`` is None.
    """
    if tr is None:
        return {"grows": None}
    sure_per_h = sure_slope(tr["slope_per_h"], tr["slope_se_per_h"])
    if sure_per_h < NEGLIGIBLE_MIB_PER_H * MIB:
        sure_per_h = 0.0
    projected = usage_bytes + sure_per_h * DAY_H
    hours = (limit_bytes - usage_bytes) / sure_per_h if sure_per_h > 0 else None
    return {
        "start": _round(tr["start"] / MIB),
        "end": _round(tr["end"] / MIB),
        "slope_per_h": _round(tr["slope_per_h"] / MIB),
        "slope_se_per_h": _round(tr["slope_se_per_h"] / MIB),
        "late_slope_per_h": _round(tr["late_slope_per_h"] / MIB),
        "sure_slope_per_h": _round(sure_per_h / MIB),
        "projected_day": _round(projected / MIB),
        "limit": _round(limit_bytes / MIB),
        "hours_to_limit": None if hours is None else _round(max(0.0, hours)),
        "grows": bool(sure_per_h > 0),
        "fails_within_day": bool(projected > limit_bytes),
    }


def _round(x: float) -> float:
    return round(x, 2) + 0.0  # + 0.0: no "-0.0" in reports


def analyse_groups(
    series: dict[str, dict[str, np.ndarray]],
    warmup_s: float,
    duration_s: float,
    edge_s: float,
    limit_bytes: float,
    usage_bytes: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Per group: processes (most seen in one sample), the RSS ``day_verdict`` (MiB)
    against ``limit_bytes`` and the FD ``verdict`` over [``warmup_s``, ``duration_s``]
    of the load's clock. ``usage_bytes``: the container's current usage (default: the
    sum of every group's RSS at the window's end)."""
    trends = {
        g: trend(s["t_s"], s["rss_bytes"], warmup_s, duration_s, edge_s) for g, s in series.items()
    }
    if usage_bytes is None:
        usage_bytes = sum(tr["end"] for tr in trends.values() if tr is not None)
    out = {}
    for group, s in series.items():
        t = s["t_s"]
        out[group] = {
            "processes": int(s["processes"].max()),
            "rss_mib": day_verdict(trends[group], usage_bytes, limit_bytes),
            "fds": verdict(trend(t, s["fds"], warmup_s, duration_s, edge_s), 1.0, FDS_GROWTH_MIN),
        }
    return out


def growing(groups: dict[str, dict[str, Any]]) -> list[str]:
    """``<group> rss`` for every group whose RSS growth would pass the memory limit
    within ``DAY_H`` hours, ``<group> fds`` for every FD verdict that grows; in order."""
    out = []
    for g, v in groups.items():
        if v["rss_mib"].get("fails_within_day"):
            out.append(f"{g} rss")
        if v["fds"].get("grows"):
            out.append(f"{g} fds")
    return out
