"""Feature normalisation from a store's statistics, kept as buffers so checkpoints carry it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Mode = Literal["mean_std", "min_max", "identity"]

# A dimension whose spread is below this is a constant: centred, left unscaled (spread 1), not divided by ~0.
CONSTANT_SPREAD = 1e-6


class Normalizer(nn.Module):
    """Per-feature affine normalisation: ``mean_std`` -> zero mean, unit std; ``min_max`` -> [-1, 1].

    Dimensions with (near) zero spread are left centred but unscaled, so constant features do not blow up.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], modes: Mapping[str, Mode]) -> None:
        super().__init__()
        self.keys = list(shapes)
        self.modes = dict(modes)
        for key, shape in shapes.items():
            name = _buffer_name(key)
            self.register_buffer(f"{name}_shift", torch.zeros(shape))
            self.register_buffer(f"{name}_scale", torch.ones(shape))

    def load_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Set the buffers from ``TrajectoryStore.stats``."""
        for key in self.keys:
            mode = self.modes[key]
            if mode == "identity":
                continue
            s = stats[key]
            if mode == "mean_std":
                shift, spread = np.asarray(s["mean"]), np.asarray(s["std"])
            else:
                lo, hi = np.asarray(s["min"]), np.asarray(s["max"])
                shift, spread = (hi + lo) / 2, (hi - lo) / 2
            spread = np.where(spread < CONSTANT_SPREAD, 1.0, spread)
            name = _buffer_name(key)
            getattr(self, f"{name}_shift").copy_(torch.as_tensor(shift, dtype=torch.float32))
            getattr(self, f"{name}_scale").copy_(torch.as_tensor(spread, dtype=torch.float32))

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        name = _buffer_name(key)
        return (x - getattr(self, f"{name}_shift")) / getattr(self, f"{name}_scale")

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        name = _buffer_name(key)
        return x * getattr(self, f"{name}_scale") + getattr(self, f"{name}_shift")


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")
