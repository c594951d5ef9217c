"""Window sampler for chunked learning: observation history, action chunk and chunked TD quantities.

For a window starting at step t of an episode of length L (observations o_0..o_{L-1}, final observation o_L):

- ``obs``: o_{t-n_obs+1..t}, repeating o_0 before the episode start (``obs_is_pad`` marks the repeats);
- ``action``: a_{t..t+h-1}, repeating a_{L-1} past the end (``action_is_pad``), as LeRobot/ACT pad chunks;
- ``reward``: r_{t..t+h-1} with padded steps zeroed, and ``reward_sum`` = sum_{k<h_eff} gamma^k r_{t+k};
- ``next_obs``: the history ending at o_{t+h_eff} with h_eff = min(h, L - t), where o_L is the episode's
  stored final observation; ``discount`` = gamma^{h_eff};
- ``done``: the chunk reaches the end of an episode that terminated (success or failure). Truncated episodes
  (time limits) bootstrap: done stays False and the target uses the final observation.

The chunked TD target is then ``reward_sum + discount * (1 - done) * V(next_obs)``; with h = 1 it is the
ordinary one-step target. Every window start t in [0, L) is valid, as in LeRobot's datasets.

Low-dimensional features are gathered from RAM; images go through :class:`robocl.store.frames.FrameReader`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from robocl.store.format import TrajectoryStore
from robocl.store.frames import FrameReader, local_root_of
from robocl.store.view import StoreView

Batch = dict[str, Any]


class WindowSampler:
    """Seeded sampler of windows over a store or a filtered view of it.

    Usable three ways: ``sample(batch_size)`` draws a batch with its own seeded generator (fast path, whole
    batch gathered at once); ``get_batch(window_ids)`` gathers given windows; and as a map-style torch
    Dataset (``len`` + ``__getitem__`` with an int or a list of ints), safe in DataLoader worker processes.
    """

    def __init__(
        self,
        data: TrajectoryStore | StoreView,
        *,
        n_obs: int = 2,
        horizon: int = 16,
        gamma: float = 0.99,
        obs_keys: Sequence[str] | None = None,
        action_key: str = "action",
        reward_key: str | None = "reward",
        seed: int = 0,
        cache_bytes: int = 4 << 30,
    ) -> None:
        view = data if isinstance(data, StoreView) else data.view()
        store = view.store
        if n_obs < 1 or horizon < 1:
            raise ValueError(f"n_obs and horizon must be >= 1, got n_obs={n_obs}, horizon={horizon}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if len(view) == 0:
            raise ValueError("cannot sample windows from a view with no episodes")
        self.obs_keys = list(store.observation_keys if obs_keys is None else obs_keys)
        for key in [*self.obs_keys, action_key, *([reward_key] if reward_key else [])]:
            if key not in store.features:
                raise KeyError(f"unknown feature {key!r}; the store's features are {list(store.features)}")
        self.store, self.view = store, view
        self.n_obs, self.horizon, self.gamma = n_obs, horizon, gamma
        self.action_key, self.reward_key = action_key, reward_key
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._cache_bytes = cache_bytes

        table = store.episodes
        eps = view.episode_indices
        self._ep_start = table["start"][eps]
        self._ep_len = table["length"][eps]
        self._ep_terminated = table["terminated"][eps]
        self._ep_task = table["task_index"][eps]
        # Window w covers episode row _win_ep[w] at time _win_t[w]; precomputed once (diffusion_policy style).
        self._win_ep = np.repeat(np.arange(len(eps)), self._ep_len)
        self._win_t = np.arange(len(self._win_ep)) - np.repeat(
            np.cumsum(self._ep_len) - self._ep_len, self._ep_len
        )
        self._episodes = eps
        self._n_steps_total = store.n_steps
        self._lowdim: dict[str, np.ndarray] = {}
        self._readers: dict[str, tuple[FrameReader, FrameReader]] = {}
        self._pid = os.getpid()
        self._load_lowdim()

    def _load_lowdim(self) -> None:
        store = self.store
        keys = {*self.obs_keys, self.action_key, *([self.reward_key] if self.reward_key else [])}
        for key in keys:
            feat = store.features[key]
            if feat.is_image:
                continue
            steps = store.steps(key)
            if feat.is_observation:
                # Final observations sit after all steps, so episode e's o_L has row n_steps + e.
                steps = np.concatenate([steps, store.final_obs(key)])
            self._lowdim[key] = steps

    def _reader(self, key: str) -> tuple[FrameReader, FrameReader]:
        if os.getpid() != self._pid:  # a DataLoader worker: caches filled in the parent are not ours to share
            self._readers, self._pid = {}, os.getpid()
        if key not in self._readers:
            root = local_root_of(self.store._zstore)
            budget = self._cache_bytes
            touching = self.store.episodes_touching  # names the episodes of a damaged shard
            self._readers[key] = (
                FrameReader(
                    self.store.zarr_array(key),
                    self.store.n_steps,
                    budget,
                    local_root=root,
                    episodes_of=partial(touching, f"data/{key}"),
                ),
                FrameReader(
                    self.store.zarr_array(key, final=True),
                    self.store.n_episodes,
                    budget // 8 + 1,
                    local_root=root,
                    episodes_of=partial(touching, f"episodes/final/{key}"),
                ),
            )
        return self._readers[key]

    # ------------------------------------------------------------------ Dataset protocol and state
    def __len__(self) -> int:
        return len(self._win_ep)

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> Batch:
        if np.isscalar(index):
            batch = self.get_batch(np.array([index]))
            return _squeeze(batch)
        return self.get_batch(np.asarray(index))

    def sample(self, batch_size: int, *, with_obs: bool = True) -> Batch:
        return self.get_batch(self.rng.integers(0, len(self), size=batch_size), with_obs=with_obs)

    def reseed(self, seed: int) -> None:
        """A new stream of windows (a data-parallel rank's own, see robocl.run.dist)."""
        self.seed, self.rng = seed, np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------------ gathering
    def get_batch(self, window_ids: np.ndarray, *, with_obs: bool = True) -> Batch:
        """The windows ``window_ids``; ``with_obs=False`` leaves ``obs`` and ``next_obs`` empty (no frame
        reads), for callers that look observations up by window id in a cache of their own."""
        w = np.asarray(window_ids, dtype=np.int64)
        if w.size and (w.min() < 0 or w.max() >= len(self)):
            raise IndexError(f"window ids must lie in [0, {len(self)})")
        row, t = self._win_ep[w], self._win_t[w]
        start, length = self._ep_start[row], self._ep_len[row]
        h, n = self.horizon, self.n_obs
        hist = np.arange(1 - n, 1)  # (n_obs,) offsets -n+1..0
        steps = np.arange(h)  # (h,)

        obs_t = t[:, None] + hist  # (B, n_obs) in-episode times
        obs_is_pad = obs_t < 0
        obs_rows = start[:, None] + np.maximum(obs_t, 0)

        act_t = t[:, None] + steps  # (B, h)
        action_is_pad = act_t >= length[:, None]
        act_rows = start[:, None] + np.minimum(act_t, length[:, None] - 1)

        h_eff = np.minimum(h, length - t)  # (B,) >= 1
        next_t = (t + h_eff)[:, None] + hist  # (B, n_obs), last column may equal L -> final observation
        next_is_pad = next_t < 0
        at_end = next_t >= length[:, None]
        final_rows = self._n_steps_total + self._episodes[row]
        next_rows = np.where(at_end, final_rows[:, None], start[:, None] + np.maximum(next_t, 0))

        batch: Batch = {
            "obs": self._gather_obs(obs_rows) if with_obs else {},
            "obs_is_pad": obs_is_pad,
            "action": self._lowdim[self.action_key][act_rows],
            "action_is_pad": action_is_pad,
            "next_obs": self._gather_obs(next_rows) if with_obs else {},
            "next_obs_is_pad": next_is_pad,
            "done": self._ep_terminated[row] & (t + h >= length),
            "discount": (self.gamma**h_eff).astype(np.float32),
            "task_index": self._ep_task[row],
            "episode": self._episodes[row],
            "t": t,
        }
        if self.reward_key is not None:
            reward = np.where(action_is_pad, 0.0, self._lowdim[self.reward_key][act_rows]).astype(np.float32)
            batch["reward"] = reward
            batch["reward_sum"] = (reward * self.gamma ** steps.astype(np.float32)).sum(
                axis=1, dtype=np.float32
            )
        return batch

    def _gather_obs(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for key in self.obs_keys:
            if key in self._lowdim:
                out[key] = self._lowdim[key][rows]
                continue
            steps_reader, final_reader = self._reader(key)
            flat = rows.reshape(-1)
            is_final = flat >= self._n_steps_total
            if is_final.any():
                frames = np.empty((len(flat), *steps_reader.frame_shape), dtype=steps_reader.dtype)
                frames[~is_final] = steps_reader.gather(flat[~is_final])
                frames[is_final] = final_reader.gather(flat[is_final] - self._n_steps_total)
            else:  # the common case: one gather, no second copy
                frames = steps_reader.gather(flat)
            out[key] = frames.reshape(*rows.shape, *steps_reader.frame_shape)
        return out


def _squeeze(batch: Batch) -> Batch:
    return {k: _squeeze(v) if isinstance(v, dict) else v[0] for k, v in batch.items()}
