"""What a served process tree costs while it serves nothing: CPU (cores) and PSS, in all
and by group of processes (``proc_sampler.group_of``: replicas, controller, proxy,
HAProxy, raylet, GCS, dashboard modules...), read from ``/proc`` over a window."""

from __future__ import annotations

import time
from typing import Any

import psutil

from loadtest.harness.demo_process import tree_cpu_s
from loadtest.observe.proc_sampler import group_of, tree


def idle_profile(root_pid: int, window_s: float = 20.0) -> dict[str, Any]:
    """CPU over ``window_s`` of idleness and PSS at its end, of ``root_pid``'s tree:
    ``{"cores", "pss_gib", "processes", "by_group": {group: {"cores", "pss_mib",
    "processes"}}}`` (groups sorted by CPU, then PSS). A process that started during
    the window counts from zero; one that ended is left out."""
    before = tree_cpu_s(root_pid)
    time.sleep(window_s)
    after = tree_cpu_s(root_pid)
    procs = tree(root_pid)
    groups: dict[str, dict[str, float]] = {}
    for p in procs:
        try:
            group = group_of(p.name(), p.cmdline(), p.pid == root_pid)
            pss_mib = p.memory_full_info().pss / 2**20
        except psutil.Error:
            continue
        g = groups.setdefault(group, {"cores": 0.0, "pss_mib": 0.0, "processes": 0})
        g["cores"] += (after.get(p.pid, 0.0) - before.get(p.pid, 0.0)) / window_s
        g["pss_mib"] += pss_mib
        g["processes"] += 1
    by_group = {
        name: {
            "cores": round(g["cores"], 3),
            "pss_mib": round(g["pss_mib"], 1),
            "processes": int(g["processes"]),
        }
        for name, g in sorted(groups.items(), key=lambda kv: (-kv[1]["cores"], -kv[1]["pss_mib"]))
    }
    return {
        "window_s": window_s,
        "cores": round(sum(g["cores"] for g in groups.values()), 3),
        "pss_gib": round(sum(g["pss_mib"] for g in groups.values()) / 1024, 2),
        "processes": len(procs),
        "by_group": by_group,
    }
