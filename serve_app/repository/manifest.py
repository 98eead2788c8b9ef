"""The ``manifest.json`` of one model version: format, files with size and sha256."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1

ModelFormat = Literal["huggingface", "safetensors", "onnx"]
"""``huggingface``: a transformers folder (config + safetensors + tokenizer);
``safetensors``: a state dict for a declared architecture; ``onnx``: an ONNX program
exported from a Hugging Face folder, run with ONNX Runtime."""

ModelTask = Literal["sentence-embedding", "tensor", "classification"]
"""``classification``: a ``safetensors`` head whose manifest metadata lists ``labels``; it
answers probabilities, the top label and its confidence."""


class FileEntry(BaseModel):
    """One file of a version, relative to the version folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="POSIX path relative to the version folder.")
    size_bytes: int = Field(ge=0, description="Exact file size.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex sha256.")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or v in ("", ".") or "\\" in v:
            raise ValueError(f"manifest file path must be relative and inside the version: {v!r}")
        return v


class Architecture(BaseModel):
    """A declared torch architecture for ``safetensors`` state dicts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Key in serve_app.models.architectures.ARCHITECTURES.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")


class Manifest(BaseModel):
    """What a version folder holds. Written last by ``publish``; its presence marks a
    complete version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: str
    version: int = Field(ge=1)
    format: ModelFormat
    task: ModelTask
    architecture: Architecture | None = Field(
        None, description="Required for the safetensors format."
    )
    weights: list[str] = Field(
        default_factory=list, description="Files that hold weights (subset of files)."
    )
    files: list[FileEntry]
    created_at: str = Field(description="ISO-8601 UTC creation time.")
    source: str = Field(description="Where the files came from.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Format-specific facts (dims, export settings)."
    )

    @property
    def total_bytes(self) -> int:
        """Sum of all file sizes."""
        return sum(f.size_bytes for f in self.files)
