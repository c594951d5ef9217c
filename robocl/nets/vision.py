"""A small convolutional encoder per camera, trained end to end with the policy (no torchvision).

Frames arrive as the store keeps them, uint8 (B, H, W, 3). Four stride-2 3x3 convolutions, each followed by
GroupNorm and ReLU, shrink a 96x96 frame to 6x6; a learned spatial softmax then turns every channel into
the expected (x, y) position of its activation (Levine et al. 2016, the keypoint readout robomimic and
diffusion_policy use for visuomotor policies), and a linear layer maps those keypoints to ``out_dim``.
During training each frame is shifted by up to ``aug_shift`` pixels (DrQ's random shift, Kostrikov et al.
2020), the standard regulariser when a conv encoder is fit to a few dozen demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvEncoder(nn.Module):
    """uint8 frames (B, H, W, 3) -> features (B, out_dim)."""

    def __init__(
        self, out_dim: int, channels: Sequence[int] = (32, 64, 128, 128), aug_shift: int = 4
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ConvEncoder needs at least one conv layer")
        layers: list[nn.Module] = []
        prev = 3
        for width in channels:
            # GroupNorm, not BatchNorm: eval() must not change what a resumed or reloaded policy computes.
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), nn.GroupNorm(1, width), nn.ReLU()]
            prev = width
        self.conv = nn.Sequential(*layers)
        self.softmax_temperature = nn.Parameter(torch.ones(()))
        self.proj = nn.Linear(2 * prev, out_dim)
        self.aug_shift, self.out_dim = aug_shift, out_dim

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5  # (B, 3, H, W) centred on grey
        if self.training and self.aug_shift > 0:
            x = random_shift(x, self.aug_shift)
        fmap = self.conv(x)  # (B, C, h, w)
        h, w = fmap.shape[-2:]
        attn = torch.softmax(fmap.flatten(2) / self.softmax_temperature, dim=-1)  # (B, C, h*w)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device),
            torch.linspace(-1, 1, w, device=x.device),
            indexing="ij",
        )
        keypoints = torch.stack(
            [(attn * xs.flatten()).sum(-1), (attn * ys.flatten()).sum(-1)], -1
        )  # (B, C, 2)
        return self.proj(keypoints.flatten(1))


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by an integer offset in [-pad, pad], replicating the border."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    shift = torch.randint(0, 2 * pad + 1, (B, 2), device=x.device)  # (B, 2) top-left corner (x, y)
    rows = torch.arange(H, device=x.device)[None, :] + shift[:, 1:2]  # (B, H)
    cols = torch.arange(W, device=x.device)[None, :] + shift[:, 0:1]  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed axes first: (B, H, W, C) -> back to channels-first.
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
