"""Shared helpers of the load tests and benchmarks: free ports, waiting, and the facts
about the machine and versions that every committed result carries."""

from __future__ import annotations

import os
import platform
import socket
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
