"""Transformer pieces of the VLA-style policy: a token trunk that fuses cameras, proprioception and language,
and a causal critic over action chunks.

:class:`TokenTrunk` builds one token per low-dimensional observation and one per camera for each of the
``n_obs`` history steps, plus one language token, adds learned time and type embeddings, and reads the
fused state out of an extra learned token (BERT's CLS readout). :class:`ChunkCritic` is the multi-horizon
critic of T-SAC ("Chunking the Critic", arXiv 2503.03660): tokens ``[context, a_1, ..., a_h]`` under a
causal mask, so output j sees only ``a_1..a_j`` and estimates Q^(j)(o, a_{1..j}).

The critic runs its layers through :func:`encoder_forward` rather than ``nn.TransformerEncoder.forward``: the
same parameters and maths (pre-norm, ReLU, no dropout), but explicit attention, which on CPU is faster than
torch's fused kernel for sequences of h+1 <= ~30 tokens, and a ``last_only`` mode for Q^(h) alone that skips
the final layer's queries and MLP at the other h positions (most critic calls in CO-RFT need only Q^(h)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robocl.nets.critic import check_prefix_query
from robocl.nets.vision import ConvEncoder


def _encoder(d_model: int, n_layers: int, n_heads: int, dropout: float = 0.0) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model, n_heads, 4 * d_model, dropout=dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


def encoder_forward(
    encoder: nn.TransformerEncoder, x: torch.Tensor, mask: torch.Tensor, *, last_only: bool = False
) -> torch.Tensor:
    """What ``encoder(x, mask=mask)`` computes for an :func:`_encoder` stack (pre-norm, ReLU, dropout 0),
    equal up to float rounding; (B, L, d) -> (B, L, d), or (B, 1, d) for the last position only.

    ``last_only``: the final layer computes keys and values at every position but the query, attention
    output and MLP at the last one only (the last position attends to all, so no mask is needed there).
    """
    layers = encoder.layers
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        B, L, d = x.shape
        n_heads = attn.num_heads
        h = layer.norm1(x)
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3d)
        q, k, v = qkv.view(B, L, 3, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)  # each (B, heads, L, dh)
        scores_mask: torch.Tensor | None = mask
        if last_only and i == len(layers) - 1:
            q, x, scores_mask = q[:, :, -1:], x[:, -1:], None
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // n_heads)  # (B, heads, Lq, L)
        if scores_mask is not None:
            scores = scores.masked_fill(scores_mask, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, d)
        x = x + attn.out_proj(out)
        x = x + layer.linear2(F.relu(layer.linear1(layer.norm2(x))))
    return x


class TokenTrunk(nn.Module):
    """(normalised low-dim history, frames per camera, language embedding) -> fused feature (B, d_model).

    Inputs: ``lowdim`` (B, n_obs, D); ``images[key]`` uint8 (B, n_obs, H, W, 3) for every camera key;
    ``lang`` (B, lang_dim) or None when built with ``lang_dim=0``. The encoder of ``detector_camera``
    (None: no camera) also locates ``detected`` things in its frames
    (:class:`~robocl.nets.vision.ConvEncoder`), conditioned on ``detector_instruction`` (B, instruction_dim)
    when built with ``instruction_dim``.
    """

    def __init__(
        self,
        lowdim_dim: int,
        camera_keys: Sequence[str],
        lang_dim: int,
        n_obs: int,
        *,
        d_model: int,
        n_layers: int,
        n_heads: int,
        vision_channels: Sequence[int],
        aug_shift: int,
        dropout: float = 0.0,
        detector_camera: str | None = None,
        detected: int = 1,
        instruction_dim: int = 0,
    ) -> None:
        super().__init__()
        self.camera_keys = list(camera_keys)
        if detector_camera is not None and detector_camera not in self.camera_keys:
            raise ValueError(f"detector camera {detector_camera!r} is not one of {self.camera_keys}")
        # An MLP projector per low-dim token (as Octo/RDT tokenise proprioception): one linear map leaves the
        # state's nonlinear features to the attention layers, which learn them slowly from few demos.
        self.lowdim = (
            nn.Sequential(nn.Linear(lowdim_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
            if lowdim_dim
            else None
        )

        # ModuleDict keys cannot contain dots, and store feature names do.
        def encoder(key: str) -> ConvEncoder:
            here = key == detector_camera
            return ConvEncoder(
                d_model, vision_channels, aug_shift, detected if here else 0, instruction_dim if here else 0
            )

        self.cameras = nn.ModuleDict({k.replace(".", "__"): encoder(k) for k in self.camera_keys})
        self.lang = nn.Linear(lang_dim, d_model) if lang_dim else None
        n_types = len(self.camera_keys) + (self.lowdim is not None)
        if n_types == 0 and self.lang is None:
            raise ValueError("the trunk needs a low-dimensional observation, a camera or the instruction")
        self.time_emb = nn.Parameter(torch.randn(n_obs, 1, d_model) * 0.02)  # broadcast over token types
        self.type_emb = nn.Parameter(torch.randn(n_types, d_model) * 0.02)
        self.readout = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.encoder = _encoder(d_model, n_layers, n_heads, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.out_dim = d_model

    def forward(
        self,
        lowdim: torch.Tensor | None,
        images: Mapping[str, torch.Tensor],
        lang: torch.Tensor | None,
        detector_instruction: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the fused feature (B, d_model), the detector's pixels (B, n_obs, detected, 2) or None without
        one)."""
        per_step: list[torch.Tensor] = []  # each (B, n_obs, d)
        pixels = None
        if self.lowdim is not None:
            assert lowdim is not None
            per_step.append(self.lowdim(lowdim))
        for key in self.camera_keys:
            frames = images[key]  # (B, n_obs, H, W, 3)
            B, T = frames.shape[:2]
            said = None if detector_instruction is None else detector_instruction.repeat_interleave(T, 0)
            feature, pixel = self.cameras[key.replace(".", "__")].encode(frames.flatten(0, 1), said)
            per_step.append(feature.view(B, T, -1))
            if pixel is not None:
                pixels = pixel.view(B, T, -1, 2)
        tokens = []
        if per_step:
            obs_tokens = torch.stack(per_step, dim=2) + self.time_emb + self.type_emb  # (B, n_obs, types, d)
            tokens.append(obs_tokens.flatten(1, 2))
        if self.lang is not None:
            assert lang is not None
            tokens.append(self.lang(lang).unsqueeze(1))
        tokens.insert(0, self.readout.expand(tokens[0].shape[0], -1, -1))
        out = self.encoder(torch.cat(tokens, dim=1))
        return self.norm(out[:, 0]), pixels


