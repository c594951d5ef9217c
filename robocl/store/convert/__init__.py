"""Converters between the trajectory store and LeRobot, D4RL, Minari and robomimic datasets.

``ingest(fmt, src, store_path, **opts)`` reads a dataset into a store, resuming an interrupted ingest of
the same source, and ``export(fmt, store, dest, **opts)`` writes one; the per-format functions below take
the same arguments. Heavy and optional dependencies (pyarrow, PyAV, h5py, minari) are imported inside the
converter that needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from robocl.store import TrajectoryStore
from robocl.store.convert.common import ConversionError
from robocl.store.convert.d4rl import export_d4rl, ingest_d4rl, normalized_score, reference_scores
from robocl.store.convert.lerobot import ingest_lerobot
from robocl.store.convert.lerobot_export import export_lerobot
from robocl.store.convert.minari import export_minari, ingest_minari
from robocl.store.convert.robomimic import export_robomimic, ingest_robomimic

#: format -> (ingest function, export function)
FORMATS: dict[str, tuple[Callable[..., TrajectoryStore], Callable[..., Path]]] = {
    "lerobot": (ingest_lerobot, export_lerobot),
    "d4rl": (ingest_d4rl, export_d4rl),
    "minari": (ingest_minari, export_minari),
    "robomimic": (ingest_robomimic, export_robomimic),
}


def _converters(fmt: str) -> tuple[Callable[..., TrajectoryStore], Callable[..., Path]]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")
    return FORMATS[fmt]


def ingest(fmt: str, src: str | Path, store_path: str | Path, **opts: Any) -> TrajectoryStore:
    """Ingest ``src`` (a dataset in format ``fmt``) into the store at ``store_path``; returns it open."""
    return _converters(fmt)[0](src, store_path, **opts)


def export(fmt: str, store: TrajectoryStore | str | Path, dest: str | Path, **opts: Any) -> Path:
    """Export a store (open, or its path) to ``dest`` in format ``fmt``; returns the written path."""
    return _converters(fmt)[1](store, dest, **opts)


__all__ = [
    "FORMATS",
    "ConversionError",
    "export",
    "export_d4rl",
    "export_lerobot",
    "export_minari",
    "export_robomimic",
    "ingest",
    "ingest_d4rl",
    "ingest_lerobot",
    "ingest_minari",
    "ingest_robomimic",
    "normalized_score",
    "reference_scores",
]
