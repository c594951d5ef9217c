"""A small convolutional encoder per camera, trained end to end with the policy (no torchvision), and the
pinhole geometry that turns a calibrated camera's pixels into positions on the table.

Frames arrive as the store keeps them, uint8 (B, H, W, 3). Four stride-2 3x3 convolutions, each followed by
GroupNorm and ReLU, shrink a 96x96 frame to 6x6; a learned spatial softmax then turns every channel into
the expected (x, y) position of its activation (Levine et al. 2016, the keypoint readout robomimic and
diffusion_policy use for visuomotor policies), and a linear layer maps those keypoints to ``out_dim``.
During training each frame is shifted by up to ``aug_shift`` pixels (DrQ's random shift, Kostrikov et al.
2020), the standard regulariser when a conv encoder is fit to a few dozen demonstrations.

With ``detector=n`` the encoder also finds n things in the frame: a 1x1 convolution on the stride-4 map
(after the second block: a 7 px receptive field) scores every cell once per thing, and the soft-argmax of
each thing's scores is its pixel (CenterNet's heatmap read out as Levine et al.'s expected position). With
``instruction_dim`` each score also gains the cell's feature dotted with a linear map of the instruction's
embedding (FiLM's conditioning, Perez et al. 2018, as a per-thing filter), so a thing the instruction names
among look-alikes (pick-place's target plate, beside a distractor of another colour) is found by what
the words say of it. A local score on a
regular grid is translation-equivariant by construction, so it carries over to places the demonstrations
never put the thing, where a readout of the whole frame's keypoints does not: on the CO-RFT image benchmark
the trunk's readout was 4-5 cm off at unseen object positions at an episode's first frame, the detector
0.3-0.5 cm (``benchmarks/co_rft_log.md``). The pixel comes back in the frame's own coordinates (the random
shift taken out), so a label projected from the calibrated camera needs no shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robocl.store import CameraCalibration

DETECTOR_BLOCK = 2  # the detector reads the map after this many conv blocks (stride 2**DETECTOR_BLOCK)
MAX_RANGE = 5.0  # m; see PinholeCamera.lift


class ConvEncoder(nn.Module):
    """uint8 frames (B, H, W, 3) -> features (B, out_dim); :meth:`encode` also gives the detector's pixels."""

    def __init__(
        self,
        out_dim: int,
        channels: Sequence[int] = (32, 64, 128, 128),
        aug_shift: int = 4,
        detector: int = 0,
        instruction_dim: int = 0,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ConvEncoder needs at least one conv layer")
        if detector and len(channels) < DETECTOR_BLOCK:
            raise ValueError(f"the detector reads conv block {DETECTOR_BLOCK}; got {len(channels)} blocks")
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
        mid = channels[DETECTOR_BLOCK - 1]
        self.detector = nn.Conv2d(mid, detector, 1) if detector else None
        # Zero at initialisation: every thing starts found by its look alone, the words added as they help.
        self.detector_instruction = (
            nn.Linear(instruction_dim, detector * mid) if detector and instruction_dim else None
        )
        if self.detector_instruction is not None:
            nn.init.zeros_(self.detector_instruction.weight)
            nn.init.zeros_(self.detector_instruction.bias)
        # Learned, as the grid below puts each cell at its receptive field's centre only up to padding.
        self.detector_offset = nn.Parameter(torch.zeros(2)) if detector else None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)[0]

    def encode(
        self, frames: torch.Tensor, instruction: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (B, out_dim), the detector's pixels (B, n, 2) as (column, row) in ``frames``' own
        coordinates, or None without a detector). ``instruction`` (B, instruction_dim): the embedding the
        detector is conditioned on, when built with ``instruction_dim``."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5  # (B, 3, H, W) centred on grey
        moved = None
        if self.training and self.aug_shift > 0:
            x, moved = random_shift(x, self.aug_shift)
        split = 3 * DETECTOR_BLOCK if self.detector is not None else 0
        mid = self.conv[:split](x)
        pixel = None
        if self.detector is not None:
            assert self.detector_offset is not None
            scores = self.detector(mid)  # (B, n, h, w)
            if self.detector_instruction is not None:
                assert instruction is not None, "this detector is conditioned on the instruction"
                filters = self.detector_instruction(instruction).view(len(mid), -1, mid.shape[1])
                scores = scores + torch.einsum("bnc,bchw->bnhw", filters.to(mid.dtype), mid)
            pixel = _soft_argmax(scores, 2**DETECTOR_BLOCK) + self.detector_offset
            if moved is not None:
                pixel = pixel - moved[:, None]  # back to where each thing is in the unshifted frame
        fmap = self.conv[split:](mid)  # (B, C, h, w)
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
        return self.proj(keypoints.flatten(1)), pixel


