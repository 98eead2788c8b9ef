"""How much memory a replica may use for a batch, and how much a batch row costs.

On CPU the budget is the smaller of the host's available memory and what the
container's cgroup (v2 ``memory.max``, or v1 ``memory.limit_in_bytes``) still allows:
inside a 4 GiB pod on a 64 GiB node the node's free memory is the wrong number. On a
GPU shared by fractional replicas (``num_gpus: 0.25``) a replica gets its share of the
device, not all of its free memory.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_V1 = 1 << 60
"""cgroup v1 reports "no limit" as a page-rounded 2**63-1; anything above this is none."""


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def cgroup_limit_bytes(root: Path = CGROUP_ROOT) -> tuple[int, Path] | None:
    """The container's memory limit and the file that set it (v2 ``memory.max``, else v1
    ``memory.limit_in_bytes``); None if unlimited or not in a cgroup with a limit."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        limit = _read_int(path)
        if limit is not None and limit < UNLIMITED_V1:
            return limit, path
    return None


def cgroup_available_bytes(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the container may still allocate under its memory limit; None if unlimited
    or not in a cgroup with a limit."""
    limit = _read_int(root / "memory.max")  # v2
    usage = _read_int(root / "memory.current")
    if limit is None:
        limit = _read_int(root / "memory" / "memory.limit_in_bytes")  # v1
        usage = _read_int(root / "memory" / "memory.usage_in_bytes")
        if limit is not None and limit >= UNLIMITED_V1:
            limit = None
    if limit is None:
        return None
    return max(0, limit - (usage or 0))


def free_memory_bytes(device: str, gpu_share: float = 1.0, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Memory a replica may use: on CUDA its ``gpu_share`` of the device (at most what is
    free); on CPU the host's available memory capped by the container's limit."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info()
        share = min(1.0, gpu_share) if gpu_share > 0 else 1.0
        return int(min(free, total * share))
    import psutil

    available = int(psutil.virtual_memory().available)
    in_cgroup = cgroup_available_bytes(cgroup_root)
    return available if in_cgroup is None else min(available, in_cgroup)


IN_FLIGHT_MEMORY_SHARE = 0.25
"""Share of the memory free when a replica starts (its model loaded) that its requests'
bytes may hold by default."""


def in_flight_budget_bytes(
    configured: int | None, one_request_bytes: int, available_bytes: int | None = None
) -> int:
    """A replica's budget of request bytes in flight (``http.max_in_flight_bytes``).

    Args:
        configured: The configured budget; None derives it.
        one_request_bytes: The most one request may hold (its body and decoded inputs):
            the derived budget is never below it, so a request alone is always admitted.
        available_bytes: Host memory the replica may use (default: ``free_memory_bytes``
            on CPU, capped by the container's cgroup limit).
    """
    if configured is not None:
        return configured
    if available_bytes is None:
        available_bytes = free_memory_bytes("cpu")
    return max(one_request_bytes, int(available_bytes * IN_FLIGHT_MEMORY_SHARE))


def measure_peak_bytes(run: Callable[[], Any], device: str) -> int:
    """Peak memory growth while ``run()`` executes (CUDA allocator peak, or sampled RSS)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - base)
    import psutil

    proc = psutil.Process(os.getpid())
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        run()
    finally:
        done.set()
        t.join()
    peak = max(peak, proc.memory_info().rss)
    return max(0, peak - base)
