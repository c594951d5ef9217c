"""Online replay: a RAM ring of transitions for online learners, persisted through the store's commit path.

``add`` writes one transition into preallocated numpy rings (no allocation, O(1)); finished episodes are
queued and written to the store in batches by ``flush`` (one commit for many episodes), so the hot loop never
waits on zarr. Indices are *logical*: 0 is the oldest transition held, ``size - 1`` the newest, whatever the
ring's physical layout, so age-based sampling weights (Symphony's fading buffer) mean the same thing after a
resume. A resumed run rebuilds the ring from the store's newest committed steps (``from_store``) plus the
unfinished episode kept in :meth:`state_dict`, giving the same contents in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from robocl.store.format import EpisodeMeta, TrajectoryStore


class OnlineReplay:
    """Transitions (obs, action, reward, next_obs, terminated) of the low-dimensional features of a store."""

    def __init__(
        self,
        store: TrajectoryStore,
        capacity: int,
        *,
        action_key: str = "action",
        reward_key: str = "reward",
        flush_every: int = 50_000,
        task: str | None = None,
        source: str = "online",
        tags: tuple[str, ...] = ("online",),
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.obs_keys = [k for k, f in store.features.items() if f.is_observation]
        for key in self.obs_keys:
            if store.features[key].is_image or store.features[key].kind == "language":
                raise ValueError(f"online replay holds low-dimensional observations only; {key!r} is not")
        for key in (action_key, reward_key):
            if key not in store.features:
                raise KeyError(f"the store has no {key!r} feature; its features are {list(store.features)}")
        self.store, self.capacity = store, capacity
        self.action_key, self.reward_key = action_key, reward_key
        self.flush_every, self.task, self.source, self.tags = flush_every, task, source, tags
        feats = store.features

        def ring(key: str) -> np.ndarray:
            return np.zeros((capacity, *feats[key].shape), dtype=feats[key].dtype)

        self.obs = {k: ring(k) for k in self.obs_keys}
        self.next_obs = {k: ring(k) for k in self.obs_keys}
        self.action = ring(action_key)
        self.reward = ring(reward_key)
        # A store with robocl's rollout schema also has the per-step success flag (info["success"]).
        self.success = ring("success") if "success" in feats else None
        self.terminated = np.zeros(capacity, dtype=bool)
        self._ptr = 0  # physical slot of the next write
        self.size = 0
        self.total_added = 0
        self._episode_begin = 0  # total_added at the current episode's first step
        self._pending: list[tuple[int, int, bool, bool]] = []  # (first total index, length, term, trunc)
        self._pending_steps = 0

    # ------------------------------------------------------------------ writing
    def add(
        self,
        obs: Mapping[str, np.ndarray] | np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: Mapping[str, np.ndarray] | np.ndarray,
        terminated: bool,
        truncated: bool,
        success: bool = False,
    ) -> None:
        """Append one transition; an episode ends when ``terminated or truncated``."""
        if self._pending and self._pending[0][0] <= self.total_added - self.capacity:
            self.flush()  # the next write would overwrite the oldest episode still waiting to be persisted
        self._write_slot(obs, action, reward, next_obs, terminated, success)
        if terminated or truncated:
            length = self.total_added - self._episode_begin
            self._pending.append((self._episode_begin, length, bool(terminated), bool(truncated)))
            self._pending_steps += length
            self._episode_begin = self.total_added
            if self._pending_steps >= self.flush_every:
                self.flush()

    def _write_slot(
        self, obs: Any, action: Any, reward: Any, next_obs: Any, terminated: bool, success: bool
    ) -> None:
        i = self._ptr
        if isinstance(obs, Mapping):
            for key in self.obs_keys:
                self.obs[key][i] = obs[key]
                self.next_obs[key][i] = next_obs[key]
        else:  # a single observation feature, passed as its array
            self.obs[self.obs_keys[0]][i] = obs
            self.next_obs[self.obs_keys[0]][i] = next_obs
        self.action[i] = action
        self.reward[i] = reward
        self.terminated[i] = terminated
        if self.success is not None:
            self.success[i] = success
        self._ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.total_added += 1

    def flush(self) -> int:
        """Commit the finished episodes still held in RAM to the store; returns how many were written.

        ``add`` flushes by itself before a waiting episode would be overwritten, so only an episode longer
        than ``capacity`` can be lost; that raises.
        """
        episodes = []
        oldest_held = self.total_added - self.size
        for first, length, term, trunc in self._pending:
            if first < oldest_held:
                raise RuntimeError(
                    f"an episode of {length} steps left the ring (capacity {self.capacity}) before it was "
                    "flushed; lower flush_every or raise capacity"
                )
            slots = (np.arange(first, first + length) - self.total_added + self._ptr) % self.capacity
            steps: dict[str, np.ndarray] = {k: self.obs[k][slots] for k in self.obs_keys}
            steps[self.action_key] = self.action[slots]
            steps[self.reward_key] = self.reward[slots]
            if self.success is not None:
                steps["success"] = self.success[slots]
            final = {k: self.next_obs[k][slots[-1]] for k in self.obs_keys}
            meta = EpisodeMeta(
                task=self.task,
                success=bool(self.success is not None and self.success[slots].any()),
                terminated=term,
                truncated=trunc,
                source=self.source,
                tags=self.tags,
            )
            episodes.append((steps, meta, final))
        self.store.add_episodes(episodes)
        self._pending, self._pending_steps = [], 0
        return len(episodes)

    # ------------------------------------------------------------------ reading
    def physical(self, logical: np.ndarray) -> np.ndarray:
        """Ring slots of logical indices (0 = oldest held transition)."""
        return (np.asarray(logical) + self._ptr - self.size) % self.capacity

    def get(self, logical: np.ndarray) -> dict[str, Any]:
        """Transitions at logical indices: obs, action, reward, next_obs, terminated."""
        slots = self.physical(logical)
        out = {
            "obs": {k: v[slots] for k, v in self.obs.items()},
            "action": self.action[slots],
            "reward": self.reward[slots],
            "next_obs": {k: v[slots] for k, v in self.next_obs.items()},
            "terminated": self.terminated[slots],
        }
        if self.success is not None:
            out["success"] = self.success[slots]
        return out

    def sample(
        self, batch_size: int, rng: np.random.Generator, weights: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Draw transitions uniformly or with caller-given weights over logical indices (length ``size``)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay")
        if weights is None:
            idx = rng.integers(0, self.size, size=batch_size)
        else:
            if len(weights) != self.size:
                raise ValueError(f"weights has {len(weights)} entries, the replay holds {self.size}")
            cdf = np.cumsum(weights, dtype=np.float64)
            idx = np.searchsorted(cdf, rng.random(batch_size) * cdf[-1], side="right")
        return self.get(idx)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the store: the unfinished episode's transitions."""
        self.flush()
        length = self.total_added - self._episode_begin
        tail = self.get(np.arange(self.size - length, self.size)) if length else None
        return {"total_added": self.total_added, "tail": tail}

    @classmethod
    def from_store(
        cls, store: TrajectoryStore, capacity: int, state: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> OnlineReplay:
        """Rebuild a replay from the newest committed episodes (and the unfinished one in ``state``)."""
        replay = cls(store, capacity, **kwargs)
        table = store.episodes
        keep_from = 0
        if store.n_episodes:
            # Newest episodes whose steps fit in the ring, oldest first.
            ends = table["start"] + table["length"]
            keep_from = int(np.searchsorted(ends, store.n_steps - capacity, side="right"))
        for e in range(keep_from, store.n_episodes):
            ep = store.episode(e)
            obs, length = {k: ep[k] for k in replay.obs_keys}, len(ep)
            nxt = {k: np.concatenate([obs[k][1:], ep.final_obs[k][None]]) for k in replay.obs_keys}
            success = ep["success"] if replay.success is not None else np.zeros(length, bool)
            for t in range(length):
                last = t == length - 1
                replay._add_restored(
                    {k: v[t] for k, v in obs.items()},
                    ep[replay.action_key][t],
                    ep[replay.reward_key][t],
                    {k: v[t] for k, v in nxt.items()},
                    ep.terminated and last,
                    bool(success[t]),
                    last,
                )
        if state is not None:
            tail = state.get("tail")
            if tail is not None:
                for t in range(len(tail["action"])):
                    replay._add_restored(
                        {k: v[t] for k, v in tail["obs"].items()},
                        tail["action"][t],
                        tail["reward"][t],
                        {k: v[t] for k, v in tail["next_obs"].items()},
                        bool(tail["terminated"][t]),
                        bool(tail["success"][t]) if "success" in tail else False,
                        False,
                    )
            replay.total_added = int(state["total_added"])
            replay._episode_begin = replay.total_added - (0 if tail is None else len(tail["action"]))
        return replay

    def _add_restored(
        self, obs: Any, action: Any, reward: Any, next_obs: Any, term: bool, success: bool, end: bool
    ) -> None:
        """Like ``add`` but for steps already in the store: nothing is queued for persistence."""
        self._write_slot(obs, action, reward, next_obs, term, success)
        if end:
            self._episode_begin = self.total_added
