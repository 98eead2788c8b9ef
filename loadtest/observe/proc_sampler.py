"""Memory and file descriptors of a process tree (a ``serve-app demo`` and everything
below it), sampled with psutil every few seconds in a thread.

One row per process per sample: its group (``group_of``), RSS, open file descriptors and
threads, at a Unix time, so rows line up with a load run whose ``wall_start_s`` is in its
``run.json``. A process that vanishes between listing and reading is skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import pyarrow as pa

from loadtest.harness.machine import Periodic

PROCESS_SAMPLES_FILE = "process_samples.parquet"

COLUMNS = ["wall_s", "pid", "ppid", "group", "title", "rss_bytes", "fds", "threads"]

SERVE_REPLICA_PREFIX = "ray::ServeReplica:"
RAY_HELPER_SCRIPTS = {
    "dashboard.py": "dashboard",
    "agent.py": "dashboard-agent",
    "runtime_env/agent/main.py": "runtime-env-agent",
    "log_monitor.py": "log-monitor",
    "monitor.py": "monitor",
}
"""Python helpers Ray starts next to raylet and GCS: script (end of path) -> group."""


def group_of(name: str, cmdline: list[str], is_root: bool = False) -> str:
    """The group a process belongs to, from its name and command line (Ray workers set
    their process title, e.g. ``ray::ServeReplica:minilm:ModelDeployment``, as argv[0]).

    Groups: ``replica:<app>:<deployment>``, ``controller``, ``proxy`` (Serve's proxy
    actors, HAProxyManager included), ``haproxy``, ``raylet``, ``gcs``, ``driver`` (the
    root: the demo process), Ray's Python helpers (``RAY_HELPER_SCRIPTS``),
    ``dashboard-modules``, ``multiprocessing-helpers``, ``ray-idle-worker``,
    ``ray::<title>`` for other Ray workers, else the process name.
    """
    title = " ".join(cmdline) if cmdline else name
    head = cmdline[0] if cmdline else name
    if is_root:
        return "driver"
    if head.startswith(SERVE_REPLICA_PREFIX):
        return "replica:" + head[len(SERVE_REPLICA_PREFIX) :].split()[0]
    if head.startswith("ray::ServeController"):
        return "controller"
    if head.startswith("ray::") and "Proxy" in head:
        return "proxy"
    if head.startswith("ray::IDLE"):
        return "ray-idle-worker"
    if head.startswith("ray::"):
        return head.split()[0]
    if head.startswith("ray-dashboard-"):  # the dashboard's module subprocesses
        return "dashboard-modules"
    if any("from multiprocessing." in arg for arg in cmdline[1:4]):
        return "multiprocessing-helpers"
    base = os.path.basename(head)
    if name == "haproxy" or base == "haproxy":
        return "haproxy"
    if name == "raylet" or base == "raylet":
        return "raylet"
    if name == "gcs_server" or base == "gcs_server":
        return "gcs"
    for script, group in RAY_HELPER_SCRIPTS.items():
        if any(arg.endswith("/" + script) for arg in cmdline[1:3]):
            return group
    return name or title[:40]


def tree(root_pid: int) -> list[psutil.Process]:
    """``root_pid`` and every process below it (empty if it is gone)."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample_tree(root_pid: int, wall_s: float | None = None) -> list[dict[str, Any]]:
    """One row per live process of ``root_pid``'s tree (see ``COLUMNS``)."""
    wall_s = time.time() if wall_s is None else wall_s
    rows = []
    for p in tree(root_pid):
        try:
            with p.oneshot():
                cmdline = p.cmdline()
                name = p.name()
                rows.append(
                    {
                        "wall_s": wall_s,
                        "pid": p.pid,
                        "ppid": p.ppid(),
                        "group": group_of(name, cmdline, p.pid == root_pid),
                        "title": " ".join(cmdline)[:200] or name,
                        "rss_bytes": int(p.memory_info().rss),
                        "fds": int(p.num_fds()),
                        "threads": int(p.num_threads()),
                    }
                )
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return rows


@dataclass
class ProcessSampler:
    """Samples ``root_pid``'s tree every ``period_s`` from ``start()`` to ``stop()``."""

    root_pid: int
    period_s: float = 5.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = Periodic(
            "proc-sampler", self.period_s, lambda: self.rows.extend(sample_tree(self.root_pid))
        )

    def start(self) -> None:
        """Start sampling in a thread (the first sample is taken at once)."""
        self._loop.start()

    def stop(self) -> None:
        """Stop and wait for the thread (bounded)."""
        self._loop.stop()

    def table(self) -> pa.Table:
        """The samples as a table with ``COLUMNS``."""
        return pa.table({c: [row.get(c) for row in self.rows] for c in COLUMNS})
