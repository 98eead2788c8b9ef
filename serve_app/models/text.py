"""Shared text handling for sentence-embedding adapters (tokenize outside the forward)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from serve_app.errors import InvalidInput
from serve_app.models.base import TensorSpec

TEXT_INPUT = TensorSpec("text", "BYTES", (-1,))


def read_max_seq_length(folder: Path, default: int = 256) -> int:
    """``max_seq_length`` from sentence-transformers' config, else the tokenizer's limit."""
    st = folder / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text())["max_seq_length"])
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        v = json.loads(tc.read_text()).get("model_max_length")
        if isinstance(v, int) and v < 100_000:
            return v
    return default


class TextTokenizer:
    """A fast tokenizer from ``tokenizer.json``, truncating like sentence-transformers."""

    def __init__(self, folder: Path, max_seq_length: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        self.tokenizer.no_padding()
        self.max_seq_length = max_seq_length
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Tokenize the ``text`` input: one int64 id array per sentence."""
        text = inputs.get("text")
        if text is None:
            raise InvalidInput(f"missing input 'text'; got {sorted(inputs)}")
        if text.dtype != object:
            raise InvalidInput("input 'text' must have datatype BYTES")
        if text.ndim == 2 and text.shape[1] == 1:
            text = text[:, 0]
        if text.ndim != 1:
            raise InvalidInput(
                f"input 'text' must have shape [N] or [N, 1], got {list(text.shape)}"
            )
        if len(text) == 0:
            raise InvalidInput("input 'text' is empty")
        sentences = []
        for s in text:
            if isinstance(s, bytes):
                try:
                    s = s.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput("input 'text' holds bytes that are not UTF-8") from None
            sentences.append(s)
        encodings = self.tokenizer.encode_batch(sentences)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def pad(self, items: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pad to the longest row; returns ``(input_ids, attention_mask)``."""
        longest = max(len(x) for x in items)
        ids = np.full((len(items), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), longest), dtype=np.int64)
        for i, x in enumerate(items):
            ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return ids, mask

    def warmup_items(self, n: int) -> list[Any]:
        """``n`` rows of the longest allowed length."""
        text = np.empty(1, dtype=object)
        text[0] = "warm up " * self.max_seq_length
        longest = self.prepare({"text": text})[0]
        return [longest] * n
