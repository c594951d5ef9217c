"""Per-feature statistics kept up to date at every commit and used for normalisation.

Mean and standard deviation are exact: each commit merges the new episodes' (count, mean, M2) with Chan et
al.'s parallel update, so the result equals a single pass over all steps. Quantiles cannot be merged exactly,
so they follow LeRobot v3's convention: per-episode quantiles averaged with the episodes' step counts as
weights. Images get per-channel statistics in [0, 1] computed on at most ``IMAGE_FRAMES_PER_EPISODE`` evenly
spaced frames per episode, which keeps commits cheap (LeRobot also subsamples frames for image stats).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robocl.store.schema import Feature

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
IMAGE_FRAMES_PER_EPISODE = 32


def episode_stats(feat: Feature, values: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of one episode's steps of one feature (time on axis 0)."""
    if feat.is_image:
        idx = np.unique(
            np.linspace(0, len(values) - 1, min(len(values), IMAGE_FRAMES_PER_EPISODE)).astype(int)
        )
        frames = values[idx].astype(np.float64)
        if feat.kind == "rgb":
            frames = frames / 255.0
        # (T, H, W, C) -> (T*H*W, C): per-channel statistics as LeRobot keeps them for cameras.
        channels = frames.shape[-1] if frames.ndim == 4 else 1
        return _moments(frames.reshape(-1, channels), count_override=len(values))
    flat = values.astype(np.float64).reshape(len(values), -1)
    return _moments(flat)


def _moments(flat: np.ndarray, count_override: int | None = None) -> dict[str, np.ndarray]:
    mean = flat.mean(axis=0)
    out = {
        "count": np.array(count_override if count_override is not None else len(flat), dtype=np.int64),
        "mean": mean,
        # M2 scaled to the reported count so that image subsampling does not bias the merged variance.
        "m2": ((flat - mean) ** 2).mean(axis=0) * (count_override or len(flat)),
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
    }
    for key, q in zip(QUANTILE_KEYS, np.quantile(flat, QUANTILES, axis=0), strict=True):
        out[key] = q
    return out


def merge(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Combine the statistics of two disjoint sets of steps."""
    if a is None:
        return b
    na, nb = float(a["count"]), float(b["count"])
    n = na + nb
    delta = b["mean"] - a["mean"]
    out = {
        "count": np.array(int(na + nb), dtype=np.int64),
        "mean": a["mean"] + delta * nb / n,
        "m2": a["m2"] + b["m2"] + delta**2 * na * nb / n,
        "min": np.minimum(a["min"], b["min"]),
        "max": np.maximum(a["max"], b["max"]),
    }
    for key in QUANTILE_KEYS:
        out[key] = (a[key] * na + b[key] * nb) / n
    return out


def public_view(feat: Feature, acc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What users read: mean, std, min, max and quantiles shaped like one step (images: (C, 1, 1))."""
    if feat.is_image:
        shape: tuple[int, ...] = (-1, 1, 1)
    else:
        shape = feat.shape
    out = {"count": int(acc["count"])}
    std = np.sqrt(np.maximum(acc["m2"] / max(int(acc["count"]), 1), 0.0))
    for key, value in [("mean", acc["mean"]), ("std", std), ("min", acc["min"]), ("max", acc["max"])]:
        out[key] = np.asarray(value, dtype=np.float64).reshape(shape)
    for key in QUANTILE_KEYS:
        out[key] = np.asarray(acc[key], dtype=np.float64).reshape(shape)
    return out  # type: ignore[return-value]


def to_json(acc: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: (int(v) if k == "count" else np.asarray(v, dtype=np.float64).tolist()) for k, v in acc.items()}


def from_json(d: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        k: (np.array(v, dtype=np.int64) if k == "count" else np.asarray(v, dtype=np.float64))
        for k, v in d.items()
    }
