"""A plain MLP: the building block of state policies, critics and dynamics models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with ``activation`` between them; optional LayerNorm after every hidden layer."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        activation: type[nn.Module] = nn.ReLU,
        layer_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers.append(nn.Linear(prev, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(activation())
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)
