"""Pieces every config and wire schema shares: the strict base model and the naming
rule for models and pipelines (names become folder names and URL path segments)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are an error, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise ``ValueError``.

    Names become folder names in the repository and URL path segments, so path
    separators, ``..`` and upper case are refused.
    """
    if not _MODEL_NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use lower-case letters, digits, '-' and '_' "
            "(1-63 characters, no path separators or '..')"
        )
    return name


def model_route_prefix(name: str) -> str:
    """Route prefix of a model's (or pipeline's) application: it answers its own OIP
    routes there, so a request takes one hop from the ingress."""
    return f"/v2/models/{name}"
