"""Pipeline-parallel stages of a Hugging Face BERT sentence-embedding model.

A stage owns a half-open range ``[start, end)`` of encoder layers; the first stage also
owns the tokenizer and the embeddings, the last one the mean pooling. Each stage is its
own deployment, so it reads only its own tensors from the one ``model.safetensors``
(by name, through ``safe_open``) and never builds the full model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, PretrainedConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from serve_app.errors import IntegrityError, InvalidInput, ManifestError
from serve_app.models.base import ModelAdapter, ModelInfo, TensorSpec
from serve_app.models.hf_embedding import mean_pool_normalize
from serve_app.models.text import TEXT_INPUT, TextTokenizer, read_max_seq_length

WEIGHTS_FILE = "model.safetensors"
# Checkpoints from transformers 4.x carry these non-persistent buffers; transformers 5
# rebuilds them from the config, so a stage neither reads nor counts them.
REBUILT_BUFFERS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})
# The full model runs SDPA on CPU and CUDA; the stages must build the same mask (a bool
# [N, 1, L, L] mask, or None without padding) and call the same kernel to match it.
ATTN_IMPLEMENTATION = "sdpa"


def stage_inputs(hidden_size: int) -> list[TensorSpec]:
    """Tensors that flow between two stages (padding on the right, zeros in padding)."""
    return [
        TensorSpec("hidden_states", "FP32", (-1, -1, hidden_size)),
        TensorSpec("attention_mask", "INT64", (-1, -1)),
    ]


def tensor_bytes(path: Path) -> dict[str, int]:
    """Bytes of every tensor in a safetensors file, read from its header only.

    Raises:
        IntegrityError: when the file is missing or its header is unreadable.
    """
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        return {
            k: int(v["data_offsets"][1]) - int(v["data_offsets"][0])
            for k, v in header.items()
            if k != "__metadata__"
        }
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise IntegrityError(f"{path}: unreadable safetensors header: {e}") from None


def load_parts(
    path: Path, parts: dict[str, torch.nn.Module], device: torch.device
) -> tuple[int, int]:
    """Load each part (keyed by its name prefix in the file) from its own tensors only.

    Parts are built on the meta device; tensors are read one by one with ``get_tensor``
    and assigned, so no weight is allocated twice (on CPU a float32 tensor stays backed
    by the file's mmap, paged in when first used). Keys may carry a ``bert.`` prefix.

    Returns:
        ``(bytes held by the parts, bytes of all tensors in the file)``.

    Raises:
        IntegrityError: naming the file and the key on a missing, unexpected or
            misshapen tensor.
    """
    file_bytes = tensor_bytes(path)
    base = "bert." if any(k.startswith("bert.") for k in file_bytes) else ""
    expected = {
        f"{base}{part}{k}": (module, k, meta.shape)
        for part, module in parts.items()
        for k, meta in module.state_dict().items()
    }
    owned = {
        k
        for k in file_bytes
        if k.startswith(base)
        and k[len(base) :] not in REBUILT_BUFFERS
        and any(k[len(base) :].startswith(part) for part in parts)
    }
    for problem, keys in (
        ("missing", sorted(expected.keys() - file_bytes.keys())),
        ("unexpected", sorted(owned - expected.keys())),
    ):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise IntegrityError(f"{path}: {problem} tensor {keys[0]!r}{more}")
    states: dict[int, dict[str, torch.Tensor]] = {id(m): {} for m in parts.values()}
    held = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            for key, (module, name, want) in expected.items():
                tensor = f.get_tensor(key)
                if tensor.shape != want:
                    raise IntegrityError(
                        f"{path}: tensor {key!r} has shape {list(tensor.shape)}, "
                        f"expected {list(want)}"
                    )
                tensor = tensor.to(device=device, dtype=torch.float32)
                held += tensor.numel() * tensor.element_size()
                states[id(module)][name] = tensor
    except SafetensorError as e:
        raise IntegrityError(f"{path}: unreadable safetensors file: {e}") from None
    for part, module in parts.items():
        try:
            module.load_state_dict(states[id(module)], strict=True, assign=True)
        except RuntimeError as e:
            raise IntegrityError(f"{path}: tensors under {base + part!r} do not fit: {e}") from None
    return held, sum(file_bytes.values())


def read_bert_config(folder: Path) -> PretrainedConfig:
    """The folder's config, checked to be a BERT encoder.

    Raises:
        ManifestError: when ``config.json`` is unreadable or not a BERT encoder.
    """
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{folder}: unreadable config.json: {e}") from None
    if config.model_type != "bert" or config.is_decoder:
        raise ManifestError(
            f"{folder}: pipeline stages need a BERT encoder, got model_type "
            f"{config.model_type!r} (is_decoder={config.is_decoder})"
        )
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


class HFEncoderStageAdapter(ModelAdapter):
    """Encoder layers ``[start, end)`` of a BERT sentence-embedding model.

    The first stage (``start == 0``) takes ``text`` and runs tokenizer and embeddings;
    the last stage (``end == num_hidden_layers``) returns the pooled, L2-normalised
    ``embedding``. Others pass ``hidden_states`` and ``attention_mask`` along.
    """

    def __init__(self, folder: Path, device: str, layers: tuple[int, int]) -> None:
        config = read_bert_config(folder)
        n = int(config.num_hidden_layers)
        start, end = layers
        if not 0 <= start < end <= n:
            raise ManifestError(
                f"{folder}: layers [{start}, {end}) is not a range of its {n} encoder "
                f"layers; need 0 <= start < end <= {n}"
            )
        self.config = config
        self.layers_range = (start, end)
        self.first, self.last = start == 0, end == n
        self.device = torch.device(device)
        self.hidden_size = int(config.hidden_size)
        self.max_seq_length = read_max_seq_length(folder)
        self.tokenizer = TextTokenizer(folder, self.max_seq_length) if self.first else None
        with torch.device("meta"):
            self.embeddings = BertEmbeddings(config) if self.first else None
            self.layers = torch.nn.ModuleList(
                BertLayer(config, layer_idx=i) for i in range(start, end)
            )
        parts: dict[str, torch.nn.Module] = {
            f"encoder.layer.{i}.": layer for i, layer in enumerate(self.layers, start)
        }
        if self.embeddings is not None:
            parts["embeddings."] = self.embeddings
        self._weight_bytes, file_weight_bytes = load_parts(
            folder / WEIGHTS_FILE, parts, self.device
        )
        if self.embeddings is not None:
            positions = torch.arange(config.max_position_embeddings, device=self.device)
            self.embeddings.position_ids = positions.expand((1, -1))
            self.embeddings.token_type_ids = torch.zeros_like(self.embeddings.position_ids)
            self.embeddings.eval()
        self.layers.eval()
        between = stage_inputs(self.hidden_size)
        self.info = ModelInfo(
            platform="pytorch_transformers_stage",
            inputs=[TEXT_INPUT] if self.first else between,
            outputs=[TensorSpec("embedding", "FP32", (-1, self.hidden_size))]
            if self.last
            else between,
            device=str(self.device),
            extra={
                "layers": [start, end],
                "first": self.first,
                "last": self.last,
                "weight_bytes": self._weight_bytes,
                "file_weight_bytes": file_weight_bytes,
            },
        )

    @property
    def weight_bytes(self) -> int:
        """Bytes of the tensors this stage holds (its layers, plus embeddings if first)."""
        return self._weight_bytes

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        if self.tokenizer is not None:
            return self.tokenizer.prepare(inputs)
        return split_hidden(inputs, self.hidden_size, self.max_seq_length)

    def item_length(self, item: Any) -> int:
        return len(item)

    @torch.inference_mode()
    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        if self.tokenizer is not None and self.embeddings is not None:
            ids, mask = self.tokenizer.pad(items)
            hidden = self.embeddings(input_ids=torch.from_numpy(ids).to(self.device))
        else:
            padded, mask = pad_hidden(items, self.hidden_size)
            hidden = torch.from_numpy(padded).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        attn = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask_t
        )
        for layer in self.layers:
            hidden = layer(hidden, attn)
        if self.last:
            return {"embedding": mean_pool_normalize(hidden, mask_t).float().cpu().numpy()}
        hidden = hidden.masked_fill(~mask_t.bool().unsqueeze(-1), 0.0)
        return {"hidden_states": hidden.float().cpu().numpy(), "attention_mask": mask}

    def warmup_items(self, n: int) -> list[Any]:
        if self.tokenizer is not None:
            return self.tokenizer.warmup_items(n)
        rng = np.random.default_rng(0)
        row = rng.standard_normal((self.max_seq_length, self.hidden_size), dtype=np.float32)
        return [row] * n


def split_hidden(
    inputs: dict[str, np.ndarray], hidden_size: int, max_seq_length: int
) -> list[np.ndarray]:
    """Validate a stage's inputs; one ``[L_i, H]`` row per item, trimmed to its mask.

    Raises:
        InvalidInput: on a missing input, a wrong datatype or shape, inputs that disagree
            on ``[N, L]``, or a mask that is not ones followed by right padding.
    """
    hidden = inputs.get("hidden_states")
    mask = inputs.get("attention_mask")
    if hidden is None or mask is None:
        name = "hidden_states" if hidden is None else "attention_mask"
        raise InvalidInput(f"missing input {name!r}; got {sorted(inputs)}")
    if hidden.dtype != np.float32:
        raise InvalidInput(f"input 'hidden_states' must have datatype FP32, got {hidden.dtype}")
    if mask.dtype != np.int64:
        raise InvalidInput(f"input 'attention_mask' must have datatype INT64, got {mask.dtype}")
    if hidden.ndim != 3 or hidden.shape[2] != hidden_size:
        raise InvalidInput(
            f"input 'hidden_states' must have shape [N, L, {hidden_size}], got {list(hidden.shape)}"
        )
    if mask.shape != hidden.shape[:2]:
        raise InvalidInput(
            f"input 'attention_mask' must have shape [N, L] = {list(hidden.shape[:2])} "
            f"like 'hidden_states', got {list(mask.shape)}"
        )
    if hidden.shape[0] == 0:
        raise InvalidInput("input 'hidden_states' is empty")
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]):
        raise InvalidInput("input 'attention_mask' must be ones then zeros (right padding)")
    if lengths.min() < 1 or lengths.max() > max_seq_length:
        raise InvalidInput(
            f"input 'attention_mask' rows must hold 1 to {max_seq_length} tokens, "
            f"got {int(lengths.min())} to {int(lengths.max())}"
        )
    return [hidden[i, :length] for i, length in enumerate(lengths.tolist())]


def pad_hidden(items: list[np.ndarray], hidden_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``[L_i, H]`` rows with zeros; returns ``(hidden_states, attention_mask)``."""
    longest = max(len(x) for x in items)
    hidden = np.zeros((len(items), longest, hidden_size), dtype=np.float32)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    for i, x in enumerate(items):
        hidden[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return hidden, mask
