"""Processes of one run's private cluster, found by marker or temp dir (no Ray import):
the test and the entry point clean up exactly these, never ``ray stop``."""

from __future__ import annotations

import os
import tempfile
from typing import Any

MARKER_ENV = "SERVE_APP_NAS_RUN_ID"
"""Set in the environment of ``ray start``; every process of the cluster inherits it."""


def cluster_temp_dir(run_id: str) -> str:
    """Ray temp dir of a run: short, since Ray puts unix sockets under it."""
    return os.path.join(tempfile.gettempdir(), f"nas_{run_id}")


def find_cluster_processes(run_id: str) -> list[Any]:
    """Processes of the run's cluster: those with its marker or its temp dir on the command
    line, and their descendants (Ray's workers rename themselves, hiding both)."""
    import psutil  # vendored by Ray; importable once ray is imported

    temp_dir, me = cluster_temp_dir(run_id), os.getpid()
    found: dict[int, Any] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.pid != me and (temp_dir in cmdline or p.environ().get(MARKER_ENV) == run_id):
                found[p.pid] = p
                found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(me, None)
    return list(found.values())


def kill_cluster_processes(run_id: str, grace_s: float = 8.0) -> int:
    """SIGTERM the run's processes, SIGKILL what is left after ``grace_s``; returns how
    many there were. Only this run's processes, by pid: never ``ray stop``."""
    from serve_app.local.cluster import terminate_processes

    procs = find_cluster_processes(run_id)
    terminate_processes(procs, timeout_s=grace_s)
    return len(procs)
