"""The picture (``soak.png``) and the printed report of a soak run's numbers
(``soak_analysis``): latency per minute, RSS and file descriptors per process group,
on one time axis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loadtest.soak.analysis import DAY_H, MIB, SLOPE_Z, analyse_groups, summed

KEY_GROUPS = {"controller", "proxy", "haproxy", "raylet", "gcs", "driver", "dashboard"}
"""Drawn on their own, with every ``replica:*`` group and any group that grows; the
rest are drawn summed as "other"."""


def shown_series(
    series: dict[str, dict[str, np.ndarray]], summary: dict[str, Any]
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
    """The series drawn and their verdicts: the key groups, replicas and growing groups
    on their own, the rest summed as ``other``."""
    groups, growing = summary["groups"], {g.rsplit(" ", 1)[0] for g in summary["growing"]}
    own = [g for g in series if g in KEY_GROUPS or g.startswith("replica:") or g in growing]
    shown = {g: series[g] for g in own}
    verdicts = {g: groups[g] for g in own}
    rest = [g for g in series if g not in shown]
    if rest:
        name = "other"
        shown[name] = summed([series[g] for g in rest])
        s, memory = summary["settings"], summary["memory"]
        verdicts.update(
            analyse_groups(
                {name: shown[name]},
                s["warmup_s"],
                s["duration_s"],
                s["edge_s"],
                memory["limit_mib"] * MIB,
                usage_bytes=memory["usage_mib"] * MIB,
            )
        )
    return shown, verdicts


def _label(name: str, verdict: dict[str, Any], unit: str) -> str:
    """Legend entry: the group, its slope, and LIMIT IN <n> h when its RSS would pass
    the memory limit within a day (GROWS for FDs beyond noise)."""
    if verdict.get("grows") is None:
        return name
    label = f"{name}, {verdict['slope_per_h']:+.1f}{unit}"
    if verdict.get("fails_within_day"):
        return f"{label} LIMIT IN {verdict['hours_to_limit']:.0f} h"
    if "fails_within_day" not in verdict and verdict["grows"]:
        return f"{label} GROWS"
    return label


def plot(summary: dict[str, Any], series: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """Write four panels sharing the time axis (seconds since the load started): p50/p99
    and failures per minute; RSS per group (MiB, log); RSS change since the end of the
    warm-up (MiB); open FDs per group. The warm-up is shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = summary["settings"]
    warmup_s, duration_s = settings["warmup_s"], settings["duration_s"]
    fig, axes = plt.subplots(4, 1, figsize=(13, 11), sharex=True, constrained_layout=True)
    minutes = summary["minutes"]
    minute_s = settings["minute_s"]
    mids = np.array([m["t_start_s"] + minute_s / 2 for m in minutes])
    ax = axes[0]
    for key, color in (("p50_ms", "C0"), ("p99_ms", "C3")):
        values = np.array([np.nan if m[key] is None else m[key] for m in minutes], float)
        ax.plot(mids, values, "o-", color=color, lw=1.2, ms=4, label=f"{key[:3]} per minute")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    failed = np.array([m["failed"] for m in minutes])
    if failed.any():
        twin = ax.twinx()
        twin.bar(mids, failed, width=minute_s * 0.8, color="C3", alpha=0.25)
        twin.set_ylabel("failed requests per minute")
    ax.legend(loc="upper left", fontsize=8)
    shown, shown_groups = shown_series(series, summary)
    for i, (group, s) in enumerate(shown.items()):
        color, v = f"C{i % 10}", shown_groups[group]
        name = f"{group} ({v['processes']})"
        rss_label = _label(name, v["rss_mib"], " MiB/h")
        axes[1].plot(s["t_s"], s["rss_bytes"] / MIB, color=color, lw=1.2, label=rss_label)
        if v["rss_mib"].get("grows") is not None:
            after = s["t_s"] >= warmup_s
            delta_mib = s["rss_bytes"][after] / MIB - v["rss_mib"]["start"]
            axes[2].plot(s["t_s"][after], delta_mib, color=color, lw=1.2)
        fd_label = _label(name, v["fds"], "/h")
        axes[3].plot(s["t_s"], s["fds"], color=color, lw=1.2, label=fd_label)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("RSS (MiB, summed per group)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    axes[2].set_ylabel("RSS - RSS after warm-up (MiB)")
    axes[2].axhline(0, color="0.5", lw=0.8)
    axes[3].set_yscale("log")
    axes[3].set_ylabel("open file descriptors")
    axes[3].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    axes[3].set_xlabel("seconds since the load started")
    t_min = min([0.0, *(float(s["t_s"].min()) for s in series.values())])
    t_max = max([duration_s, *(float(s["t_s"].max()) for s in series.values())])
    for ax in axes:
        ax.axvspan(t_min, warmup_s, color="0.9", zorder=0)
        ax.axvline(duration_s, color="0.5", ls=":", lw=1)
    axes[-1].set_xlim(t_min, t_max)
    load = summary["load"]
    fig.suptitle(
        f"soak: {settings['rate_rps']:g} req/s to {settings['model']} for "
        f"{duration_s:g} s; {load['ok']}/{load['requests']} served, p99 {load['p99_ms']} ms; "
        f"grows: {', '.join(summary['growing']) or 'nothing'} (warm-up shaded)",
        fontsize=10,
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def text(summary: dict[str, Any]) -> str:
    """A short report: load, latency per minute, and a line per group."""
    s, load = summary["settings"], summary["load"]
    p99 = [m["p99_ms"] for m in summary["minutes"] if m["p99_ms"] is not None]
    failed = [m["failed"] for m in summary["minutes"]]
    lag = [m["generator_lag_p99_ms"] or 0.0 for m in summary["minutes"]]
    lines = [
        f"soak: {s['rate_rps']:g} req/s to {s['model']} for {s['duration_s']:g} s "
        f"(warm-up {s['warmup_s']:g} s, samples every {s['sample_s']:g} s)",
        f"  {load['ok']}/{load['requests']} served, {load['failed']} failed "
        f"{load['errors'] or ''}; p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms",
        f"  p99 per minute {min(p99, default=None)}..{max(p99, default=None)} ms; "
        f"generator lag p99 per minute <= {max(lag, default=0.0)} ms; "
        f"failed per minute {failed}",
        f"  {'group':34s} {'n':>2s} {'RSS start':>9s} {'end':>8s} {'MiB/h':>7s} "
        f"{'+-':>5s} {'late':>7s} {'24 h':>8s} {'FDs':>9s} {'FDs/h':>7s}",
    ]
    processes = sum(v["processes"] for v in summary["groups"].values())
    whole = {"processes": processes, "rss_mib": summary["tree"], "fds": {"grows": None}}
    rows = [*summary["groups"].items(), ("(whole tree)", whole)]
    for group, v in rows:
        r, f = v["rss_mib"], v["fds"]
        if r.get("grows") is None:
            lines.append(f"  {group:34s} {v['processes']:2d} (not in the analysed window)")
            continue
        fds = (
            ""
            if f.get("grows") is None
            else (f"{f['start']:4.0f}->{f['end']:<4.0f} {f['slope_per_h']:+7.1f}")
        )
        flags = (
            f"  RSS: LIMIT IN {r['hours_to_limit']:.0f} h" if r["fails_within_day"] else ""
        ) + ("  FDs GROW" if f.get("grows") else "")
        row = (
            f"  {group:34s} {v['processes']:2d} {r['start']:9.1f} {r['end']:8.1f} "
            f"{r['slope_per_h']:+7.1f} {r['slope_se_per_h']:5.1f} {r['late_slope_per_h']:+7.1f} "
            f"{r['projected_day']:8.0f} {fds}{flags}"
        )
        lines.append(row.rstrip())
    memory, grows = summary["memory"], summary["growing"]
    lines.append(
        "  (MiB/h: least-squares slope, +- its standard error; late: the second half's slope,"
        " below MiB/h = settling;"
    )
    lines.append(
        f"   24 h: the tree's {memory['usage_mib']:.0f} MiB now plus the slope less "
        f"{SLOPE_Z:g} s.e. for {DAY_H:g} h, against {memory['limit_mib']:.0f} MiB "
        f"({memory['limit_source']}))"
    )
    flagged = ", ".join(grows) if grows else "none"
    lines.append(f"  would not survive {DAY_H:g} h / FDs beyond noise: {flagged}")
    return "\n".join(lines)
