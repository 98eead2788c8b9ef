"""Read side of the model repository: resolve a version, verify it, hand out its path.

Never writes to the repository (it is a read-only volume in a cluster). Every failure
is a typed ``RepositoryError`` whose message names model, version and file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from serve_app.errors import (
    IntegrityError,
    ManifestError,
    ModelVersionNotFound,
    RepositoryNotMounted,
)
from serve_app.repository.hashing import sha256_files
from serve_app.repository.manifest import MANIFEST_NAME, Manifest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedVersion:
    """A version whose files all matched the manifest."""

    path: Path
    manifest: Manifest
    verify_s: float

    @property
    def name(self) -> str:
        """Model name."""
        return self.manifest.name

    @property
    def version(self) -> int:
        """Integer version."""
        return self.manifest.version


class ModelRepository:
    """``<root>/<model>/<version>/`` with ``manifest.json`` in each version folder.

    Args:
        root: Repository root (``/mnt/models`` in a cluster).
        hash_workers: Threads used to hash files in parallel.
    """

    def __init__(self, root: str | Path, hash_workers: int = 4) -> None:
        self.root = Path(root)
        self.hash_workers = hash_workers

    def check_mounted(self) -> None:
        """Raise ``RepositoryNotMounted`` unless the root is an existing folder."""
        if not self.root.is_dir():
            raise RepositoryNotMounted(f"model repository not mounted at {self.root}")

    def models(self) -> dict[str, list[int]]:
        """Every model with its complete versions (those that have a manifest)."""
        self.check_mounted()
        out: dict[str, list[int]] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                out[entry.name] = self.versions(entry.name)
        return out

    def versions(self, name: str) -> list[int]:
        """Sorted complete versions of ``name``; folders without a manifest are skipped,
        so a half-published version is invisible."""
        self.check_mounted()
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        found = []
        for entry in model_dir.iterdir():
            if entry.name.isdigit() and (entry / MANIFEST_NAME).is_file():
                found.append(int(entry.name))
        return sorted(found)

    def resolve(self, name: str, policy: Literal["latest"] | int = "latest") -> int:
        """Pick a version by policy: ``latest`` (highest) or a pinned integer."""
        self.check_mounted()
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelVersionNotFound(f"model {name!r} not found in repository {self.root}")
        if policy == "latest":
            versions = self.versions(name)
            if not versions:
                raise ModelVersionNotFound(
                    f"model {name!r} has no complete version in {model_dir} "
                    f"(no <version>/{MANIFEST_NAME})"
                )
            return versions[-1]
        version = int(policy)
        version_dir = model_dir / str(version)
        if not version_dir.is_dir():
            published = ", ".join(map(str, self.versions(name))) or "none"
            raise ModelVersionNotFound(
                f"model {name!r} version {version} not found at {version_dir} (the config "
                f"pins version {version}; published: {published}): publish it before "
                "deploying a config that pins it"
            )
        return version

    def read_manifest(self, name: str, version: int) -> Manifest:
        """Parse and check the manifest of ``name``/``version``."""
        path = self.root / name / str(version) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ManifestError(
                f"model {name!r} version {version}: manifest missing: {path}"
            ) from None
        except OSError as e:
            raise ManifestError(
                f"model {name!r} version {version}: cannot read {path}: {e}"
            ) from None
        try:
            manifest = Manifest.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as e:
            raise ManifestError(
                f"model {name!r} version {version}: invalid manifest {path}: {e}"
            ) from None
        if manifest.name != name or manifest.version != version:
            raise ManifestError(
                f"model {name!r} version {version}: manifest {path} describes "
                f"{manifest.name!r} version {manifest.version}"
            )
        return manifest

    def verify(
        self, name: str, policy: Literal["latest"] | int = "latest", *, hashes: bool = True
    ) -> VerifiedVersion:
        """Resolve, then check every file's size (and sha256 unless ``hashes=False``).

        Raises:
            RepositoryError: naming model, version and the first bad file.
        """
        t0 = time.perf_counter()
        version = self.resolve(name, policy)
        manifest = self.read_manifest(name, version)
        version_dir = self.root / name / str(version)
        where = f"model {name!r} version {version}"
        for entry in manifest.files:
            path = version_dir / entry.path
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                raise IntegrityError(f"{where}: file missing: {path}") from None
            if size != entry.size_bytes:
                raise IntegrityError(
                    f"{where}: size mismatch for {path}: expected {entry.size_bytes} bytes, "
                    f"found {size} (truncated or partial copy)"
                )
        if hashes:
            paths = {version_dir / e.path: e for e in manifest.files}
            try:
                digests = sha256_files(paths, workers=self.hash_workers)
            except OSError as e:
                raise IntegrityError(f"{where}: cannot read {e.filename}: {e.strerror}") from None
            for path, entry in paths.items():
                if digests[path] != entry.sha256:
                    raise IntegrityError(
                        f"{where}: sha256 mismatch for {path}: expected {entry.sha256}, "
                        f"found {digests[path]} (corrupt file)"
                    )
        verify_s = time.perf_counter() - t0
        logger.info(
            "verified %s (%d files, %d bytes) in %.3f s",
            where,
            len(manifest.files),
            manifest.total_bytes,
            verify_s,
        )
        return VerifiedVersion(path=version_dir, manifest=manifest, verify_s=verify_s)
