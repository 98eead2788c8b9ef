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

from serve_app.errors import IntegrityError, InvalidInput, ManifestError
from serve_app.models.base import ModelAdapter, ModelInfo
from serve_app.models.specs import declared_specs
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


class NumpyModuleAdapter(ModelAdapter):
    """``TorchModuleAdapter``'s contract on numpy: FP32 ``input`` [N, in_features] in;
    ``output``, or for a ``classification`` head ``probabilities``, ``label`` and
    ``confidence`` out."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        arch = manifest.architecture
        where = f"model {manifest.name!r} version {manifest.version}"
        if arch is None or arch.name not in NUMPY_ARCHITECTURES:
            raise ManifestError(f"{where}: numpy does not run architecture {arch and arch.name!r}")
        if len(manifest.weights) != 1:
            raise ManifestError(f"{where}: expected one safetensors weight file")
        weights = folder / manifest.weights[0]
        kwargs = arch.kwargs
        try:
            self.layers = mlp_layers(
                load_file(str(weights)),
                int(kwargs["in_features"]),
                [int(h) for h in kwargs.get("hidden", [])],
                int(kwargs["out_features"]),
            )
        except ValueError as e:
            raise IntegrityError(f"{where}: {weights} does not match {arch.name}: {e}") from None
        self.in_features = int(kwargs["in_features"])
        specs = declared_specs(folder, manifest)
        self.labels: np.ndarray | None = None
        if manifest.task == "classification":
            self.labels = np.array(manifest.metadata["labels"], dtype=object)
        self.info = ModelInfo(
            platform="numpy_safetensors",
            inputs=list(specs.inputs),
            outputs=list(specs.outputs),
            device="cpu",
            extra={"architecture": arch.name, "task": manifest.task},
        )

    def prepare(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        x = inputs.get("input")
        if x is None:
            raise InvalidInput(f"missing input 'input'; got {sorted(inputs)}")
        if x.dtype != np.float32:
            raise InvalidInput("input 'input' must have datatype FP32")
        if x.ndim != 2 or x.shape[1] != self.in_features or x.shape[0] == 0:
            raise InvalidInput(
                f"input 'input' must have shape [N, {self.in_features}], got {list(x.shape)}"
            )
        return list(x)

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

    def warmup_items(self, n: int) -> list[Any]:
        return [np.zeros(self.in_features, dtype=np.float32)] * n
