"""A model's tensor specs read from its manifest (what pipelines are type-checked
against) equal what its adapter declares once loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serve_app.errors import ManifestError
from serve_app.local.demo import MINILM, MLP_HEAD, ensure_demo_models
from serve_app.models.architectures import MLP
from serve_app.models.registry import load_adapter
from serve_app.models.specs import declared_specs
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

ARCH = Architecture(name="mlp", kwargs={"in_features": 4, "hidden": [3], "out_features": 2})


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    root = tmp_path_factory.mktemp("repo")
    ensure_demo_models(root, progress=False, with_onnx=False, with_heads=False)
    weights = root.parent / "head.safetensors"
    torch.manual_seed(0)
    save_file(MLP(4, [3], 2).state_dict(), str(weights))
    publish(
        weights,
        root,
        "clf",
        architecture=ARCH,
        task="classification",
        metadata={"labels": ["no", "yes"]},
    )
    publish(weights, root, "clf-unlabelled", architecture=ARCH, task="classification")
    return ModelRepository(root)


@pytest.mark.parametrize("name", [MINILM, MLP_HEAD, "clf"])
def test_manifest_specs_equal_loaded_adapter_specs(repo: ModelRepository, name: str) -> None:
    version = repo.verify(name, "latest")
    specs = declared_specs(version.path, version.manifest)
    info = load_adapter(version, "cpu").info
    assert (list(specs.inputs), list(specs.outputs)) == (info.inputs, info.outputs)


def test_classification_head_answers_labels(repo: ModelRepository) -> None:
    adapter = load_adapter(repo.verify("clf", "latest"), "cpu")
    out = adapter.forward(adapter.prepare({"input": torch.ones(3, 4).numpy()}))
    assert out["probabilities"].shape == (3, 2)
    assert set(out["label"].tolist()) <= {"no", "yes"}
    assert out["confidence"].tolist() == out["probabilities"].max(axis=1).tolist()


def test_classification_without_labels_names_the_model(repo: ModelRepository) -> None:
    version = repo.verify("clf-unlabelled", "latest")
    with pytest.raises(ManifestError, match="model 'clf-unlabelled' version 1: a classification"):
        declared_specs(Path(version.path), version.manifest)
