"""A declared MLP on numpy answers as torch does (within 1e-5), refuses what torch would
refuse, and a replica that runs it never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serve_app.errors import IntegrityError
from serve_app.models.architectures import MLP
from serve_app.models.numpy_module import NumpyModuleAdapter
from serve_app.models.registry import load_adapter
from serve_app.models.torch_module import TorchModuleAdapter
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

KWARGS = {"in_features": 384, "hidden": [64, 32], "out_features": 5}
LABELS = ["billing", "bug", "account", "shipping", "other"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("repo")
    for name, task, metadata in [
        ("head", "classification", {"labels": LABELS}),
        ("regress", None, {}),
    ]:
        weights = root.parent / f"{name}.safetensors"
        save_file(MLP(**KWARGS).state_dict(), str(weights))
        arch = Architecture(name="mlp", kwargs=KWARGS)
        kwargs = {"task": task} if task else {}
        publish(weights, root, name, architecture=arch, metadata=metadata, **kwargs)
    return ModelRepository(root)


@pytest.mark.parametrize("name", ["head", "regress"])
def test_numpy_answers_as_torch_does(repo: ModelRepository, name: str) -> None:
    version = repo.verify(name, "latest")
    on_numpy = load_adapter(version, "cpu")
    on_torch = load_adapter(version, "cpu", "torch")
    assert isinstance(on_numpy, NumpyModuleAdapter) and isinstance(on_torch, TorchModuleAdapter)
    assert (on_numpy.info.inputs, on_numpy.info.outputs) == (
        on_torch.info.inputs,
        on_torch.info.outputs,
    )
    x = np.random.default_rng(0).normal(size=(33, 384)).astype(np.float32) * 3
    got = on_numpy.forward(on_numpy.prepare({"input": x}))
    want = on_torch.forward(on_torch.prepare({"input": x}))
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        if want[key].dtype == object:
            assert got[key].tolist() == want[key].tolist()
        else:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("hidden", "reason"),
    [
        ([64], r"missing keys \['net.4.bias', 'net.4.weight'\], unexpected keys \[\]"),
        ([64, 16], r"net.2.weight has shape \[16, 64\], expected \[32, 64\]"),
    ],
)
def test_a_state_dict_of_another_shape_is_refused_naming_the_file(
    repo: ModelRepository, tmp_path: Path, hidden: list[int], reason: str
) -> None:
    weights = tmp_path / "w.safetensors"
    save_file(MLP(384, hidden, 5).state_dict(), str(weights))
    name = f"wrong-{len(hidden)}-{hidden[-1]}"
    publish(weights, repo.root, name, architecture=Architecture(name="mlp", kwargs=KWARGS))
    with pytest.raises(IntegrityError, match=r"w.safetensors does not match mlp: " + reason):
        load_adapter(repo.verify(name, "latest"), "cpu")


def test_a_replica_process_running_a_head_never_imports_torch(repo: ModelRepository) -> None:
    script = (
        "import sys, json, numpy as np\n"
        "from serve_app.repository import ModelRepository\n"
        "from serve_app.models.registry import load_adapter\n"
        f"a = load_adapter(ModelRepository({str(repo.root)!r}).verify('head'), 'cpu')\n"
        "out = a.forward(a.prepare({'input': np.ones((2, 384), np.float32)}))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'labels': out['label'].tolist()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    assert result["torch"] is False
    assert len(result["labels"]) == 2 and set(result["labels"]) <= set(LABELS)
