"""A declared architecture run with numpy from a safetensors state dict: the same
contract and outputs as ``TorchModuleAdapter`` (within 1e-5), without importing torch,
which costs a process about 1 s and 200 MiB (``models/threads.py``). For the tiny heads
of a pipeline on a CPU replica, where torch is all overhead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from serve_app.errors import IntegrityError
from serve_app.models.declared import DeclaredModuleAdapter
from serve_app.repository.manifest import Manifest

NUMPY_ARCHITECTURES = frozenset({"mlp"})
"""Declared architectures this adapter runs (``models/architectures.py`` names)."""


_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized erf (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7)."""
    z = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * z)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-z * z))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * Phi(x)``, as ``torch.nn.GELU()`` computes it (erf in float64)."""
    wide = x.astype(np.float64)
    return (0.5 * wide * (1.0 + erf(wide / math.sqrt(2.0)))).astype(x.dtype)


def mlp_layers(
    state: dict[str, np.ndarray], in_features: int, hidden: list[int], out_features: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight.T, bias)`` per Linear of ``architectures.MLP`` from its state dict.

    Raises:
        ValueError: a key is missing or extra, or a shape differs (as ``strict=True``).
    """
    dims = [in_features, *hidden, out_features]
    expected: dict[str, tuple[int, ...]] = {}
    for i in range(len(dims) - 1):
        index = 2 * i  # Linear, GELU, Linear, ...: Linears sit at even positions
        expected[f"net.{index}.weight"] = (dims[i + 1], dims[i])
        expected[f"net.{index}.bias"] = (dims[i + 1],)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"missing keys {missing}, unexpected keys {extra}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise ValueError(f"{key} has shape {list(state[key].shape)}, expected {list(shape)}")
    return [
        (
            np.ascontiguousarray(state[f"net.{2 * i}.weight"].T, dtype=np.float32),
            state[f"net.{2 * i}.bias"].astype(np.float32),
        )
        for i in range(len(dims) - 1)
    ]


class NumpyModuleAdapter(DeclaredModuleAdapter):
    """``TorchModuleAdapter``'s contract on numpy: FP32 ``input`` [N, in_features] in;
    ``output``, or for a ``classification`` head ``probabilities``, ``label`` and
    ``confidence`` out."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        super().__init__(folder, manifest, NUMPY_ARCHITECTURES, "numpy_safetensors", "cpu")
        kwargs = self.architecture.kwargs
        try:
            self.layers = mlp_layers(
                load_file(str(self.weights)),
                self.in_features,
                [int(h) for h in kwargs.get("hidden", [])],
                int(kwargs["out_features"]),
            )
        except ValueError as e:
            raise IntegrityError(
                f"{self.where}: {self.weights} does not match {self.architecture.name}: {e}"
            ) from None

    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        x = np.stack(items)
        for i, (weight_t, bias) in enumerate(self.layers):
            x = x @ weight_t + bias
            if i < len(self.layers) - 1:
                x = gelu(x)
        if self.labels is None:
            return {"output": x}
        shifted = np.exp(x - x.max(axis=-1, keepdims=True))
        probs = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
        top = probs.argmax(axis=-1)
        return {
            "probabilities": probs,
            "label": self.labels[top],
            "confidence": probs[np.arange(len(top)), top],
        }
