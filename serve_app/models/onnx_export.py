"""Export a Hugging Face sentence-embedding folder to ONNX (pooling and L2 norm inside
the graph) and publish it as its own repository version with format ``onnx``.

The export is checked before it is published: on sample sentences of different lengths
the ONNX Runtime output must have cosine >= ``MIN_COSINE`` with the eager torch output.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.errors import PublishError

MIN_COSINE = 0.9999
OPSET = 17
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "config.json",
)
CHECK_SENTENCES = [
    "hello",
    "The quick brown fox jumps over the lazy dog near the river bank today",
    "A much longer sentence that keeps going " * 12,
]


def export_onnx(hf_folder: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``model.onnx`` plus tokenizer files into ``out_dir``; returns metadata
    including the measured agreement with the eager model."""
    import torch

    from serve_app.models.hf_embedding import HFEmbeddingAdapter, mean_pool_normalize

    eager = HFEmbeddingAdapter(hf_folder, "cpu")

    class Pooled(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            return mean_pool_normalize(hidden, attention_mask)

    out_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.ones(2, 16, dtype=torch.int64)
    dynamic = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "embedding": {0: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the dynamo one needs onnxscript, which the
        # project does not otherwise use.
        torch.onnx.export(
            Pooled(eager.model).eval(),
            (ids, torch.ones_like(ids)),
            str(out_dir / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    for name in TOKENIZER_FILES:
        if (hf_folder / name).is_file():
            shutil.copy2(hf_folder / name, out_dir / name)

    from serve_app.models.onnx_embedding import OnnxEmbeddingAdapter

    fast = OnnxEmbeddingAdapter(out_dir, "cpu")
    text = np.array(CHECK_SENTENCES, dtype=object)
    ref = eager.forward(eager.prepare({"text": text}))["embedding"]
    got = fast.forward(fast.prepare({"text": text}))["embedding"]
    cosine = float(
        np.min(
            np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
        )
    )
    max_abs = float(np.abs(ref - got).max())
    if cosine < MIN_COSINE:
        raise PublishError(f"ONNX export disagrees with the eager model: min cosine {cosine:.6f}")
    return {
        "opset": OPSET,
        "embedding_dim": int(got.shape[1]),
        "check_min_cosine": cosine,
        "check_max_abs_diff": max_abs,
    }


def publish_onnx(
    src: str | Path,
    root: str | Path,
    name: str,
    *,
    version: int | None = None,
    progress: bool = False,
) -> Path:
    """Export ``src`` (a Hugging Face folder, e.g. an existing version) and publish it."""
    from serve_app.repository.publish import publish

    src = Path(src)
    if not (src / "config.json").is_file():
        raise PublishError(f"{src} is not a Hugging Face model folder (no config.json)")
    with tempfile.TemporaryDirectory() as tmp:
        meta = export_onnx(src, Path(tmp))
        meta["exported_from"] = str(src.resolve())
        return publish(
            tmp,
            root,
            name,
            version=version,
            format="onnx",
            task="sentence-embedding",
            source=f"onnx export of {src.resolve()}",
            metadata=meta,
            progress=progress,
        )
