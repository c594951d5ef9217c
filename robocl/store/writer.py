"""Streaming one episode into a store, a control tick at a time (data collection, real-robot recording)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from robocl.store.schema import EpisodeMeta, coerce_steps

if TYPE_CHECKING:
    from robocl.store.format import TrajectoryStore


class EpisodeWriter:
    """Streams one episode into a store: ``add_step`` per tick, ``commit`` at the end."""

    def __init__(
        self,
        store: TrajectoryStore,
        *,
        task: str | None,
        source: str,
        source_episode: int,
        tags: Sequence[str],
    ) -> None:
        self.store = store
        # Checked now, so a wrong argument fails before the episode is recorded rather than at commit.
        self.meta = EpisodeMeta(task=task, source=source, source_episode=source_episode, tags=tags).checked(
            "episode writer"
        )
        self._buffers: dict[str, np.ndarray] = {}
        self._n = 0
        self._done = False
        self.index: int | None = None

    def __len__(self) -> int:
        return self._n

    def add_step(self, step: Mapping[str, Any]) -> None:
        """Append one step (the observation before the action, the action, its reward, ...)."""
        if self._done:
            raise RuntimeError("this episode was already committed or discarded")
        values = coerce_steps(
            self.store.features, step, where=f"step {self._n} of the episode being written", batched=False
        )
        if not self._buffers:
            for key, feat in self.store.features.items():
                dtype = object if feat.kind == "language" else feat.dtype
                self._buffers[key] = np.empty((64, *feat.shape), dtype=dtype)
        if self._n == len(next(iter(self._buffers.values()))):  # grow geometrically: O(1) amortised
            for key, buf in self._buffers.items():
                self._buffers[key] = np.concatenate([buf, np.empty_like(buf)])
        for key, value in values.items():
            # value[()] unwraps 0-d arrays, so a language step stores its string rather than an array object.
            self._buffers[key][self._n] = value[()] if value.ndim == 0 else value
        self._n += 1

    def commit(
        self,
        *,
        success: bool = False,
        terminated: bool = False,
        truncated: bool = False,
        final_obs: Mapping[str, Any] | None = None,
        episode_return: float | None = None,
    ) -> int:
        """Validate and commit the episode; returns its index in the store."""
        if self._done:
            raise RuntimeError("this episode was already committed or discarded")
        if self._n == 0:
            raise ValueError("cannot commit an episode with no steps")
        self.meta.success, self.meta.terminated, self.meta.truncated = success, terminated, truncated
        self.meta.episode_return = episode_return
        steps = {k: v[: self._n] for k, v in self._buffers.items()}
        self.index = self.store.add_episodes([(steps, self.meta, final_obs)])[0]
        self._done = True
        self._buffers = {}
        return self.index

    def discard(self) -> None:
        self._done = True
        self._buffers = {}

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.discard()
        elif not self._done:
            self.discard()
            raise RuntimeError("episode writer left without commit(); call commit(...) or discard()")
