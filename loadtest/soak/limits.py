"""The memory limit a soak's projection is judged against: the container's (cgroup v2
``memory.max``, or v1 ``memory.limit_in_bytes``), else the machine's memory."""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_V1_BYTES = 1 << 60
"""cgroup v1 reports "no limit" as a page-rounded 2**63-1; anything above this is none."""


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    value = int(text)
    return None if value >= UNLIMITED_V1_BYTES else value


def memory_limit_bytes(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """``(limit_bytes, source)``: the cgroup's limit where one is set, else the
    machine's total memory (``source`` names which, for the report)."""
    for relative in ("memory.max", "memory/memory.limit_in_bytes"):
        limit = _read_bytes(root / relative)
        if limit is not None:
            return limit, f"cgroup {root / relative}"
    import psutil

    return int(psutil.virtual_memory().total), "machine memory (no cgroup limit)"
