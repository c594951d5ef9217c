"""A task-conditioned hypernetwork that emits every weight of a target MLP, and that MLP run functionally.

von
Oswald et al. (2020, "Continual learning with hypernetworks"), non-chunked form as HyperCRL uses it: a task
embedding goes through an MLP trunk, then one linear head per target tensor (each weight matrix and each bias
vector) whose output is reshaped into that tensor. The target network owns no parameters; ``mlp_forward`` runs
it on a list of given tensors, laid out like ``robocl.nets.MLP``'s state dict (``nn.Linear``: (out, in)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp_shapes(in_dim: int, hidden: Sequence[int], out_dim: int) -> list[tuple[int, ...]]:
    """Tensor shapes of an MLP in layer order: weight (out, in), then bias (out,), per linear layer."""
    shapes: list[tuple[int, ...]] = []
    prev = in_dim
    for width in (*hidden, out_dim):
        shapes += [(width, prev), (width,)]
        prev = width
    return shapes


def mlp_forward(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(..., in) -> (..., out) through linear layers with the given (weight, bias) pairs; linear output.

    ``activation`` between layers defaults to ReLU.
    """
    n_layers = len(weights) // 2
    for i in range(n_layers):
        x = F.linear(x, weights[2 * i], weights[2 * i + 1])
        if i < n_layers - 1:
            # in place by default: the linear output is a fresh tensor, and it saves a copy per layer
            x = F.relu(x, inplace=True) if activation is None else activation(x)
    return x


class HyperNetwork(nn.Module):
    """h(e; theta): (n, embedding_dim) task embeddings -> one (n, *shape) tensor per target shape."""

    def __init__(
        self,
        target_shapes: Sequence[tuple[int, ...]],
        embedding_dim: int = 10,
        hidden: Sequence[int] = (50, 50),
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        self.target_shapes = [tuple(s) for s in target_shapes]
        self.embedding_dim = embedding_dim
        layers: list[nn.Module] = []
        prev = embedding_dim
        for width in hidden:  # unlike robocl.nets.MLP the trunk ends in an activation: the heads follow it
            layers += [nn.Linear(prev, width), activation()]
            prev = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(prev, _numel(s)) for s in self.target_shapes)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # HyperCRL: Xavier-uniform matrices, zero biases (hyperfan off)
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def n_target_weights(self) -> int:
        return sum(_numel(s) for s in self.target_shapes)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """(n, E) -> [(n, *shape) per target tensor]; one (E,) embedding gives unbatched tensors."""
        single = embedding.dim() == 1
        h = self.trunk(embedding.unsqueeze(0) if single else embedding)  # (n, hidden[-1])
        out = [
            head(h).view(h.shape[0], *shape)
            for head, shape in zip(self.heads, self.target_shapes, strict=True)
        ]
        return [w[0] for w in out] if single else out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
