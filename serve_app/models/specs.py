"""Tensor specs of a published model version, read from its manifest and config files
without loading weights: what a pipeline is type-checked against before anything runs.

Each adapter reports the same specs once loaded (``ModelAdapter.info``); a test keeps the
two in agreement.
"""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.errors import ManifestError
from serve_app.models.base import ModelSpecs, TensorSpec
from serve_app.models.text import TEXT_INPUT
from serve_app.repository.manifest import Manifest


def classification_outputs(num_labels: int) -> tuple[TensorSpec, ...]:
    """Outputs of a classification head with ``num_labels`` classes."""
    return (
        TensorSpec("probabilities", "FP32", (-1, num_labels)),
        TensorSpec("label", "BYTES", (-1,)),
        TensorSpec("confidence", "FP32", (-1,)),
    )


def _embedding_dim(folder: Path, manifest: Manifest) -> int:
    dim = manifest.metadata.get("embedding_dim")
    if isinstance(dim, int):
        return dim
    config = folder / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])
    onnx_file = folder / "model.onnx"
    if onnx_file.is_file():
        import onnx

        last = onnx.load(str(onnx_file)).graph.output[0].type.tensor_type.shape.dim[-1]
        if last.dim_value:
            return int(last.dim_value)
    raise ManifestError(
        f"model {manifest.name!r} version {manifest.version}: cannot tell the embedding "
        f"size (no embedding_dim in the manifest, no config.json in {folder})"
    )


def declared_specs(folder: Path, manifest: Manifest) -> ModelSpecs:
    """Inputs and outputs of the model in ``folder`` as its adapter will declare them.

    Raises:
        ManifestError: the manifest does not say enough (e.g. labels of a classifier).
    """
    where = f"model {manifest.name!r} version {manifest.version}"
    if manifest.task == "sentence-embedding":
        dim = _embedding_dim(folder, manifest)
        return ModelSpecs((TEXT_INPUT,), (TensorSpec("embedding", "FP32", (-1, dim)),))
    arch = manifest.architecture
    if manifest.format != "safetensors" or arch is None:
        raise ManifestError(f"{where}: no tensor specs for format {manifest.format!r}")
    in_features = int(arch.kwargs["in_features"])
    out_features = int(arch.kwargs["out_features"])
    inputs = (TensorSpec("input", "FP32", (-1, in_features)),)
    if manifest.task == "classification":
        labels = manifest.metadata.get("labels")
        if not isinstance(labels, list) or len(labels) != out_features:
            raise ManifestError(
                f"{where}: a classification head needs metadata.labels with "
                f"{out_features} names, got {labels!r}"
            )
        return ModelSpecs(inputs, classification_outputs(out_features))
    return ModelSpecs(inputs, (TensorSpec("output", "FP32", (-1, out_features)),))
