"""Relative positions between the entities a store's state features name (tool, object, plate, goal, ...).

A policy that reads absolute positions has to learn "move towards the object" separately for every place
the object can be; the difference object - tool says it once, and carries over to positions the demos never
visited (on 60 pick-and-place demos an MLP went from 17% to 63% success at unseen positions with them).
robocl's tasks name every dimension of their state features (``Feature.names``, e.g. ``tcp.x``,
``object.y``, ``plate.z``); a dimension named ``<entity>.<axis>`` with axis x, y or z is a position in
metres in the world frame. Every pair of entities gets its difference over the axes both have, later entity
minus earlier, in the order the features list them (the tool comes first: it is in the proprioception).
Features without such names (most real-robot datasets: joint names) give no pairs.

Standardised by the store's spread (10-20 cm on a tabletop), the last centimetre before a grasp is a change of
~0.05 in the input, which an MLP resolves only after many updates. :func:`log_scaled` adds each difference
again on a scale that is linear within ``resolution`` and logarithmic beyond it (the symlog squashing
DreamerV3 applies to its inputs, in the smooth asinh form), so offsets of 0.5-2 cm are as far apart in the
input as offsets of 10-30 cm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

AXES = ("x", "y", "z")
LOG_SCALE_REACH = 0.1  # m; log_scaled maps a difference of this size to 1


def entity_positions(names: Mapping[str, Sequence[str] | None]) -> dict[str, dict[str, int]]:
    """entity -> axis -> index in the concatenation of the features in ``names``, for the entities with a
    position over at least two axes, in the order the features list them."""
    positions: dict[str, dict[str, int]] = {}
    offset = 0
    for dims in names.values():
        for i, name in enumerate(dims or ()):
            entity, _, axis = name.rpartition(".")
            if entity and axis in AXES:
                positions.setdefault(entity, {}).setdefault(axis, offset + i)
        offset += len(dims or ())
    return {e: axes for e, axes in positions.items() if len(axes) >= 2}


def position_columns(names: Mapping[str, Sequence[str] | None]) -> list[int]:
    """Indices (in the concatenation of the features in ``names``) of every entity's position."""
    return sorted(i for axes in entity_positions(names).values() for i in axes.values())


def scene_position_columns(names: Mapping[str, Sequence[str] | None]) -> list[int]:
    """Indices (in the concatenation of the features in ``names``) of the absolute positions of every entity
    but the first, the tool: what a policy reading only relative positions leaves out. Empty with fewer than
    two entities."""
    entities = list(entity_positions(names).values())
    return sorted(i for axes in entities[1:] for i in axes.values()) if len(entities) > 1 else []


def relative_position_pairs(names: Mapping[str, Sequence[str] | None]) -> list[tuple[str, int, int]]:
    """[(name, index of the earlier entity's coordinate, index of the later one's)] over the concatenation
    of the features in ``names`` (feature key -> per-dimension names, or None), in that order."""
    positions = entity_positions(names)
    entities = list(positions)
    pairs = []
    for i, first in enumerate(entities):
        for second in entities[i + 1 :]:
            for axis in AXES:
                if axis in positions[first] and axis in positions[second]:
                    pairs.append(
                        (f"{second}-{first}.{axis}", positions[first][axis], positions[second][axis])
                    )
    return pairs


class RelativePositions(nn.Module):
    """(..., D) concatenated raw state -> (..., P) differences ``x[..., later] - x[..., earlier]``."""

    def __init__(self, pairs: Sequence[tuple[str, int, int]]) -> None:
        super().__init__()
        self.names = [p[0] for p in pairs]
        self.register_buffer(
            "earlier", torch.tensor([p[1] for p in pairs], dtype=torch.long), persistent=False
        )
        self.register_buffer("later", torch.tensor([p[2] for p in pairs], dtype=torch.long), persistent=False)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state[..., self.later] - state[..., self.earlier]

    def numpy(self, state: np.ndarray) -> np.ndarray:
        """The same on a numpy array (statistics over a whole store)."""
        return state[..., self.later.numpy()] - state[..., self.earlier.numpy()]


def log_scaled(diff: torch.Tensor, resolution: float) -> torch.Tensor:
    """asinh(d / r) / asinh(R / r) with R = ``LOG_SCALE_REACH``: odd, ~linear for |d| << r, logarithmic for
    |d| >> r, and +-1 at |d| = R (r = 1 cm: 0.29 at 1 cm, 0.48 at 2 cm, 1.36 at 30 cm). ``diff`` in metres."""
    return torch.asinh(diff / resolution) / np.arcsinh(LOG_SCALE_REACH / resolution)
