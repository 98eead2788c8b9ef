"""``serve-app loadtest report RESULTS``: the numbers (printed, ``report.json``,
``report.md``) and one picture (``report.png``): arrival rate and throughput, latency
percentiles, and replicas over time, on one time axis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.observe.analysis import Run, load_run, summarize, target_series

BIN_S = 1.0
"""Width of the time bins of the picture."""


def _binned(
    t: np.ndarray, values: np.ndarray | None, edges: np.ndarray, q: float | None
) -> np.ndarray:
    """Per bin: count (``values`` None) or the ``q``-th percentile of ``values``."""
    idx = np.digitize(t, edges) - 1
    out = np.full(edges.size - 1, np.nan if q is not None else 0.0)
    for i in range(edges.size - 1):
        sel = idx == i
        if values is None:
            out[i] = sel.sum()
        elif sel.any() and q is not None:
            out[i] = np.percentile(values[sel], q)
    return out


def plot(run: Run, summary: dict[str, Any], path: Path, title: str = "") -> Path:
    """Write the three-panel picture of ``run`` to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    req = run.requests
    series = target_series(run)
    t_end = max(
        [float(np.nanmax(req["sent_s"] + req["latency_s"]))]
        + [float(s["t_s"].max()) for s in series.values()]
    )
    edges = np.arange(0.0, t_end + BIN_S, BIN_S)
    mids = edges[:-1] + BIN_S / 2
    ok = req["status"] == 200
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, constrained_layout=True)
    ax = axes[0]
    if run.profile is not None:
        knots = np.array(run.profile.knots)
        ax.plot(knots[:, 0], knots[:, 1], color="0.6", lw=1.2, ls="--", label="scheduled rate")
    ax.plot(
        mids, _binned(req["sent_s"], None, edges, None) / BIN_S, color="C0", lw=1, label="sent/s"
    )
    done_t = (req["sent_s"] + req["latency_s"])[ok]
    ax.plot(mids, _binned(done_t, None, edges, None) / BIN_S, color="C2", lw=1, label="served/s")
    failed_t = (req["sent_s"] + np.nan_to_num(req["latency_s"]))[~ok]
    if failed_t.size:
        ax.bar(
            mids,
            _binned(failed_t, None, edges, None) / BIN_S,
            width=BIN_S,
            color="C3",
            label="failed/s",
        )
    ax.set_ylabel("requests / s")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    sent_ok, lat_ok = req["sent_s"][ok], req["latency_s"][ok] * 1e3
    for q, color in ((50, "C0"), (99, "C3")):
        ax.plot(mids, _binned(sent_ok, lat_ok, edges, q), color=color, lw=1, label=f"p{q}")
    ax.axhline(summary["slo_ms"], color="0.4", ls=":", lw=1, label=f"SLO {summary['slo_ms']:g} ms")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, by send time)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    for i, (key, s) in enumerate(series.items()):
        color = f"C{i}"
        ax.step(s["t_s"], s["running"], where="post", color=color, lw=1.5, label=f"{key} running")
        ax.step(
            s["t_s"],
            s["target_replicas"],
            where="post",
            color=color,
            lw=1,
            ls="--",
            label=f"{key} target",
        )
    ax.set_ylabel("replicas")
    ax.set_xlabel("seconds since the load started")
    if series:
        ax.legend(loc="upper left", fontsize=8)
        twin = ax.twinx()
        for i, s in enumerate(series.values()):
            ongoing = np.nan_to_num(s["processing"]) + np.nan_to_num(s["queued"])
            twin.plot(s["t_s"], ongoing, color=f"C{i}", lw=0.7, alpha=0.5)
        twin.set_ylabel("ongoing requests (thin)")
    o = summary["overall"]
    fig.suptitle(
        f"{title}  {o['ok']}/{o['requests']} served, p99 {o['p99_ms']} ms, "
        f"{o['throughput_rps']} req/s",
        fontsize=10,
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    """The summary as a Markdown page."""
    machine = settings.get("machine", {})
    kind = (settings.get("profile") or {}).get("kind", "sweep")
    lines = [
        f"# Load run: {settings.get('model')} ({kind})",
        "",
        f"{settings.get('note', '')}".strip(),
        "",
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gib')} GiB; ray {machine.get('ray')}; "
        f"{machine.get('date')}.",
        "",
        "| phase | requests | ok | failed | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("all", summary["overall"])] + list(summary["phases"].items())
    for name, s in rows:
        lines.append(
            f"| {name} | {s['requests']} | {s['ok']} | {s['failed']} | {s['throughput_rps']} | "
            f"{s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | {s['errors'] or ''} |"
        )
    for key, d in summary["deployments"].items():
        lines += [
            "",
            f"**{key}**: {d['replica_seconds']} replica-seconds, "
            f"at most {d['max_running']} running.",
        ]
        for r in d["reaction"]:
            lines.append(
                f"- step at {r['at_s']:g} s ({r['rate_before']:g} -> {r['rate_after']:g} req/s): "
                f"replicas {r['replicas_before']} -> {r['replicas_target']} in "
                f"{r['replicas_reached_s']} s; "
                f"p99 under SLO after {r.get('p99_under_slo_s', '-')} s"
            )
        if d["scale_down"]:
            sd = d["scale_down"]
            lines.append(
                f"- after the load: {sd['replicas_at_end_of_load']} -> {sd['replicas_final']} "
                f"replicas in {sd['scale_down_s']} s"
            )
    return "\n".join(lines) + "\n"


def report(folder: Path, slo_ms: float, title: str = "") -> dict[str, Any]:
    """Summarize ``folder``, write ``report.json``, ``report.md`` and ``report.png``."""
    run = load_run(folder)
    summary = summarize(run, slo_ms)
    (folder / "report.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "report.md").write_text(markdown(summary, run.settings))
    plot(run, summary, folder / "report.png", title or folder.name)
    return summary


def compare_plot(
    runs: dict[str, Run], summaries: dict[str, dict[str, Any]], path: Path, bin_s: float = 5.0
) -> Path:
    """Several runs of one profile on one time axis: served rate, p99 per ``bin_s`` and
    running replicas, with replica-seconds and failures in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True, constrained_layout=True)
    first = next(iter(runs.values()))
    if first.profile is not None:
        knots = np.array(first.profile.knots)
        axes[0].plot(knots[:, 0], knots[:, 1], color="0.6", ls="--", lw=1.2, label="offered rate")
    slo = next(iter(summaries.values()))["slo_ms"]
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i}"
        req, s = run.requests, summaries[name]
        t_end = float(np.nanmax(req["sent_s"] + np.nan_to_num(req["latency_s"])))
        edges = np.arange(0.0, t_end + bin_s, bin_s)
        mids = edges[:-1] + bin_s / 2
        ok = req["status"] == 200
        done = (req["sent_s"] + req["latency_s"])[ok]
        axes[0].plot(
            mids,
            _binned(done, None, edges, None) / bin_s,
            color=color,
            lw=1,
            label=f"{name} served/s",
        )
        p99 = _binned(req["sent_s"][ok], req["latency_s"][ok] * 1e3, edges, 99)
        o = s["overall"]
        axes[1].plot(
            mids,
            p99,
            color=color,
            lw=1.2,
            label=f"{name}: p99 {o['p99_ms']} ms, {o['failed']} failed",
        )
        for key, d in s["deployments"].items():
            series = target_series(run)[key]
            axes[2].step(
                series["t_s"],
                series["running"],
                where="post",
                color=color,
                lw=1.5,
                label=f"{name}: {d['replica_seconds']:.0f} replica-s",
            )
    axes[1].axhline(slo, color="0.4", ls=":", lw=1, label=f"SLO {slo:g} ms")
    axes[1].set_yscale("log")
    axes[0].set_ylabel("requests / s")
    axes[1].set_ylabel(f"p99 ms per {bin_s:g} s")
    axes[2].set_ylabel("running replicas")
    axes[2].set_xlabel("seconds since the load started")
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
