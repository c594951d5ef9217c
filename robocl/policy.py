"""The policy interface every method implements, and the executor that runs action chunks.

A policy maps observations to actions with numpy in and numpy out: ``reset()`` at each episode start,
``predict(obs)`` for a batch (leading axis) or a single observation. Chunking policies predict h actions at
once (``predict_chunk``); :class:`ChunkExecutor` turns such a predictor into a step policy, either by
receding horizon (execute the first ``n_action_steps`` actions of each chunk, then predict again; LeRobot's
action queue) or by temporal ensembling (predict every step and average all chunks' predictions for the
current step with weights exp(-m * age), oldest first, as in ACT, Zhao et al. 2023). Step policies and
chunking policies are therefore evaluated by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

Obs = Mapping[str, np.ndarray] | np.ndarray


@runtime_checkable
class Policy(Protocol):
    def reset(self) -> None: ...

    def predict(self, obs: Obs) -> np.ndarray: ...


def batch_size_of(obs: Obs, single_ndim: Mapping[str, int] | int) -> tuple[int, bool]:
    """(batch size, was_single) from the rank of the observation versus one step's rank."""
    if isinstance(obs, Mapping):
        key = next(k for k in obs if (k in single_ndim if isinstance(single_ndim, Mapping) else True))
        arr = np.asarray(obs[key])
        rank = single_ndim[key] if isinstance(single_ndim, Mapping) else single_ndim
    else:
        arr, rank = np.asarray(obs), single_ndim if isinstance(single_ndim, int) else 1
    if arr.ndim == rank:
        return 1, True
    if arr.ndim == rank + 1:
        return arr.shape[0], False
    raise ValueError(f"observation has {arr.ndim} dims; expected {rank} (one step) or {rank + 1} (a batch)")


class ChunkExecutor:
    """Step-by-step actions from a chunk predictor ``(B, ...) obs -> (B, h, A)`` chunks.

    ``n_action_steps``: actions executed from each chunk before predicting again (receding horizon, 1..h).
    ``ensemble_coef``: if given, temporal ensembling with weights exp(-coef * i), i = 0 for the oldest
    chunk (ACT's m = 0.01); a chunk is then predicted every step and ``n_action_steps`` must be 1.
    The executor tracks each batch row separately; ``reset(rows)`` clears the rows whose episodes restart.
    """

    def __init__(
        self,
        predict_chunk: Callable[[Any], np.ndarray],
        horizon: int,
        *,
        n_action_steps: int | None = None,
        ensemble_coef: float | None = None,
    ) -> None:
        n_action_steps = (
            horizon if n_action_steps is None and ensemble_coef is None else (n_action_steps or 1)
        )
        if not 1 <= n_action_steps <= horizon:
            raise ValueError(f"n_action_steps must be in [1, horizon={horizon}], got {n_action_steps}")
        if ensemble_coef is not None and n_action_steps != 1:
            raise ValueError("temporal ensembling predicts every step: n_action_steps must be 1")
        self.predict_chunk, self.horizon = predict_chunk, horizon
        self.n_action_steps, self.ensemble_coef = n_action_steps, ensemble_coef
        self._chunks: np.ndarray | None = None  # (B, h, A) current chunk (or running ensemble)
        self._pos = np.zeros(0, dtype=np.int64)  # (B,) next action index into the chunk
        self._counts = np.zeros((0, horizon), dtype=np.int64)  # ensembling: predictions averaged so far

    def reset(self, rows: np.ndarray | None = None) -> None:
        if rows is None or self._chunks is None:
            self._chunks, self._pos, self._counts = (
                None,
                np.zeros(0, np.int64),
                np.zeros((0, self.horizon), np.int64),
            )
            return
        self._pos[rows] = self.n_action_steps  # forces a fresh chunk on their next call
        self._counts[rows] = 0

    def __call__(self, obs: Any, batch_size: int) -> np.ndarray:
        if self._chunks is None or len(self._pos) != batch_size:
            self._chunks = None
            self._pos = np.full(batch_size, self.n_action_steps, dtype=np.int64)
            self._counts = np.zeros((batch_size, self.horizon), dtype=np.int64)
        if self.ensemble_coef is not None:
            return self._ensemble(obs)
        stale = self._pos >= self.n_action_steps
        if stale.any():
            rows = np.flatnonzero(stale)
            fresh = np.asarray(self.predict_chunk(_take(obs, rows)))
            if self._chunks is None:
                self._chunks = np.empty((batch_size, *fresh.shape[1:]), dtype=fresh.dtype)
            self._chunks[rows] = fresh
            self._pos[rows] = 0
        action = self._chunks[np.arange(batch_size), self._pos]
        self._pos += 1
        return action

    def _ensemble(self, obs: Any) -> np.ndarray:
        fresh = np.asarray(self.predict_chunk(obs))  # (B, h, A)
        B, h = fresh.shape[:2]
        if self._chunks is None:
            self._chunks = np.zeros_like(fresh)
        weights = np.exp(-self.ensemble_coef * np.arange(h + 1))  # weight of the i-th prediction of a step
        cum = np.cumsum(weights)
        # Running weighted mean per future step: slot j of the buffer holds step t+j, averaged over the
        # counts[j] chunks that predicted it so far; the new chunk is the newest, so it gets the next weight.
        c = self._counts
        w_new = weights[c]  # (B, h)
        prev_total = np.where(c > 0, cum[np.maximum(c - 1, 0)], 0.0)
        self._chunks = (self._chunks * prev_total[..., None] + fresh * w_new[..., None]) / cum[c][..., None]
        self._counts = c + 1
        action = self._chunks[:, 0].copy()
        # Shift one step: slot j+1 becomes slot j; the last slot starts empty.
        self._chunks = np.concatenate([self._chunks[:, 1:], np.zeros_like(self._chunks[:, :1])], axis=1)
        self._counts = np.concatenate([self._counts[:, 1:], np.zeros((B, 1), np.int64)], axis=1)
        return action


def _take(obs: Any, rows: np.ndarray) -> Any:
    if isinstance(obs, Mapping):
        return {k: np.asarray(v)[rows] for k, v in obs.items()}
    return np.asarray(obs)[rows]


class ObsHistory:
    """The last ``n_obs`` observations of each batch row, repeating the first one at an episode start
    (the store's sampler pads histories the same way, so training and execution see the same inputs)."""

    def __init__(self, n_obs: int) -> None:
        self.n_obs = n_obs
        self._frames: dict[str, np.ndarray] | None = None
        self._fresh = np.zeros(0, dtype=bool)

    def reset(self, rows: np.ndarray | None = None) -> None:
        if rows is None or self._frames is None:
            self._frames = None
        else:  # these rows start new episodes: their next push fills the whole history
            self._fresh[rows] = True

    def push(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add one step (batched) and return the history, (B, n_obs, ...) per key."""
        obs = {k: np.asarray(v) for k, v in obs.items()}
        batch = len(next(iter(obs.values())))
        if self._frames is None or len(next(iter(self._frames.values()))) != batch:
            self._frames = {k: np.repeat(v[:, None], self.n_obs, axis=1) for k, v in obs.items()}
            self._fresh = np.zeros(batch, dtype=bool)
            return {k: v.copy() for k, v in self._frames.items()}
        for k, v in obs.items():
            frames = self._frames[k]
            frames[:, :-1] = frames[:, 1:]
            frames[:, -1] = v
            frames[self._fresh] = v[self._fresh][:, None]
        self._fresh[:] = False
        return {k: v.copy() for k, v in self._frames.items()}
