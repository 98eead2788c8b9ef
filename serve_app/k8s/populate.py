"""The populate Job's program: publish exactly the declared version of each model from its
declared source, and refuse a source that is not that version.

``python -m serve_app.k8s.populate --repo <root> <name>:<version>:<source> ...`` (the
words come from the ``serve-app-publish`` ConfigMap that ``serve-app render-k8s`` writes,
the source being ``cluster.model_sources/<name>/<version>`` in the seed image). For each
model, a published version is skipped; otherwise the source must exist, must not carry a
``manifest.json`` naming another model or version, and must not hold the same files as
the model's previous published version (an unrebuilt seed image would otherwise publish
the old weights under the new number, and ``verify`` would pass). Exit 0 when every
version is published, 1 naming the first refusal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from serve_app.errors import PublishError
from serve_app.repository.hashing import CHUNK_BYTES
from serve_app.repository.manifest import MANIFEST_NAME, Manifest
from serve_app.repository.publish import _source_files, publish

PublishFn = Callable[..., Path]


def parse_entry(word: str) -> tuple[str, int, Path]:
    """``name:version:source`` -> its parts (``PublishError`` when malformed)."""
    name, _, rest = word.partition(":")
    version, _, source = rest.partition(":")
    if not name or not version.isdigit() or not source:
        raise PublishError(f"{word!r}: expected <name>:<version>:<source folder>")
    return name, int(version), Path(source)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def previous_manifest(model_dir: Path, version: int) -> Manifest | None:
    """The manifest of the highest published version below ``version``, if any."""
    if not model_dir.is_dir():
        return None
    older = sorted(
        (int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and int(p.name) < version),
        reverse=True,
    )
    for v in older:
        path = model_dir / str(v) / MANIFEST_NAME
        if path.is_file():
            return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    return None


def same_content(source: Path, manifest: Manifest) -> bool:
    """Whether ``source`` holds exactly the files of ``manifest`` (paths, sizes, sha256).
    Sizes are compared first, so a changed source is told apart without hashing it."""
    files = {rel: p for p, rel in _source_files(source)}
    published = {f.path: f for f in manifest.files}
    if files.keys() != published.keys():
        return False
    if any(files[k].stat().st_size != published[k].size_bytes for k in files):
        return False
    return all(_sha256(files[k]) == published[k].sha256 for k in files)


def check_source(name: str, version: int, source: Path, root: Path) -> None:
    """Raise ``PublishError`` unless ``source`` can be published as ``name`` ``version``."""
    if not source.exists():
        raise PublishError(
            f"model {name!r} version {version}: source {source} does not exist; build the "
            f"seed image with version {version} of {name} there"
        )
    own = source / MANIFEST_NAME if source.is_dir() else None
    if own is not None and own.is_file():
        declared = json.loads(own.read_text(encoding="utf-8"))
        if (declared.get("name"), declared.get("version")) != (name, version):
            raise PublishError(
                f"model {name!r} version {version}: source {source} is "
                f"{declared.get('name')!r} version {declared.get('version')} by its {MANIFEST_NAME}"
            )
    previous = previous_manifest(root / name, version)
    if previous is not None and same_content(source, previous):
        raise PublishError(
            f"model {name!r} version {version}: source {source} holds the same files as "
            f"published version {previous.version}; refusing to publish old weights under a "
            "new number (rebuild the seed image with the new weights)"
        )


def populate(
    words: Sequence[str],
    root: Path,
    *,
    publish_fn: PublishFn = publish,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Publish each ``name:version:source`` not yet published; returns the log lines,
    also passed to ``log`` one by one as they happen.

    Raises:
        PublishError: A malformed word or a refused source; versions before it stay
            published (each publish is atomic).
    """
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if log is not None:
            log(line)

    for word in words:
        name, version, source = parse_entry(word)
        if (root / name / str(version) / MANIFEST_NAME).exists():
            say(f"skip {name}: version {version} is already published")
            continue
        check_source(name, version, source, root)
        path = publish_fn(source, root, name, version=version, source=str(source))
        say(f"published {path}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the populate Job (module docstring)."""
    p = argparse.ArgumentParser(prog="python -m serve_app.k8s.populate")
    p.add_argument("--repo", required=True, help="repository root")
    p.add_argument("entries", nargs="*", help="<name>:<version>:<source folder>")
    a = p.parse_args(argv)
    try:
        populate(a.entries, Path(a.repo), log=lambda line: print(line, flush=True))
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
