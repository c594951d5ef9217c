"""What chunked TD learning needs from a store beyond windows: per-step rewards rebuilt from success flags,
Monte-Carlo returns-to-go, and the bootstrap history of every prefix of a window (CO-RFT's stage 2).

Rewards follow ``kind``: ``"step_penalty"`` is -1 per step until success and 0 at the success step
(Q-chunking's robomimic convention), ``"sparse"`` is +1 at the success step, ``"store"`` is the stored
``reward`` feature.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from robocl.store.format import TrajectoryStore
from robocl.store.sampler import WindowSampler
from robocl.store.view import StoreView


def step_rewards(store: TrajectoryStore, kind: str) -> np.ndarray:
    """(n_steps,) reward per store step: from the stored ``reward`` feature, or rebuilt from success flags
    (the per-step ``success`` feature, else the episode table's flag placed on the episode's last step)."""
    names = set(store.features)
    if kind == "store":
        if "reward" not in names:
            raise ValueError(
                f"reward='store' but the store has no 'reward' feature (features: {sorted(names)})"
            )
        return store.steps("reward").astype(np.float32)
    if "success" in names:
        success = store.steps("success").astype(bool)
    else:
        table = store.episodes
        success = np.zeros(store.n_steps, dtype=bool)
        success[(table["start"] + table["length"] - 1)[table["success"]]] = True
        if not success.any():
            raise ValueError(
                "cannot derive rewards: the store has no per-step 'success' flags and no episode is marked "
                "successful" + ("; use reward='store' for its 'reward' feature" if "reward" in names else "")
            )
    return (success.astype(np.float32) - (kind == "step_penalty")).astype(np.float32)


def mc_returns(rewards: np.ndarray, table: Mapping[str, np.ndarray], gamma: float) -> np.ndarray:
    """(n_steps,) discounted return-to-go V_MC of each step within its episode (Cal-QL's lower bound)."""
    out = np.zeros_like(rewards, dtype=np.float64)
    for start, length, terminated in zip(table["start"], table["length"], table["terminated"], strict=True):
        ret = 0.0 if terminated else float(rewards[start + length - 1]) / (1.0 - gamma)
        for i in range(start + length - 1, start - 1, -1):
            ret = rewards[i] + gamma * ret
            out[i] = ret
    return out.astype(np.float32)


def chunk_windows(
    data: TrajectoryStore | StoreView,
    *,
    n_obs: int,
    horizon: int,
    gamma: float,
    obs_keys: list[str],
    seed: int,
) -> WindowSampler:
    """Windows of ``horizon``-action chunks (no stored reward: rewards come from success flags here);
    refuses a horizon no episode can fill."""
    view = data if isinstance(data, StoreView) else data.view()
    longest = int(view.store.episodes["length"][view.episode_indices].max())
    if horizon > longest:
        raise ValueError(
            f"horizon={horizon} is longer than every episode (the longest has {longest} steps): "
            "no window would hold a whole chunk"
        )
    return WindowSampler(
        view, n_obs=n_obs, horizon=horizon, gamma=gamma, obs_keys=obs_keys, reward_key=None, seed=seed
    )


class ChunkedTDSampler:
    """A :class:`WindowSampler` plus what the chunked critic needs: ``reward`` (B, h) recomputed per
    ``CORFTConfig.reward``, ``mc_return`` (B,) and ``boot_id`` (B, h), the history at o_{t+j} that
    bootstraps prefix j, as a *history id*: ids below ``len(sampler)`` are windows (the history a window
    starts from), the next ones are the final histories of the view's episodes, in view order (every
    o_{t+j} with t+j >= the episode's length is its final history).

    With ``history_ids=True`` a batch carries no observations, only ``history_id`` (B,) for o_t and
    ``history_source``, this sampler's token; the caller encodes all ``n_histories`` once (:meth:`histories`
    gathers them) and looks features up by id (CO-RFT with a frozen trunk). Otherwise it carries the
    observations, and with ``prefix=True`` also ``prefix_obs[key]`` (B, h, n_obs, ...), the bootstrap
    histories themselves, with ``prefix_unique`` (U,) and ``prefix_inverse`` (B*h,): the rows of the
    flattened prefix_obs that hold distinct histories and, per row, which of them it equals (windows
    overlap, so U is often ~60% of B*h and the target trunk runs on U rows only)."""

    def __init__(
        self,
        sampler: WindowSampler,
        rewards: np.ndarray,
        mc: np.ndarray,
        *,
        prefix: bool,
        history_ids: bool = False,
    ) -> None:
        self.sampler, self.rewards, self.mc = sampler, rewards, mc
        self.prefix, self.history_ids = prefix, history_ids
        self.token = uuid.uuid4().hex  # names this sampler's id space in its batches
        table, eps = sampler.store.episodes, sampler.view.episode_indices
        self._start, self._length = table["start"], table["length"]
        lengths = self._length[eps]
        n_windows = len(sampler)
        self.n_histories = n_windows + len(eps)
        self._first_window = np.full(len(self._start), -1, dtype=np.int64)  # store episode -> its window 0
        self._first_window[eps] = np.cumsum(lengths) - lengths
        self._final_id = np.full(len(self._start), -1, dtype=np.int64)  # store episode -> final history id
        self._final_id[eps] = n_windows + np.arange(len(eps))
        self._last_window = np.cumsum(lengths) - 1  # per view episode: its window whose next_obs is final

    def sample(self, batch_size: int) -> dict[str, Any]:
        return self.extend(self.sampler.sample(batch_size, with_obs=not self.history_ids))

    def extend(self, batch: dict[str, Any]) -> dict[str, Any]:
        ep, t, h = batch["episode"], batch["t"], self.sampler.horizon
        start, length = self._start[ep], self._length[ep]
        k = t[:, None] + np.arange(h)  # (B, h)
        rows = start[:, None] + np.minimum(k, length[:, None] - 1)
        batch["reward"] = np.where(batch["action_is_pad"], 0.0, self.rewards[rows]).astype(np.float32)
        batch["mc_return"] = self.mc[start + t]
        boot_t = k + 1  # (B, h) times t+1..t+h
        batch["boot_id"] = np.where(
            boot_t >= length[:, None], self._final_id[ep][:, None], self._first_window[ep][:, None] + boot_t
        )
        if self.history_ids:
            batch["history_id"] = self._first_window[ep] + t
            batch["history_source"] = self.token
        elif self.prefix:
            ahead = k[:, 1:]  # (B, h-1) times t+1..t+h-1
            ids = self._first_window[ep][:, None] + np.minimum(ahead, length[:, None] - 1)
            gathered = self.sampler.get_batch(ids.reshape(-1))["obs"]
            beyond = ahead >= length[:, None]  # o_{t+j} is the final observation (or masked): use next_obs
            batch["prefix_obs"] = {}
            for key, nxt in batch["next_obs"].items():
                g = gathered[key].reshape(*ahead.shape, *nxt.shape[1:])  # (B, h-1, n_obs, ...)
                g[beyond] = np.broadcast_to(nxt[:, None], g.shape)[beyond]
                batch["prefix_obs"][key] = np.concatenate([g, nxt[:, None]], axis=1)
            _, batch["prefix_unique"], batch["prefix_inverse"] = np.unique(
                batch["boot_id"].reshape(-1), return_index=True, return_inverse=True
            )
        return batch

    def histories(self, history_ids: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Observation histories (n, n_obs, ...) per key and task indices (n,) of the given history ids.
        (Frames are read for both ends of each window; this runs once per stage, not per update.)"""
        ids = np.asarray(history_ids, dtype=np.int64)
        n_windows = len(self.sampler)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_histories):
            raise IndexError(f"history ids must lie in [0, {self.n_histories})")
        final = ids >= n_windows
        windows = np.where(final, self._last_window[np.maximum(ids - n_windows, 0)], ids)
        batch = self.sampler.get_batch(windows)
        obs = {}
        for key, now in batch["obs"].items():
            pick = final.reshape(-1, *[1] * (now.ndim - 1))
            obs[key] = np.where(pick, batch["next_obs"][key], now)
        return obs, batch["task_index"]

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def reseed(self, seed: int) -> None:
        self.sampler.reseed(seed)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
