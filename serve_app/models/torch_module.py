"""A torch module built from a declared architecture and a safetensors state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from serve_app.errors import IntegrityError
from serve_app.models.architectures import ARCHITECTURES
from serve_app.models.declared import DeclaredModuleAdapter
from serve_app.repository.manifest import Manifest


class TorchModuleAdapter(DeclaredModuleAdapter):
    """FP32 tensor in (``input``, shape [N, in_features]); FP32 ``output`` out, or for a
    ``classification`` head ``probabilities``, the top ``label`` and its ``confidence``."""

    def __init__(self, folder: Path, manifest: Manifest, device: str) -> None:
        super().__init__(folder, manifest, ARCHITECTURES, "pytorch_safetensors", device)
        self.device = torch.device(device)
        arch = self.architecture
        module = ARCHITECTURES[arch.name](**arch.kwargs)
        state = load_file(str(self.weights), device=str(self.device))
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise IntegrityError(
                f"{self.where}: {self.weights} does not match {arch.name}: {e}"
            ) from None
        self.module = module.eval().to(self.device)

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
