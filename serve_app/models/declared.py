"""What every adapter of a declared architecture shares, whatever runs it (torch or
numpy): the manifest checks, the one weight file, the tensor specs and labels, and the
FP32 ``input`` [N, in_features] contract."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.errors import InvalidInput, ManifestError
from serve_app.models.base import ModelAdapter, ModelInfo
from serve_app.models.specs import declared_specs
from serve_app.repository.manifest import Architecture, Manifest


class DeclaredModuleAdapter(ModelAdapter):
    """Base of the declared-architecture adapters. Subclasses load ``self.weights`` and
    implement ``forward``.

    Args:
        folder: The verified version's folder.
        manifest: Its manifest (format ``safetensors``, an architecture).
        architectures: Architecture names the subclass runs.
        platform: What metadata reports as ``platform``.
        device: Where it runs.
    """

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        architectures: Collection[str],
        platform: str,
        device: str,
    ) -> None:
        arch = manifest.architecture
        self.where = f"model {manifest.name!r} version {manifest.version}"
        if arch is None or arch.name not in architectures:
            raise ManifestError(
                f"{self.where}: {platform} does not run architecture {arch and arch.name!r}"
            )
        if len(manifest.weights) != 1:
            raise ManifestError(f"{self.where}: expected one safetensors weight file")
        self.architecture: Architecture = arch
        self.weights = folder / manifest.weights[0]
        self.in_features = int(arch.kwargs["in_features"])
        specs = declared_specs(folder, manifest)
        self.labels: np.ndarray | None = None
        if manifest.task == "classification":
            self.labels = np.array(manifest.metadata["labels"], dtype=object)
        self.info = ModelInfo(
            platform=platform,
            inputs=list(specs.inputs),
            outputs=list(specs.outputs),
            device=device,
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

    def warmup_items(self, n: int) -> list[Any]:
        return [np.zeros(self.in_features, dtype=np.float32)] * n
