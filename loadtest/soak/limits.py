"""The memory limit a soak's projection is judged against: the container's (cgroup v2
``memory.max``, or v1 ``memory.limit_in_bytes``), else the machine's memory."""

from __future__ import annotations

from pathlib import Path

from serve_app.server.memory import CGROUP_ROOT, cgroup_limit_bytes


def memory_limit_bytes(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """``(limit_bytes, source)``: the cgroup's limit where one is set, else the
    machine's total memory (``source`` names which, for the report)."""
    found = cgroup_limit_bytes(root)
    if found is not None:
        return found[0], f"cgroup {found[1]}"
    import psutil

    return int(psutil.virtual_memory().total), "machine memory (no cgroup limit)"
