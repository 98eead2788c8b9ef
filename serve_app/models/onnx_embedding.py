"""Sentence embeddings with ONNX Runtime: the same weights and tokenizer as the
Hugging Face version, exported once by ``serve-app models publish --format onnx``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serve_app.models.base import ModelAdapter, ModelInfo, TensorSpec
from serve_app.models.text import TEXT_INPUT, TextTokenizer, read_max_seq_length
from serve_app.models.threads import intra_op_threads


class OnnxEmbeddingAdapter(ModelAdapter):
    """``model.onnx`` taking ``input_ids``/``attention_mask``, returning the pooled,
    normalised ``embedding``."""

    def __init__(self, folder: Path, device: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.tokenizer = TextTokenizer(folder, read_max_seq_length(folder))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or intra_op_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between ops: the replica's event loop and the ingress share
        # these cores; measured equal or better batch throughput with less CPU.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=providers)
        dim = (
            int(self.session.get_outputs()[0].shape[-1])
            if isinstance(self.session.get_outputs()[0].shape[-1], int)
            else 384
        )
        self.info = ModelInfo(
            platform="onnxruntime",
            inputs=[TEXT_INPUT],
            outputs=[TensorSpec("embedding", "FP32", (-1, dim))],
            device=device if providers[0] == "CUDAExecutionProvider" else "cpu",
            extra={"providers": providers, "threads": opts.intra_op_num_threads},
        )

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        return self.tokenizer.prepare(inputs)

    def item_length(self, item: Any) -> int:
        return len(item)

    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        ids, mask = self.tokenizer.pad(items)
        (emb,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return {"embedding": np.asarray(emb, dtype=np.float32)}

    def warmup_items(self, n: int) -> list[Any]:
        return self.tokenizer.warmup_items(n)