def _soft_argmax(scores: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., h, w) scores on a stride-``stride`` map -> (..., 2) expected (column, row) in input pixels, cell
    (i, j) at input pixel (stride * j, stride * i): the centre of a stride-2 padding-1 3x3 conv stack's
    receptive field."""
    h, w = scores.shape[-2:]
    weights = torch.softmax(scores.flatten(-2).float(), -1).unflatten(-1, (h, w))
    cols = torch.arange(w, device=scores.device, dtype=weights.dtype) * stride
    rows = torch.arange(h, device=scores.device, dtype=weights.dtype) * stride
    return torch.stack([(weights.sum(-2) * cols).sum(-1), (weights.sum(-1) * rows).sum(-1)], -1)


def random_shift(x: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate each image of (B, C, H, W) by an integer offset in [-pad, pad], replicating the border;
    returns the shifted images and how far each one's content moved, (B, 2) as (columns, rows)."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    shift = torch.randint(0, 2 * pad + 1, (B, 2), device=x.device)  # (B, 2) top-left corner (x, y)
    rows = torch.arange(H, device=x.device)[None, :] + shift[:, 1:2]  # (B, H)
    cols = torch.arange(W, device=x.device)[None, :] + shift[:, 0:1]  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed axes first: (B, H, W, C) -> back to channels-first.
    shifted = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return shifted, (pad - shift).float()


class PinholeCamera(nn.Module):
    """A calibrated camera's projection (world -> pixel) and its inverse onto a horizontal plane."""

    def __init__(self, calibration: CameraCalibration) -> None:
        super().__init__()
        fx, fy, cx, cy = calibration.intrinsics
        # Not saved: the calibration travels in the policy's spec, the state dict stays as it was.
        self.register_buffer("focal", torch.tensor([fx, fy]), persistent=False)
        self.register_buffer("centre", torch.tensor([cx, cy]), persistent=False)
        self.register_buffer("position", torch.tensor(calibration.position), persistent=False)
        self.register_buffer("rotation", torch.tensor(calibration.rotation), persistent=False)

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) world points -> (..., 2) pixels (column, row), in float32 under autocast too (bf16's
        8-bit mantissa would put a 1.3 m ray's pixel a few tenths of a pixel off)."""
        with torch.autocast(points.device.type, enabled=False):
            cam = (points.float() - self.position) @ self.rotation  # rotation^T (X - position), row vectors
            return self.focal * cam[..., :2] / cam[..., 2:] + self.centre

    def lift(self, pixels: torch.Tensor, height: float | torch.Tensor) -> torch.Tensor:
        """(..., 2) pixels -> (..., 3) world points where their rays meet the plane z = ``height`` (a
        number, or heights (..., 1) broadcast against the pixels' leading axes). A ray
        at or above the horizon meets it at most ``MAX_RANGE`` m away (the point is then meaningless but
        finite)."""
        with torch.autocast(pixels.device.type, enabled=False):  # float32, as project
            pixels = pixels.float()
            ray = torch.cat([(pixels - self.centre) / self.focal, torch.ones_like(pixels[..., :1])], -1)
            world_ray = ray @ self.rotation.T
            down = ((height - self.position[2]) / world_ray[..., 2:]).nan_to_num(posinf=MAX_RANGE)
            reach = torch.minimum(down.clamp(min=0.0), MAX_RANGE / world_ray.norm(dim=-1, keepdim=True))
            return self.position + reach * world_ray
