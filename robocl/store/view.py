"""Filtered views of a store's committed episodes: what samplers and exporters consume."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from robocl.store.format import Episode, TrajectoryStore


class StoreView:
    """A subset of a store's committed episodes (what samplers and exporters consume)."""

    def __init__(self, store: TrajectoryStore, episode_indices: np.ndarray) -> None:
        self.store = store
        self.episode_indices = np.asarray(episode_indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.episode_indices)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_indices)

    @property
    def n_steps(self) -> int:
        return int(self.store.episodes["length"][self.episode_indices].sum())

    def episode(self, i: int) -> Episode:
        return self.store.episode(int(self.episode_indices[i]))

    def __iter__(self) -> Iterator[Episode]:
        for i in self.episode_indices:
            yield self.store.episode(int(i))

    def filter(
        self,
        *,
        task: str | int | None = None,
        success: bool | None = None,
        tags: str | Sequence[str] | None = None,
        source: str | None = None,
        episodes: Iterable[int] | None = None,
    ) -> StoreView:
        table, keep = self.store.episodes, self.episode_indices
        if episodes is not None:
            wanted = np.asarray(list(episodes), dtype=np.int64)
            if wanted.size and (wanted.min() < 0 or wanted.max() >= self.store.n_episodes):
                raise IndexError(f"episode indices must be in [0, {self.store.n_episodes})")
            keep = keep[np.isin(keep, wanted)]
        if task is not None:
            if isinstance(task, str):
                if task not in self.store.tasks:
                    raise KeyError(f"unknown task {task!r}; the store's tasks are {self.store.tasks}")
                task = self.store.tasks.index(task)
            keep = keep[table["task_index"][keep] == task]
        if success is not None:  # episodes of unknown success match neither True nor False
            keep = keep[(table["success"][keep] == bool(success)) & self.store.success_known[keep]]
        if source is not None:  # e.g. "sim:robocl/Push-Density2-v0": tells tasks apart in multi-task stores
            index = self.store.sources.index(source) if source in self.store.sources else -1
            keep = keep[table["source_index"][keep] == index]
        if tags is not None:
            for tag in [tags] if isinstance(tags, str) else tags:
                if tag not in self.store.tag_names:
                    keep = keep[:0]
                    continue
                bit = np.uint64(1 << self.store.tag_names.index(tag))
                keep = keep[(table["tags"][keep] & bit) != 0]
        return StoreView(self.store, keep)

    def split(self, val_fraction: float, *, seed: int = 0) -> tuple[StoreView, StoreView]:
        """Split by episode into (train, val) with a seeded permutation."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(self.episode_indices)
        n_val = max(1, round(len(order) * val_fraction))
        return StoreView(self.store, np.sort(order[n_val:])), StoreView(self.store, np.sort(order[:n_val]))
