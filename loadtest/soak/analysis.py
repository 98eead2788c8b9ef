"""Numbers of a soak run: latency and errors per minute, and per process group the RSS
and file descriptors at the start (after a warm-up) and at the end of the load, their
least-squares slope, and whether they grew beyond noise. Pure numpy, unit-tested
without Ray.

"Growth beyond noise": the fitted growth over the analysed window, ``slope * window``,
exceeds ``max(GROWTH_REL * start, GROWTH_MIN)`` (10 MiB for RSS, 10 descriptors).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from loadtest.observe.analysis import error_label, percentile_ms

MIB = 2**20
S_PER_H = 3600.0
GROWTH_REL = 0.05
"""Growth beyond noise: more than this fraction of the start value..."""
RSS_GROWTH_MIN_MIB = 10.0
"""...and more than this many MiB (RSS)..."""
FDS_GROWTH_MIN = 10.0
"""...or descriptors (FDs)."""


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
    per hour), ``window_s`` and ``growth`` = slope * window; ``late_slope_per_h``, the
    slope of the second half alone (lower than the whole's: settling; as high: steady
    growth). None with under 2 samples."""
    sel = (t_s >= t_from_s) & (t_s <= t_to_s)
    t, v = t_s[sel], values[sel]
    if t.size < 2 or t.max() == t.min():
        return None
    slope_per_s = float(np.polyfit(t, v, 1)[0])
    late = t >= (t_from_s + t_to_s) / 2
    late_per_s = float(np.polyfit(t[late], v[late], 1)[0]) if late.sum() >= 2 else np.nan
    window_s = float(t_to_s - t_from_s)
    first, last = v[t < t_from_s + edge_s], v[t > t_to_s - edge_s]
    return {
        "start": float(first.mean() if first.size else v[0]),
        "end": float(last.mean() if last.size else v[-1]),
        "slope_per_h": slope_per_s * S_PER_H,
        "late_slope_per_h": late_per_s * S_PER_H,
        "window_s": window_s,
        "growth": slope_per_s * window_s,
    }


def verdict(tr: dict[str, float] | None, scale: float, growth_min: float) -> dict[str, Any]:
    """``trend`` in display units (values divided by ``scale``), with the noise
    ``threshold`` = max(GROWTH_REL * start, ``growth_min``) and ``grows`` (growth above it)."""
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


def _round(x: float) -> float:
    return round(x, 2) + 0.0  # + 0.0: no "-0.0" in reports


def analyse_groups(
    series: dict[str, dict[str, np.ndarray]], warmup_s: float, duration_s: float, edge_s: float
) -> dict[str, dict[str, Any]]:
    """Per group: processes (most seen in one sample), and the RSS (MiB) and FD
    ``verdict`` over [``warmup_s``, ``duration_s``] of the load's clock."""
    out = {}
    for group, s in series.items():
        t = s["t_s"]
        out[group] = {
            "processes": int(s["processes"].max()),
            "rss_mib": verdict(
                trend(t, s["rss_bytes"], warmup_s, duration_s, edge_s), MIB, RSS_GROWTH_MIN_MIB
            ),
            "fds": verdict(trend(t, s["fds"], warmup_s, duration_s, edge_s), 1.0, FDS_GROWTH_MIN),
        }
    return out


def growing(groups: dict[str, dict[str, Any]]) -> list[str]:
    """``<group> rss`` / ``<group> fds`` for every verdict that grows, in order."""
    return [
        f"{g} {kind}"
        for g, v in groups.items()
        for kind, key in (("rss", "rss_mib"), ("fds", "fds"))
        if v[key].get("grows")
    ]
