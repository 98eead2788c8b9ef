"""Write side of the repository: ``serve-app models publish``.

Files are copied into a hidden temporary folder next to the target while being hashed
(one pass), the manifest is written last and fsynced, and the folder is renamed into
place atomically. A reader therefore sees a version completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serve_app.errors import PublishError
from serve_app.repository.hashing import CHUNK_BYTES
from serve_app.repository.manifest import (
    MANIFEST_NAME,
    Architecture,
    FileEntry,
    Manifest,
    ModelFormat,
    ModelTask,
)
from serve_app.schema_base import validate_model_name

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".bin")


def _copy_and_hash(src: Path, dst: Path, on_bytes: Callable[[int], None] | None) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb") as fout:
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
            if on_bytes is not None:
                on_bytes(n)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


def detect_format(src: Path) -> tuple[ModelFormat, ModelTask]:
    """Guess the format of a source: a folder with ``model.onnx`` is ONNX, a folder with
    ``config.json`` a Hugging Face model, a ``.safetensors`` file a state dict."""
    if src.is_dir():
        if (src / "model.onnx").is_file():
            return "onnx", "sentence-embedding"
        if (src / "config.json").is_file():
            return "huggingface", "sentence-embedding"
        raise PublishError(f"cannot tell the format of folder {src}: no config.json or model.onnx")
    if src.suffix == ".safetensors":
        return "safetensors", "tensor"
    raise PublishError(f"cannot tell the format of {src}: expected a folder or a .safetensors file")


def _source_files(src: Path) -> list[tuple[Path, str]]:
    if src.is_file():
        return [(src, src.name)]
    files = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            files.append((p, rel))
    if not files:
        raise PublishError(f"source {src} holds no files")
    return files


def next_version(model_dir: Path) -> int:
    """Highest existing integer version + 1 (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    return max(existing, default=0) + 1


def publish(
    src: str | Path,
    root: str | Path,
    name: str,
    *,
    version: int | None = None,
    format: ModelFormat | None = None,
    task: ModelTask | None = None,
    architecture: Architecture | None = None,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    workers: int = 4,
    progress: bool = False,
) -> Path:
    """Publish ``src`` as ``<root>/<name>/<version>`` and return that folder.

    Raises:
        PublishError: bad name, missing source, existing version, or a
            ``safetensors`` source without an architecture.
    """
    try:
        validate_model_name(name)
    except ValueError as e:
        raise PublishError(str(e)) from None
    src = Path(src)
    if not src.exists():
        raise PublishError(f"source {src} does not exist")
    detected_format, detected_task = detect_format(src)
    format = format or detected_format
    task = task or detected_task
    if format == "safetensors" and architecture is None:
        raise PublishError("a safetensors state dict needs a declared architecture")

    root = Path(root)
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if version < 1:
        raise PublishError(f"version must be >= 1, got {version}")
    target = model_dir / str(version)
    if target.exists():
        raise PublishError(f"model {name!r} version {version} already exists at {target}")

    files = _source_files(src)
    total_bytes = sum(p.stat().st_size for p, _ in files)
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{name}/{version}")
    try:
        on_bytes = bar.update if bar is not None else None
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
            digests = list(pool.map(lambda f: _copy_and_hash(f[0], tmp / f[1], on_bytes), files))
        entries = [
            FileEntry(path=rel, size_bytes=(tmp / rel).stat().st_size, sha256=digest)
            for (_, rel), digest in zip(files, digests, strict=True)
        ]
        manifest = Manifest(
            name=name,
            version=version,
            format=format,
            task=task,
            architecture=architecture,
            weights=[e.path for e in entries if e.path.endswith(WEIGHT_SUFFIXES)],
            files=entries,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source or str(src.resolve()),
            metadata=metadata or {},
        )
        manifest_path = tmp / MANIFEST_NAME
        with open(manifest_path, "w", encoding="utf-8") as f:
            json.dump(manifest.model_dump(mode="json"), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():  # another publisher won the race
            raise PublishError(f"model {name!r} version {version} already exists at {target}")
        os.rename(tmp, target)
        dir_fd = os.open(model_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return target
