"""Model repository: publish, list, verify, load; every failure names the file (no Ray)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.cli import main as cli_main
from serve_app.errors import (
    IntegrityError,
    ManifestError,
    ModelVersionNotFound,
    PublishError,
    RepositoryNotMounted,
)
from serve_app.models.registry import load_adapter
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

ARCH = Architecture(name="mlp", kwargs={"in_features": 4, "hidden": [3], "out_features": 2})


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    from serve_app.models.architectures import MLP

    torch.manual_seed(0)
    m = MLP(4, [3], 2)
    path = tmp_path / "src" / "model.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


@pytest.fixture()
def repo(tmp_path: Path, weights: Path) -> ModelRepository:
    root = tmp_path / "repo"
    publish(weights, root, "mlp", architecture=ARCH)
    return ModelRepository(root)


def test_publish_layout_and_manifest(repo: ModelRepository, weights: Path) -> None:
    vdir = repo.root / "mlp" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["manifest.json", "model.safetensors"]
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["format"] == "safetensors"
    assert manifest["architecture"] == {"name": "mlp", "kwargs": ARCH.kwargs}
    assert manifest["files"][0]["size_bytes"] == weights.stat().st_size
    assert manifest["weights"] == ["model.safetensors"]
    assert not [p for p in (repo.root / "mlp").iterdir() if p.name.startswith(".tmp")]


def test_versions_and_policy(repo: ModelRepository, weights: Path) -> None:
    publish(weights, repo.root, "mlp", architecture=ARCH)
    publish(weights, repo.root, "mlp", version=5, architecture=ARCH)
    assert repo.versions("mlp") == [1, 2, 5]
    assert repo.resolve("mlp", "latest") == 5
    assert repo.resolve("mlp", 2) == 2
    with pytest.raises(ModelVersionNotFound) as info:
        repo.resolve("mlp", 3)
    assert str(info.value) == (
        f"model 'mlp' version 3 not found at {repo.root / 'mlp' / '3'} (the config pins "
        "version 3; published: 1, 2, 5): publish it before deploying a config that pins it"
    )
    with pytest.raises(ModelVersionNotFound, match="model 'other' not found"):
        repo.resolve("other")
    assert repo.models() == {"mlp": [1, 2, 5]}


def test_refuses_overwrite_and_bad_names(repo: ModelRepository, weights: Path) -> None:
    with pytest.raises(PublishError, match="model 'mlp' version 1 already exists"):
        publish(weights, repo.root, "mlp", version=1, architecture=ARCH)
    for bad in ["../escape", "a/b", "..", "x/../../y"]:
        with pytest.raises(PublishError, match="invalid model name"):
            publish(weights, repo.root, bad, architecture=ARCH)
    assert not (repo.root.parent / "escape").exists()
    with pytest.raises(PublishError, match="needs a declared architecture"):
        publish(weights, repo.root, "noarch")


def test_verify_ok(repo: ModelRepository) -> None:
    v = repo.verify("mlp")
    assert (v.name, v.version) == ("mlp", 1)
    assert v.path == repo.root / "mlp" / "1"


def test_flipped_byte_names_the_file(repo: ModelRepository) -> None:
    path = repo.root / "mlp" / "1" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as e:
        repo.verify("mlp")
    assert str(e.value).startswith(f"model 'mlp' version 1: sha256 mismatch for {path}")
    assert e.value.status_code == 503


def test_truncated_file(repo: ModelRepository) -> None:
    path = repo.root / "mlp" / "1" / "model.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    with pytest.raises(IntegrityError) as e:
        repo.verify("mlp")
    assert str(e.value) == (
        f"model 'mlp' version 1: size mismatch for {path}: expected {size} bytes, "
        f"found {size - 10} (truncated or partial copy)"
    )


def test_missing_file(repo: ModelRepository) -> None:
    path = repo.root / "mlp" / "1" / "model.safetensors"
    path.unlink()
    with pytest.raises(IntegrityError, match=f"file missing: {path}"):
        repo.verify("mlp")


def test_missing_manifest_hides_version_and_pinned_version_names_it(repo: ModelRepository) -> None:
    manifest = repo.root / "mlp" / "1" / "manifest.json"
    manifest.unlink()
    assert repo.versions("mlp") == []
    with pytest.raises(ModelVersionNotFound, match="has no complete version"):
        repo.verify("mlp", "latest")
    with pytest.raises(ManifestError) as e:
        repo.verify("mlp", 1)
    assert str(e.value) == f"model 'mlp' version 1: manifest missing: {manifest}"


def test_corrupt_manifest(repo: ModelRepository) -> None:
    manifest = repo.root / "mlp" / "1" / "manifest.json"
    manifest.write_text("{not json")
    with pytest.raises(ManifestError, match=f"invalid manifest {manifest}"):
        repo.verify("mlp")


def test_manifest_path_traversal_rejected(repo: ModelRepository) -> None:
    manifest = repo.root / "mlp" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["path"] = "../../secret"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="must be relative and inside the version"):
        repo.verify("mlp")


def test_missing_root(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "nowhere")
    with pytest.raises(RepositoryNotMounted) as e:
        repo.verify("mlp")
    assert str(e.value) == f"model repository not mounted at {tmp_path / 'nowhere'}"


def test_read_only_root_loads_without_writing(repo: ModelRepository) -> None:
    """Root may bypass permission bits, so an audit hook proves no write is attempted."""
    for p in sorted(repo.root.rglob("*"), reverse=True):
        p.chmod(0o555 if p.is_dir() else 0o444)
    repo.root.chmod(0o555)
    writes: list[str] = []
    root = str(repo.root)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and str(args[0]).startswith(root):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            ):
                writes.append(str(args[0]))
        elif event in ("os.remove", "os.rename", "os.mkdir", "os.chmod") and str(
            args[0]
        ).startswith(root):
            writes.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    try:
        v = repo.verify("mlp")
        adapter = load_adapter(v, "cpu")
        import numpy as np

        out = adapter.forward(adapter.prepare({"input": np.ones((2, 4), dtype=np.float32)}))
        assert out["output"].shape == (2, 2)
    finally:
        writes_seen = list(writes)
        writes.clear()
        root = "\0never"  # disarm the hook (audit hooks cannot be removed)
        for p in repo.root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        repo.root.chmod(0o755)
    assert writes_seen == []


@pytest.mark.parametrize(
    ("runtime", "reason"),
    [
        ("torch", r"(?s:.*)Missing key\(s\) in state_dict: \"net.0.bias\""),
        (
            "auto",
            r"missing keys \['net.0.bias', 'net.2.bias', 'net.2.weight'\], unexpected keys \[\]",
        ),
    ],
)
def test_partial_state_dict_refused(tmp_path: Path, runtime: str, reason: str) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"net.0.weight": torch.zeros(3, 4)}, str(path))
    publish(path, tmp_path / "repo", "mlp", architecture=ARCH)
    v = ModelRepository(tmp_path / "repo").verify("mlp")
    with pytest.raises(IntegrityError, match=r"w.safetensors does not match mlp: " + reason):
        load_adapter(v, "cpu", runtime)


def test_cli_verify_exit_codes(repo: ModelRepository, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "verify", "--repo", str(repo.root)]) == 0
    assert "OK   mlp/1" in capsys.readouterr().out
    path = repo.root / "mlp" / "1" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert cli_main(["models", "verify", "--repo", str(repo.root)]) == 1
    assert f"FAIL model 'mlp' version 1: sha256 mismatch for {path}" in capsys.readouterr().out


def test_cli_publish_and_list(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(weights.read_bytes())
    root = tmp_path / "r"
    assert (
        cli_main(["models", "publish", str(src), "--repo", str(root), "--name", "hf", "--quiet"])
        == 0
    )
    assert (
        cli_main(
            [
                "models",
                "publish",
                str(src),
                "--repo",
                str(root),
                "--name",
                "hf",
                "--version",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["models", "list", "--repo", str(root)]) == 0
    assert capsys.readouterr().out.startswith("hf\t1\thuggingface\tsentence-embedding\t")
