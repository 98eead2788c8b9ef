"""sha256 of files, several at once (hashlib releases the GIL on large updates)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHUNK_BYTES = 8 * 1024 * 1024


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Return the hex sha256 of ``path``, reading in 8 MiB chunks into one buffer."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return h.hexdigest()


def sha256_files(
    paths: Iterable[Path], workers: int = 4, on_bytes: Callable[[int], None] | None = None
) -> dict[Path, str]:
    """Hash files in parallel; returns ``{path: hexdigest}``. Errors propagate."""
    paths = list(paths)
    if len(paths) <= 1 or workers <= 1:
        return {p: sha256_file(p, on_bytes) for p in paths}
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        digests = list(pool.map(lambda p: sha256_file(p, on_bytes), paths))
    return dict(zip(paths, digests, strict=True))
