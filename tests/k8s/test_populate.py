"""The populate Job's program (serve_app/k8s/populate.py): exactly the declared version
from its declared source, never the previous version's files under a new number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.errors import PublishError
from serve_app.k8s.populate import main, populate


def _source(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_publishes_the_declared_version_then_skips_it(tmp_path: Path) -> None:
    src = _source(tmp_path / "src" / "minilm" / "1", b"\1" * 1000)
    repo = tmp_path / "repo"
    assert populate([f"minilm:1:{src}"], repo) == [f"published {repo}/minilm/1"]
    manifest = json.loads((repo / "minilm" / "1" / "manifest.json").read_text())
    assert (manifest["version"], manifest["source"]) == (1, str(src))
    assert populate([f"minilm:1:{src}"], repo) == ["skip minilm: version 1 is already published"]


def test_refuses_the_previous_versions_files_under_a_new_number(tmp_path: Path, capsys) -> None:
    """An unrebuilt seed image: version 2's folder holds version 1's weights."""
    v1 = _source(tmp_path / "src" / "minilm" / "1", b"\1" * 1000)
    v2 = _source(tmp_path / "src" / "minilm" / "2", b"\1" * 1000)
    repo = tmp_path / "repo"
    populate([f"minilm:1:{v1}"], repo)
    assert main(["--repo", str(repo), f"minilm:1:{v1}", f"minilm:2:{v2}"]) == 1
    out = capsys.readouterr()
    assert out.out == "skip minilm: version 1 is already published\n"
    assert out.err == (
        f"error: model 'minilm' version 2: source {v2} holds the same files as published "
        "version 1; refusing to publish old weights under a new number (rebuild the seed "
        "image with the new weights)\n"
    )
    assert not (repo / "minilm" / "2").exists()
    (v2 / "model.safetensors").write_bytes(b"\2" * 1000)  # same size, new weights
    assert populate([f"minilm:2:{v2}"], repo) == [f"published {repo}/minilm/2"]


def test_refuses_a_missing_source_or_one_naming_another_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    missing = tmp_path / "src" / "minilm" / "3"
    with pytest.raises(PublishError) as e:
        populate([f"minilm:3:{missing}"], repo)
    assert str(e.value) == (
        f"model 'minilm' version 3: source {missing} does not exist; build the seed image "
        "with version 3 of minilm there"
    )
    exported = _source(missing, b"\3" * 10)
    (exported / "manifest.json").write_text(json.dumps({"name": "minilm", "version": 2}))
    with pytest.raises(PublishError) as e:
        populate([f"minilm:3:{exported}"], repo)
    assert str(e.value) == (
        f"model 'minilm' version 3: source {exported} is 'minilm' version 2 by its manifest.json"
    )
    with pytest.raises(PublishError) as e:
        populate(["minilm:latest"], repo)
    assert str(e.value) == "'minilm:latest': expected <name>:<version>:<source folder>"
