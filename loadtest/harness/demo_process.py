"""``serve-app demo`` in its own process, as a user starts it: start it on an AppConfig,
wait for "serve_app is up", and stop it with Ctrl-C, checking that no process of its
tree is left.

The same API as ``tests/integration/demo_process.py`` (``Demo``, ``demo_process``), here
in the package so benchmarks can use it without importing the test suite; that module
can become a re-export of this one.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
START_STALL_S = 300.0
"""How long a starting demo may print nothing before it counts as stuck. The demo prints
a line whenever a replica changes state and gives up itself after 180 s without one
(``serve_app.local.cluster.DEFAULT_STALL_S``); this covers Ray's own start, which prints nothing."""
STOP_TIMEOUT_S = 120.0
"""A stop with requests in flight drains for up to ~55 s with HAProxy
(``serve_app.local.demo.drain_budget_s``); an idle demo stops in seconds."""


@dataclass
class Demo:
    """A running ``serve-app demo``: its process, base URL and collected output."""

    proc: subprocess.Popen[str]
    url: str
    ingress: str
    lines: list[str]


def user_environment() -> dict[str, str]:
    """This process's environment without what a caller set for its own Ray: the demo
    must set its loopback and ingress variables itself."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "SERVE_APP_")) or k == "RAY_AUTH_MODE"
    }


def running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an exited child this container's init has not reaped)."""
    try:
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (none if it is gone)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``pid`` and each of its descendants, by pid."""
    out = {}
    for p in [psutil.Process(pid), *descendants(pid)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds a process tree used between two ``tree_cpu_s`` readings (a process
    that started in between counts from zero)."""
    return sum(v - before.get(k, 0.0) for k, v in after.items())


def start_demo(
    config: dict[str, Any],
    folder: Path,
    *extra_args: str,
    stall_s: float = START_STALL_S,
    extra_env: dict[str, str] | None = None,
) -> Demo:
    """Start ``serve-app demo`` on the AppConfig ``config`` (written to
    ``folder/app.yaml``) and wait until it prints "serve_app is up", for as long as it
    keeps reporting progress (a slow machine takes longer, a stuck one stops printing).

    Raises:
        TimeoutError: it exited, or printed nothing for ``stall_s``, before it came up
            (with its last output); the process is stopped first.
    """
    path = folder / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "serve_app.cli", "demo", "--config", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--serve-config", "", *extra_args],
        cwd=REPO_ROOT,
        env=user_environment() | (extra_env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    events: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            events.put(line)
        events.put(None)

    threading.Thread(target=pump, daemon=True).start()
    http = config["http"]
    demo = Demo(proc, f"http://127.0.0.1:{http['port']}", http.get("ingress", "haproxy"), lines)
    t0 = time.monotonic()
    while True:
        try:
            line = events.get(timeout=stall_s)
        except queue.Empty:
            why = f"printed nothing for {stall_s:.0f} s"
            break
        if line is None:
            why = f"exited with {proc.wait()}"
            break
        if "serve_app is up" in line:
            return demo
    stop_demo(demo)
    raise TimeoutError(
        f"serve-app demo {why} after {time.monotonic() - t0:.0f} s, before it came up:\n"
        + "".join(lines[-40:])
    )


def title(p: psutil.Process) -> str:
    """The command line of ``p`` (Ray workers: their process title), cut to 120 chars."""
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"


def stop_demo(demo: Demo, stop_timeout_s: float = STOP_TIMEOUT_S) -> list[tuple[int, str]]:
    """Ctrl-C the demo (SIGKILL its group after ``stop_timeout_s``); returns (pid, title)
    of each process of its tree still running 30 s later, which are then killed."""
    tree = descendants(demo.proc.pid)
    demo.proc.send_signal(signal.SIGINT)
    try:
        demo.proc.wait(stop_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(demo.proc.pid, signal.SIGKILL)
        demo.proc.wait(10)
    # Ray's agents exit after the raylet; on two busy cores that took over 15 s once.
    _, alive = psutil.wait_procs(tree, timeout=30)
    left = [(p.pid, title(p)) for p in alive if running(p)]
    for p in alive:
        if running(p):
            p.kill()
    return left


@contextmanager
def demo_process(
    config: dict[str, Any],
    folder: Path,
    *extra_args: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Demo]:
    """Run ``serve-app demo`` on the AppConfig ``config`` (written into ``folder``), with
    ``extra_env`` added to the user's environment (e.g. a Ray setting to compare).

    Raises:
        AssertionError: it did not come up (it exited, or stalled for ``START_STALL_S``),
            or left processes.
    """
    try:
        demo = start_demo(config, folder, *extra_args, extra_env=extra_env)
    except TimeoutError as e:
        raise AssertionError(str(e)) from e
    try:
        yield demo
    finally:
        left = stop_demo(demo)
    assert not left, f"processes left after Ctrl-C: {left}; the demo's last output:\n" + "".join(
        demo.lines[-25:]
    )
