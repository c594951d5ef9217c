"""Array-library-agnostic helpers for the task reward functions.

Rewards must run on numpy arrays inside ``env.step`` and on batched torch tensors inside planners (CEM/MPC),
from the same code. These helpers dispatch on the input type without importing torch: a torch tensor can only
reach them if torch is already imported.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def xp(x: Any) -> ModuleType:
    """The array module (numpy or torch) that ``x`` belongs to."""
    if type(x).__module__.startswith("torch"):
        return sys.modules["torch"]
    return np


def as_array(x: Any, like: Any) -> Any:
    """``x`` converted to the array type, dtype (and device) of ``like``."""
    if xp(like) is np:
        return np.asarray(x, dtype=np.asarray(like).dtype)
    return xp(like).as_tensor(x, dtype=like.dtype, device=like.device)


def norm(x: Any) -> Any:
    """Euclidean norm over the last axis."""
    return (x**2).sum(-1) ** 0.5


def max_last(x: Any) -> Any:
    """Maximum over the last axis."""
    return x.max(-1) if xp(x) is np else x.amax(-1)


def to_float(mask: Any, like: Any) -> Any:
    """A boolean mask as 0/1 floats of ``like``'s dtype."""
    if xp(like) is np:
        return np.asarray(mask).astype(np.asarray(like).dtype)
    return mask.to(like.dtype)


def stack(arrays: list[Any]) -> Any:
    """Stack along a new last axis."""
    return xp(arrays[0]).stack(arrays, -1)


def yaw_from_quat(quat: Any) -> Any:
    """Heading (rotation about world z) from quaternions (w, x, y, z) on the last axis."""
    w, x, y, z = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    return xp(quat).arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def tool_axis_from_quat(quat: Any) -> Any:
    """Third column of the rotation matrix (the tool's approach axis) of quaternions (w, x, y, z)."""
    w, x, y, z = quat[..., 0], quat[..., 1], quat[..., 2], quat[..., 3]
    return stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])
