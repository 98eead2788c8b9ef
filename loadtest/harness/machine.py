"""Shared helpers of the load tests and benchmarks: free ports, waiting, and the facts
about the machine and versions that every committed result carries."""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout_s: float, what: str, period_s: float = 0.25) -> None:
    """Poll ``pred`` until true.

    Raises:
        TimeoutError: naming ``what``, after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(period_s)


def machine_info() -> dict[str, Any]:
    """CPU, memory, OS, Python and the versions that matter, plus the date (UTC)."""
    import psutil

    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for module in ("ray", "torch", "onnxruntime", "serve_app", "aiohttp"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is a fact, not an error
            info[module] = None
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
    except OSError:
        info["cpu_model"] = None
    return info


class Periodic:
    """Calls ``fn`` every ``period_s`` (from the start of each call) in a daemon thread,
    from ``start()`` (first call at once) until ``stop()``: the loop of the samplers."""

    def __init__(self, name: str, period_s: float, fn: Callable[[], None]) -> None:
        self.period_s = period_s
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the thread (bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._fn()
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))


def machine_line(m: dict[str, Any], *packages: str) -> str:
    """``Machine: 2 CPUs (model), 23.5 GiB, Ray x, <package> y.`` of a ``machine_info``
    dict, for the reports' headers."""
    versions = "".join(f", {name} {m[name]}" for name in packages)
    return (
        f"Machine: {m['cpus']} CPUs ({m.get('cpu_model')}), {m['memory_gib']} GiB, "
        f"Ray {m['ray']}{versions}."
    )