class ChunkCritic(nn.Module):
    """Q^(j)(o, a_{1..j}) for j = 1..h from a context feature (B, feat_dim) and a chunk (B, h, A).

    Padded steps past an episode's end need no masking: under the causal mask Q^(j) reads a_1..a_j only,
    and CO-RFT uses Q^(j) only for prefixes inside the episode.
    """

    def __init__(
        self, feat_dim: int, action_dim: int, horizon: int, *, d_model: int, n_layers: int, n_heads: int
    ) -> None:
        super().__init__()
        self.context = nn.Linear(feat_dim, d_model)
        self.action = nn.Linear(action_dim, d_model)
        self.pos_emb = nn.Parameter(torch.randn(horizon + 1, d_model) * 0.02)
        self.encoder = _encoder(d_model, n_layers, n_heads)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, 1))
        self.register_buffer(
            "causal_mask",
            torch.triu(torch.ones(horizon + 1, horizon + 1, dtype=torch.bool), 1),
            persistent=False,
        )

    def _tokens(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.context(feat).unsqueeze(1), self.action(chunk)], dim=1)
        return tokens + self.pos_emb  # (B, h+1, d)

    def forward(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        out = encoder_forward(self.encoder, self._tokens(feat, chunk), self.causal_mask)
        return self.head(out[:, 1:]).squeeze(-1)  # (B, h): position j holds Q^(j)

    def q_chunk(self, feat: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """Q^(h) of whole (unpadded) chunks, ``forward(feat, chunk)[:, -1]`` at about 60% of the cost: (B, h,
        A) -> (B,), or N chunks per context (B, N, h, A) -> (B, N)."""
        if chunk.dim() == 4:
            return self.q_chunk(*_candidates_as_rows(feat, chunk)).view(chunk.shape[:2])
        out = encoder_forward(self.encoder, self._tokens(feat, chunk), self.causal_mask, last_only=True)
        return self.head(out[:, 0]).squeeze(-1)

    def q_prefix(self, feat: torch.Tensor, chunk: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """Q^(length): ``forward(...)[b, length - 1]`` for one length per row (B,) -> (B,) or S per row
        (B, S) -> (B, S) (the encoder computes every prefix anyway); or N chunks per context (B, N, h, A)
        with a length each (B, N) -> (B, N)."""
        check_prefix_query(chunk, length)
        if chunk.dim() == 4:
            return self.q_prefix(*_candidates_as_rows(feat, chunk), length.flatten()).view(length.shape)
        return self(feat, chunk).gather(1, (length - 1).view(len(length), -1)).view(length.shape)

    def q_many(self, *queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> list[torch.Tensor]:
        """``q_prefix`` (or ``q_chunk`` where length is None) of each (feat, chunk, length) query in turn."""
        return [self.q_chunk(f, c) if n is None else self.q_prefix(f, c, n) for f, c, n in queries]


def _candidates_as_rows(feat: torch.Tensor, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d) contexts and (B, N, h, A) chunks -> (B*N, d), (B*N, h, A): each candidate a row of its own."""
    return feat.repeat_interleave(chunk.shape[1], 0), chunk.flatten(0, 1)
