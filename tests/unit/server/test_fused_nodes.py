"""The host side of fused nodes: models verified and loaded from the repository like any
model, run on the host's outputs, reporting under their own names (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from serve_app.deploy.app_args import FusedNodeArgs
from serve_app.errors import IntegrityError, ServiceUnavailable
from serve_app.graph.fused import FusedCall, node_answer
from serve_app.models.architectures import MLP
from serve_app.models.registry import load_adapter
from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture
from serve_app.server.fused_nodes import FusedNodes

KWARGS = {"in_features": 8, "hidden": [6], "out_features": 3}
LABELS = ["a", "b", "c"]


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    torch.manual_seed(0)
    root = tmp_path / "repo"
    for name in ("topic", "wide"):
        weights = tmp_path / f"{name}.safetensors"
        save_file(MLP(**KWARGS).state_dict(), str(weights))
        arch = Architecture(name="mlp", kwargs=KWARGS)
        publish(
            weights,
            root,
            name,
            architecture=arch,
            metadata={"labels": LABELS},
            task="classification",
        )
    return ModelRepository(root)


def node(name: str, model: str, inputs: dict[str, str]) -> FusedNodeArgs:
    return FusedNodeArgs(
        pipeline="p",
        node=name,
        host="embed",
        model=model,
        folder=model,
        version="latest",
        inputs=inputs,
    )


NODES = [
    node("first", "topic", {"input": "embed.embedding"}),
    node("second", "wide", {"input": "embed.embedding"}),
    node("again", "topic", {"input": "embed.embedding"}),
]


class Batches:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []

    def sink(self, model: str, version: str) -> Any:
        record = self.rows

        class Sink:
            def observe_batch(self, rows: int, waits_s: Any, compute_s: float) -> None:
                record.append((f"{model}@{version}", rows))

        return Sink()


def test_fused_models_load_once_and_answer_like_the_model(repo: ModelRepository) -> None:
    batches = Batches()
    fused = FusedNodes(NODES, repo, "cpu", metrics_for=batches.sink)
    fused.load()
    assert len(fused.runtimes) == 2  # 'topic' serves two nodes, loaded once
    embedding = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    answer = fused.run(FusedCall("p", ("first", "second", "again")), {"embedding": embedding})
    alone = load_adapter(repo.verify("topic", "latest"), "cpu")
    want = alone.forward(alone.prepare({"input": embedding}))
    got = node_answer(answer, "first")
    assert isinstance(got, dict) and sorted(got) == sorted(want)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    assert got["label"].tolist() == want["label"].tolist()
    assert batches.rows == [("topic@1", 5), ("wide@1", 5), ("topic@1", 5)]


def test_a_corrupt_fused_model_fails_the_host_naming_the_file(repo: ModelRepository) -> None:
    weights = next((repo.root / "wide" / "1").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(IntegrityError, match=weights.name):
        FusedNodes(NODES, repo, "cpu").load()


def test_a_node_this_replica_does_not_have_is_named(repo: ModelRepository) -> None:
    fused = FusedNodes(NODES[:1], repo, "cpu")
    fused.load()
    with pytest.raises(ServiceUnavailable, match=r"nodes \['second'\] are not fused into this"):
        fused.run(FusedCall("p", ("first", "second")), {"embedding": np.ones((1, 8), "f4")})


def test_a_fused_model_refusing_its_input_fails_only_its_node(repo: ModelRepository) -> None:
    fused = FusedNodes(NODES[:2], repo, "cpu")
    fused.load()
    narrow = {"embedding": np.ones((2, 4), dtype=np.float32)}  # the models want 8 features
    answer = fused.run(FusedCall("p", ("first", "second")), narrow)
    status, message = node_answer(answer, "first")  # type: ignore[misc]
    assert status == 400 and "input" in message
