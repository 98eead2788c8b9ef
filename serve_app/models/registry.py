"""Pick the adapter for a verified version from its manifest's format and task."""

from __future__ import annotations

from collections.abc import Callable

from serve_app.errors import ManifestError
from serve_app.models.base import ModelAdapter
from serve_app.models.threads import apply_to_torch
from serve_app.repository.loader import VerifiedVersion


def load_adapter(version: VerifiedVersion, device: str, runtime: str = "auto") -> ModelAdapter:
    """Load the model of a verified version onto ``device``; ``runtime`` is
    ``ModelConfig.runtime`` (``auto`` runs a small declared architecture on numpy when
    the device is the CPU)."""
    m = version.manifest
    if m.format == "huggingface" and m.task == "sentence-embedding":
        from serve_app.models.hf_embedding import HFEmbeddingAdapter

        apply_to_torch()
        return HFEmbeddingAdapter(version.path, device)
    if m.format == "onnx" and m.task == "sentence-embedding":
        from serve_app.models.onnx_embedding import OnnxEmbeddingAdapter

        return OnnxEmbeddingAdapter(version.path, device)
    if m.format == "safetensors" and runtime == "auto" and device == "cpu":
        from serve_app.models.numpy_module import NUMPY_ARCHITECTURES, NumpyModuleAdapter

        if m.architecture is not None and m.architecture.name in NUMPY_ARCHITECTURES:
            return NumpyModuleAdapter(version.path, m)
    if m.format == "safetensors":
        from serve_app.models.torch_module import TorchModuleAdapter

        apply_to_torch()
        return TorchModuleAdapter(version.path, m, device)
    raise ManifestError(
        f"model {m.name!r} version {m.version}: no adapter for format {m.format!r} task {m.task!r}"
    )


def load_stage_adapter(
    version: VerifiedVersion, device: str, layers: tuple[int, int]
) -> ModelAdapter:
    """Load encoder layers ``layers`` of a Hugging Face model: only that stage's tensors."""
    m = version.manifest
    if m.format != "huggingface":
        raise ManifestError(
            f"model {m.name!r} version {m.version}: pipeline stages need the huggingface "
            f"format (one safetensors state dict), got {m.format!r}"
        )
    from serve_app.models.hf_stages import HFEncoderStageAdapter

    apply_to_torch()
    return HFEncoderStageAdapter(version.path, device, layers)


def adapter_loader_for(
    layers: tuple[int, int] | None, runtime: str = "auto"
) -> Callable[[VerifiedVersion, str], ModelAdapter]:
    """The loader of a whole model (``layers`` None) or of one stage."""
    if layers is None:
        return lambda version, device: load_adapter(version, device, runtime)
    return lambda version, device: load_stage_adapter(version, device, layers)
