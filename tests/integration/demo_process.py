"""``serve-app demo`` in its own process, as a user starts it: a context manager that
waits for "serve_app is up", yields the running demo, and on exit sends Ctrl-C and
checks that no process of its tree is left."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240.0


@dataclass
class Demo:
    """A running ``serve-app demo``: its process, base URL and collected output."""

    proc: subprocess.Popen[str]
    url: str
    ingress: str
    lines: list[str]


def user_environment() -> dict[str, str]:
    """This process's environment without what the session set for its own Ray: the
    demo must set its loopback and ingress variables itself."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "SERVE_APP_")) or k == "RAY_AUTH_MODE"
    }


def running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an exited child this container's init has not reaped)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (none if it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextmanager
def demo_process(config: dict[str, Any], folder: Path, *extra_args: str) -> Iterator[Demo]:
    """Run ``serve-app demo`` on the AppConfig ``config`` (written into ``folder``).

    Raises:
        AssertionError: it did not come up in ``START_TIMEOUT_S``, or left processes.
    """
    path = folder / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "serve_app.cli", "demo", "--config", str(path)]
    proc = subprocess.Popen(
        [*cmd, "--serve-config", "", *extra_args],
        cwd=REPO_ROOT,
        env=user_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    up: queue.Queue[bool] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "serve_app is up" in line:
                up.put(True)
        up.put(False)

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert up.get(timeout=START_TIMEOUT_S), "".join(lines[-40:])
        http = config["http"]
        yield Demo(proc, f"http://127.0.0.1:{http['port']}", http.get("ingress", "haproxy"), lines)
    finally:
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)  # the drain alone takes ~35 s with HAProxy (see demo.py)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=15)
        alive = [p for p in alive if running(p)]
        for p in alive:
            p.kill()
    assert not alive, f"processes left after Ctrl-C: {[(p.pid, _title(p)) for p in alive]}"


def _title(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:120]
    except psutil.Error:
        return "?"
