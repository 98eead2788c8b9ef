"""``serve-app train-demo-heads``: the support-ticket triage heads of the demo pipeline.

Three small classifiers over MiniLM sentence embeddings, trained in seconds on CPU on
the labelled tickets shipped in ``serve_app/local/demo_data/support_tickets.csv``, then
published into the model repository like any model (safetensors + checksummed
manifest, ``task: classification`` with the label names):

- ``ticket-topic``: billing / technical / account / shipping;
- ``ticket-urgency``: low / high;
- ``ticket-topic-large``: a wider topic head, the pipeline's second opinion for
  tickets the first head is unsure about.

The embeddings come from the repository's own ``minilm`` (the version the demo
serves), so the heads see at training time what they see when served.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.repository import ModelRepository, publish
from serve_app.repository.manifest import Architecture

DATASET = "support_tickets.csv"
SEED = 0
HELD_OUT_FRACTION = 0.2
EMBEDDING_MODEL = "minilm"


@dataclass(frozen=True)
class HeadSpec:
    """One head: its model name, the label column, the label names and hidden sizes."""

    name: str
    column: str
    labels: tuple[str, ...]
    hidden: tuple[int, ...]
    epochs: int


HEADS = (
    HeadSpec("ticket-topic", "topic", ("billing", "technical", "account", "shipping"), (64,), 300),
    HeadSpec("ticket-urgency", "urgency", ("low", "high"), (32,), 300),
    HeadSpec(
        "ticket-topic-large",
        "topic",
        ("billing", "technical", "account", "shipping"),
        (256, 64),
        400,
    ),
)


def load_tickets() -> list[dict[str, str]]:
    """The labelled tickets (text, topic, urgency)."""
    text = (importlib.resources.files("serve_app.local.demo_data") / DATASET).read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


def dataset_sha256() -> str:
    """sha256 of the shipped data set (recorded in each head's manifest)."""
    data = (importlib.resources.files("serve_app.local.demo_data") / DATASET).read_bytes()
    return hashlib.sha256(data).hexdigest()


def split(n: int, labels: list[str], seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/held-out indices (by ``labels``), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(set(labels)):
        idx = np.array([i for i in range(n) if labels[i] == label])
        rng.shuffle(idx)
        k = max(1, int(round(len(idx) * HELD_OUT_FRACTION)))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.array(sorted(train)), np.array(sorted(test))


def embed(texts: list[str], root: Path) -> np.ndarray:
    """MiniLM embeddings of ``texts`` from the repository's latest ``minilm``."""
    from serve_app.models.registry import load_adapter

    adapter = load_adapter(ModelRepository(root).verify(EMBEDDING_MODEL, "latest"), "cpu")
    out = []
    for i in range(0, len(texts), 64):
        batch = np.array(texts[i : i + 64], dtype=object)
        out.append(adapter.forward(adapter.prepare({"text": batch}))["embedding"])
    return np.concatenate(out)


def train_head(
    head: HeadSpec, x: np.ndarray, y: np.ndarray, train: np.ndarray, seed: int = SEED
) -> tuple[Any, float]:
    """Train one MLP head (full-batch Adam); returns ``(module, train accuracy)``."""
    import torch

    from serve_app.models.architectures import MLP

    torch.manual_seed(seed)
    module = MLP(x.shape[1], list(head.hidden), len(head.labels))
    opt = torch.optim.Adam(module.parameters(), lr=1e-2, weight_decay=1e-3)
    xt = torch.from_numpy(x[train])
    yt = torch.from_numpy(y[train])
    for _ in range(head.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(module(xt), yt)
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        acc = float((module(xt).argmax(-1) == yt).float().mean())
    return module, acc


def accuracy(module: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows of ``x`` whose top class is ``y``."""
    import torch

    with torch.no_grad():
        pred = module(torch.from_numpy(x)).argmax(-1).numpy()
    return float((pred == y).mean())


def train_demo_heads(root: str | Path, progress: bool = True) -> dict[str, dict[str, float]]:
    """Train and publish every head missing from ``root``; returns accuracies by head
    (for heads already published, the accuracies recorded in their manifests)."""
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    repo = ModelRepository(root)
    missing = [h for h in HEADS if not repo.versions(h.name)]
    report: dict[str, dict[str, float]] = {}
    for h in HEADS:
        if h not in missing:
            meta = repo.read_manifest(h.name, repo.resolve(h.name)).metadata
            report[h.name] = {k: meta[k] for k in ("train_accuracy", "held_out_accuracy")}
    if not missing:
        return report
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = load_tickets()
    x = embed([r["text"] for r in rows], root)
    train, test = split(len(rows), [r["topic"] + "/" + r["urgency"] for r in rows])
    for head in missing:
        y = np.array([head.labels.index(r[head.column]) for r in rows], dtype=np.int64)
        module, train_acc = train_head(head, x, y, train)
        held_out = accuracy(module, x[test], y[test])
        report[head.name] = {"train_accuracy": train_acc, "held_out_accuracy": held_out}
        arch = Architecture(
            name="mlp",
            kwargs={
                "in_features": x.shape[1],
                "hidden": list(head.hidden),
                "out_features": len(head.labels),
            },
        )
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.safetensors"
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(weights))
            publish(
                weights,
                root,
                head.name,
                architecture=arch,
                task="classification",
                source=f"serve-app train-demo-heads on serve_app/local/demo_data/{DATASET}",
                metadata={
                    "labels": list(head.labels),
                    "dataset_sha256": dataset_sha256(),
                    "train_rows": int(len(train)),
                    "held_out_rows": int(len(test)),
                    "seed": SEED,
                    **report[head.name],
                },
                progress=progress,
            )
    return report
