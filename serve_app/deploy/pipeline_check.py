"""Type-check pipelines against the tensor specs of the published models (manifests and
config files only; no weights are read). Used by ``serve-app validate``, the demo
before it deploys, and each pipeline router when it starts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from serve_app.config import AppConfig
from serve_app.graph.tensor_types import PipelineSpecs, infer_specs
from serve_app.models.base import ModelSpecs
from serve_app.repository.loader import ModelRepository


def read_model_specs(
    root: str | Path, models: Mapping[str, tuple[str, Literal["latest"] | int]]
) -> dict[str, ModelSpecs]:
    """Specs of each model, given ``name -> (repository folder, version policy)``.

    Raises:
        RepositoryError: a model or version is missing (the message names it).
    """
    from serve_app.models.specs import declared_specs

    repo = ModelRepository(root)
    specs = {}
    for name, (folder, policy) in models.items():
        version = repo.resolve(folder, policy)
        specs[name] = declared_specs(
            repo.root / folder / str(version), repo.read_manifest(folder, version)
        )
    return specs


def check_pipelines(app: AppConfig, root: str | Path | None = None) -> list[str]:
    """Type-check every pipeline of ``app``; returns one summary line per pipeline.

    Raises:
        ConfigError: a datatype or shape mismatch (names the pipeline and node).
    """
    models = {m.name: (m.folder, m.version) for m in app.models}
    lines = []
    for p in app.pipelines:
        used = {n.model for n in p.nodes if n.kind == "model"}  # type: ignore[union-attr]
        specs: PipelineSpecs = infer_specs(
            p, read_model_specs(root or app.repository.root, {m: models[m] for m in used})
        )
        outs = ", ".join(f"{s.name} {s.datatype}{list(s.shape)}" for s in specs.outputs)
        lines.append(f"pipeline {p.name}: {len(p.nodes)} nodes OK -> {outs}")
    return lines
