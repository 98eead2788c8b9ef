"""The demo's stop ends what a Ray node left behind (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys

import psutil

from serve_app.local.cluster import end_leftovers


def test_processes_still_running_after_the_grace_are_ended() -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    quick = [sys.executable, "-c", "pass"]
    stuck, done = subprocess.Popen(sleeper), subprocess.Popen(quick)
    done.wait(10)
    try:
        procs = [psutil.Process(stuck.pid)]
        assert end_leftovers(procs, grace_s=0.5) == [stuck.pid]
        assert stuck.wait(5) is not None
        assert end_leftovers(procs, grace_s=0.5) == []  # nothing left
    finally:
        stuck.kill()
        stuck.wait(5)
