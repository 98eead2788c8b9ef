"""Declared torch architectures for ``safetensors`` state dicts.

A manifest names one of these plus its kwargs; the state dict must match exactly
(``strict=True``), so partial weights are refused.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MLP(nn.Module):
    """Feed-forward network: Linear -> GELU -> ... -> Linear."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int) -> None:
        super().__init__()
        dims = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}
