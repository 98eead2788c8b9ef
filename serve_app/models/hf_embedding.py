"""Hugging Face sentence-embedding model: mean pooling + L2 norm, tokenizer from the
same folder. Loaded from safetensors (mmap), never unpickled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.models.base import ModelAdapter, ModelInfo, TensorSpec
from serve_app.models.text import TEXT_INPUT, TextTokenizer, read_max_seq_length


def mean_pool_normalize(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then L2-normalise (sentence-transformers' recipe)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


class HFEmbeddingAdapter(ModelAdapter):
    """``transformers.AutoModel`` + mean pooling, on the visible CUDA device or CPU."""

    def __init__(self, folder: Path, device: str) -> None:
        from transformers import AutoModel

        self.tokenizer = TextTokenizer(folder, read_max_seq_length(folder))
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
        self.model.eval().to(self.device)
        dim = int(self.model.config.hidden_size)
        self.info = ModelInfo(
            platform="pytorch_transformers",
            inputs=[TEXT_INPUT],
            outputs=[TensorSpec("embedding", "FP32", (-1, dim))],
            device=str(self.device),
            extra={"max_seq_length": self.tokenizer.max_seq_length},
        )

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        return self.tokenizer.prepare(inputs)

    def item_length(self, item: Any) -> int:
        return len(item)

    @torch.inference_mode()
    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        ids, mask = self.tokenizer.pad(items)
        ids_t = torch.from_numpy(ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        emb = mean_pool_normalize(hidden, mask_t)
        return {"embedding": emb.float().cpu().numpy()}

    def warmup_items(self, n: int) -> list[Any]:
        return self.tokenizer.warmup_items(n)
