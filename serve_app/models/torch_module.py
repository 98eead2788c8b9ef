"""A torch module built from a declared architecture and a safetensors state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from serve_app.errors import IntegrityError, InvalidInput, ManifestError
from serve_app.models.architectures import ARCHITECTURES
from serve_app.models.base import ModelAdapter, ModelInfo
from serve_app.models.specs import declared_specs
from serve_app.repository.manifest import Manifest


class TorchModuleAdapter(ModelAdapter):
    """FP32 tensor in (``input``, shape [N, in_features]); FP32 ``output`` out, or for a
    ``classification`` head ``probabilities``, the top ``label`` and its ``confidence``."""

    def __init__(self, folder: Path, manifest: Manifest, device: str) -> None:
        arch = manifest.architecture
        where = f"model {manifest.name!r} version {manifest.version}"
        if arch is None or arch.name not in ARCHITECTURES:
            raise ManifestError(f"{where}: unknown architecture {arch and arch.name!r}")
        if len(manifest.weights) != 1:
            raise ManifestError(f"{where}: expected one safetensors weight file")
        weights = folder / manifest.weights[0]
        self.device = torch.device(device)
        module = ARCHITECTURES[arch.name](**arch.kwargs)
        state = load_file(str(weights), device=str(self.device))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise IntegrityError(f"{where}: {weights} does not match {arch.name}: {e}") from None
        self.module = module.eval().to(self.device)
        self.in_features = int(arch.kwargs["in_features"])
        specs = declared_specs(folder, manifest)
        self.labels: np.ndarray | None = None
        if manifest.task == "classification":
            self.labels = np.array(manifest.metadata["labels"], dtype=object)
        self.info = ModelInfo(
            platform="pytorch_safetensors",
            inputs=list(specs.inputs),
            outputs=list(specs.outputs),
            device=str(self.device),
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

    @torch.inference_mode()
    def forward(self, items: list[Any]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.stack(items)).to(self.device)
        logits = self.module(x).float()
        if self.labels is None:
            return {"output": logits.cpu().numpy()}
        probs = torch.softmax(logits, dim=-1)
        confidence, top = probs.max(dim=-1)
        return {
            "probabilities": probs.cpu().numpy(),
            "label": self.labels[top.cpu().numpy()],
            "confidence": confidence.cpu().numpy(),
        }

    def warmup_items(self, n: int) -> list[Any]:
        return [np.zeros(self.in_features, dtype=np.float32)] * n
