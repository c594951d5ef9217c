"""A causal multi-horizon critic over action chunks built from MLPs (the default of CO-RFT's stage 2).

Q^(j)(o, a_1..a_j) for any prefix j = 1..h: an ordinary Q(s, a) MLP on the concatenation [feat, a_1, ...,
a_j], whose first layer ``W_f feat + sum_{k<=j} W_k a_k`` is one matmul of the chunk with its steps after
j zeroed, and whose other layers are shared by the prefixes (with a learned embedding of j, since a short
prefix is not a long one with zero actions). Output j therefore depends on a_1..a_j only, as in the
transformer critic (:class:`robocl.nets.transformer.ChunkCritic`), at about a fifth of its arithmetic, and
the TD loss can train a few drawn prefixes of each chunk without computing the others. LayerNorm after each
hidden layer, as offline-to-online critics use it against over-estimation (Ball et al., RLPD, 2023).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn


class PrefixMLPCritic(nn.Module):
    """(B, feat_dim) context + (B, h, A) chunk -> (B, h) Q^(j); ``q_chunk``: Q^(h) alone."""

    def __init__(self, feat_dim: int, action_dim: int, horizon: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        width = hidden[0]
        self.context = nn.Linear(feat_dim, width)
        bound = 1 / math.sqrt(feat_dim + horizon * action_dim)  # nn.Linear's init for the full concatenation
        self.action_weight = nn.Parameter(torch.empty(horizon, action_dim, width).uniform_(-bound, bound))
        self.prefix_emb = nn.Parameter(torch.zeros(horizon, width))
        layers: list[nn.Module] = [nn.LayerNorm(width), nn.ReLU()]
        for a, b in itertools.pairwise(hidden):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        layers.append(nn.Linear(hidden[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        every = torch.arange(1, chunk.shape[1] + 1, device=chunk.device).expand(len(chunk), -1)
        return self.q_prefix(feat, chunk, every)

    def q_chunk(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """Q^(h) of whole chunks, ``forward(feat, chunk)[:, -1]`` without the other prefixes: (B, h, A) ->
        (B,), or N chunks per context (B, N, h, A) -> (B, N) with the context's layer computed once."""
        return self.mlp(self._first_layer(feat, chunk, None)).squeeze(-1)

    def q_prefix(self, feat: torch.Tensor, chunk: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """Q^(length) of each row's first ``length`` actions, ``forward(...)[b, length - 1]`` without the
        other prefixes: one length per row (B,) -> (B,), or S per row (B, S) -> (B, S), each an ordinary MLP
        on [feat, a_1..a_length] (CO-RFT's TD loss: :func:`robocl.algos.chunk_losses.td_prefixes`); or N
        chunks per context (B, N, h, A) with a length each (B, N) -> (B, N), the context's layer computed
        once (best-of-N ranking on the executed actions)."""
        return self.mlp(self._first_layer(feat, chunk, length)).squeeze(-1)

    def q_many(self, *queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> list[torch.Tensor]:
        """Several queries (feat, chunk, length): ``q_prefix``, or ``q_chunk`` where length is None, with
        their rows through the shared layers in one pass (CO-RFT's TD and conservative terms): one kernel per
        layer, forward and backward, instead of one per query (at most a few per cent of a stage-2 update on
        a CPU: 8.35 against 8.41 ms median in the benchmark's speed run, 8.0-8.2 against 8.3-10.3 ms in
        interleaved runs on an idle 2-core machine)."""
        first = [self._first_layer(*query) for query in queries]
        out = self.mlp(torch.cat([x.reshape(-1, x.shape[-1]) for x in first])).squeeze(-1)
        sizes = [x[..., 0].numel() for x in first]
        return [q.view(x.shape[:-1]) for q, x in zip(out.split(sizes), first, strict=True)]

    def _first_layer(
        self, feat: torch.Tensor, chunk: torch.Tensor, length: torch.Tensor | None
    ) -> torch.Tensor:
        """The first hidden layer before its LayerNorm, W_f feat + sum_{k <= j} W_k a_k + e_j: (..., width)
        for the rows of q_prefix (``length``) or q_chunk (None: j = h)."""
        h, a, width = self.action_weight.shape
        context = self.context(feat)
        if length is None:
            if chunk.dim() == 4:
                context = context.unsqueeze(1)
            return context + chunk.flatten(-2) @ self.action_weight.view(h * a, width) + self.prefix_emb[-1]
        check_prefix_query(chunk, length)
        kept = torch.arange(h, device=chunk.device) < length.unsqueeze(-1)  # (B, [S or N,] h)
        if length.dim() == 2 and chunk.dim() == 3:  # S prefixes of each row's one chunk
            chunk = chunk.unsqueeze(1)
        steps = (chunk * kept.unsqueeze(-1)).flatten(-2) @ self.action_weight.view(h * a, width)
        context = context.view(len(feat), *(1,) * (length.dim() - 1), width)
        return context + steps + self.prefix_emb[length - 1]


def check_prefix_query(chunk: torch.Tensor, length: torch.Tensor) -> None:
    """Raise unless ``length`` fits ``chunk`` in one of q_prefix's forms: (B,) or (B, S) lengths for (B, h,
    A) chunks, (B, N) for (B, N, h, A). Broadcasting would otherwise pair (B, N, h, A) chunks with (B,)
    lengths whenever N == B or B == 1, and score the wrong prefixes without a word."""
    if chunk.dim() == 3:
        fits = length.dim() in (1, 2) and length.shape[0] == chunk.shape[0]
    else:
        fits = chunk.dim() == 4 and length.shape == chunk.shape[:2]
    if not fits:
        raise ValueError(
            f"q_prefix: lengths of shape {tuple(length.shape)} do not fit chunks {tuple(chunk.shape)}:"
            " want (B,) or (B, S) lengths for (B, h, A) chunks, (B, N) for (B, N, h, A)"
        )
