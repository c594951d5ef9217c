"""Symphony's fading replay buffer: fixed age-based sampling weights over a full, device-resident ring.

The buffer (Ishuov et al., arXiv:2512.10477, "Fading Replay Buffer") is filled at once by tiling the
exploration transitions, stays full, and evicts FIFO through a circular pointer: ``ptr`` is the physical
slot of the oldest transition and age rank ``k`` (0 = oldest) lives in slot ``(ptr + k) % N``, so an insert
is O(1) and the fixed rank weights need no update. Batches are drawn on the training device by inverse CDF
(``searchsorted`` over the precomputed cumulative weights); nothing crosses to the host while sampling.

The device tensors are a cache. What defines the buffer is ``src``, the global index (``OnlineReplay``'s
``total_added`` counter, equal to the step index in the run's trajectory store) of the transition held in
each slot; :func:`transitions_at` reads those transitions back from the store and the replay's RAM ring, so
a checkpoint carries N integers instead of N transitions and a resumed run rebuilds the identical buffer.

Terminal transitions (discount 0) are recycled: when the slot about to be overwritten holds one, the pointer
steps over it and it re-enters at the newest end. The S3 code does that forever; the newest draft's text
lets a terminal survive one extra cycle only (``recycle="once"``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from robocl.store.replay import OnlineReplay

PHI = (1 + math.sqrt(5)) / 2


def fading_weights(n: int, kind: Literal["tanh", "bell"] = "tanh") -> torch.Tensor:
    """Unnormalised sampling weight of each age rank, oldest (x = 0) to newest (x = (n-1)/n); (n,) float64.

    tanh (S3): tanh((pi x)^e), the oldest ~25% fade. bell (newest draft): exp(-(|x - phi/2| phi)^(2e)),
    a plateau peaking at x = 0.809 whose newest slot keeps weight 0.998.
    """
    x = torch.arange(n, dtype=torch.float64) / n
    if kind == "tanh":
        return torch.tanh((math.pi * x) ** math.e)
    if kind == "bell":
        return torch.exp(-((torch.abs(x - PHI / 2) * PHI) ** (2 * math.e)))
    raise ValueError(f"unknown fading weights {kind!r}; expected 'tanh' or 'bell'")


class FadingReplay:
    """A full ring of N transitions (obs, action, reward, next_obs, discount) on ``device``."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        *,
        weights: Literal["tanh", "bell"] = "tanh",
        recycle: Literal["forever", "once"] = "forever",
        device: str | torch.device = "cpu",
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2, got {capacity}")
        if recycle not in ("forever", "once"):
            raise ValueError(f"recycle must be 'forever' or 'once', got {recycle!r}")
        self.capacity, self.recycle, self.device = capacity, recycle, torch.device(device)
        n = capacity
        self.obs = torch.zeros(n, obs_dim, device=self.device)
        self.action = torch.zeros(n, action_dim, device=self.device)
        self.reward = torch.zeros(n, device=self.device)
        self.next_obs = torch.zeros(n, obs_dim, device=self.device)
        self.discount = torch.zeros(n, device=self.device)
        # float64 cumsum: with N = 512k float32 sums would lose the tail's resolution.
        self._cdf = torch.cumsum(fading_weights(n, weights), 0).to(self.device)
        # Host-side bookkeeping, so inserting never waits on the device.
        self.src = np.full(n, -1, dtype=np.int64)  # global transition index held in each slot
        self.terminal = np.zeros(n, dtype=bool)
        self.recycled = np.zeros(n, dtype=bool)
        self.ptr = 0  # physical slot of the oldest transition (the next to be evicted)
        self.full = False

    def fill(self, transitions: dict[str, torch.Tensor], src: np.ndarray) -> None:
        """Tile ``len(src)`` transitions (oldest first) over the ring; ``capacity`` must be a multiple."""
        m = len(src)
        if m == 0 or self.capacity % m:
            raise ValueError(f"capacity {self.capacity} is not a positive multiple of {m} transitions")
        self.src = np.tile(np.asarray(src, dtype=np.int64), self.capacity // m)
        self._load(transitions, np.tile(np.arange(m), self.capacity // m))
        self.ptr, self.recycled[:], self.full = 0, False, True

    def _load(self, transitions: dict[str, torch.Tensor], rows: np.ndarray) -> None:
        take = torch.as_tensor(rows, device=self.device)
        for key in ("obs", "action", "reward", "next_obs", "discount"):
            getattr(self, key).copy_(transitions[key].to(self.device)[take])
        self.terminal = (self.discount == 0).cpu().numpy()

    def add(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_obs: torch.Tensor,
        discount: float,
        src: int,
    ) -> None:
        """Overwrite the oldest non-recycled slot; the new transition becomes the newest."""
        if not self.full:
            raise RuntimeError("fill() the buffer with the exploration transitions before adding")
        for _ in range(self.capacity - 1):
            i = self.ptr
            if not self.terminal[i] or (self.recycle == "once" and self.recycled[i]):
                break
            # Stepping over slot i makes its terminal the newest rank: it re-enters the fresh end.
            self.recycled[i] = True
            self.ptr = (i + 1) % self.capacity
        i = self.ptr
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.discount[i] = discount
        self.src[i], self.terminal[i], self.recycled[i] = src, discount == 0, False
        self.ptr = (i + 1) % self.capacity

    def sample_slots(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Physical slots of ``batch_size`` i.i.d. draws over age ranks with the fading weights; on device."""
        u = torch.rand(batch_size, generator=generator, device=self.device, dtype=torch.float64)
        rank = torch.searchsorted(self._cdf, u * self._cdf[-1], right=True).clamp_max(self.capacity - 1)
        return (rank + self.ptr) % self.capacity

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        slots = self.sample_slots(batch_size, generator)
        return {
            "obs": self.obs[slots],
            "action": self.action[slots],
            "reward": self.reward[slots],
            "next_obs": self.next_obs[slots],
            "discount": self.discount[slots],
        }

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "src": torch.from_numpy(self.src.copy()),
            "recycled": torch.from_numpy(self.recycled.copy()),
            "ptr": self.ptr,
            "full": self.full,
        }

    def load_state_dict(self, state: dict[str, Any], transitions: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` plus ``transitions_at`` of the unique sources (sorted)."""
        self.src = state["src"].numpy().copy()
        self.ptr, self.full = int(state["ptr"]), bool(state["full"])
        if self.full:
            unique = np.unique(self.src)
            self._load(transitions, np.searchsorted(unique, self.src))
        self.recycled = state["recycled"].numpy().copy()


def transitions_at(replay: OnlineReplay, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Raw transitions with global indices ``idx`` (ascending): from the replay's RAM ring when it still
    holds them, otherwise from the committed episodes of its store. Observations are flat (the replay's
    observation features concatenated in order); rewards are the env's, unscaled."""
    idx = np.asarray(idx, dtype=np.int64)
    first_in_ring = replay.total_added - replay.size
    in_ring = idx >= first_in_ring
    obs_dim = sum(int(np.prod(replay.obs[k].shape[1:])) for k in replay.obs_keys)
    out = {
        "obs": np.zeros((len(idx), obs_dim), np.float32),
        "action": np.zeros((len(idx), *replay.action.shape[1:]), np.float32),
        "reward": np.zeros(len(idx), np.float32),
        "terminated": np.zeros(len(idx), bool),
    }
    out["next_obs"] = np.zeros_like(out["obs"])

    def flat(parts: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([parts[k].reshape(len(parts[k]), -1) for k in replay.obs_keys], axis=1)

    if in_ring.any():
        got = replay.get(idx[in_ring] - first_in_ring)
        for key in ("action", "reward", "terminated"):
            out[key][in_ring] = got[key]
        out["obs"][in_ring], out["next_obs"][in_ring] = flat(got["obs"]), flat(got["next_obs"])
    old = idx[~in_ring]
    if len(old):
        store = replay.store
        if old[-1] >= store.n_steps:
            raise ValueError(f"transition {old[-1]} is neither committed ({store.n_steps}) nor in the ring")
        table = store.episodes
        episode = np.searchsorted(table["start"], old, side="right") - 1
        last = old == table["start"][episode] + table["length"][episode] - 1
        following = np.where(last, old, old + 1)  # after an episode's last step: another episode's
        obs = flat({k: store.take(k, old) for k in replay.obs_keys})
        nxt = flat({k: store.take(k, following) for k in replay.obs_keys})
        final = flat({k: store.final_obs(k)[episode] for k in replay.obs_keys})
        out["obs"][~in_ring], out["next_obs"][~in_ring] = obs, np.where(last[:, None], final, nxt)
        out["action"][~in_ring] = store.take(replay.action_key, old)
        out["reward"][~in_ring] = store.take(replay.reward_key, old)
        out["terminated"][~in_ring] = last & table["terminated"][episode]
    return out


class ScaledFadingFeed:
    """The fading replay as Symphony (S3) feeds its learner: raw env transitions in; rows out with the
    reward divided by the mean |r| of the exploration transitions that fill the buffer, and the discount
    gamma (0 where the episode terminated; a truncation bootstraps). Batches come from its own seeded
    generator. The scale is fixed when the buffer is filled, and saved with the buffer's sources."""

    def __init__(
        self,
        capacity: int,
        obs_dim: int,
        action_dim: int,
        *,
        gamma: float,
        seed: int,
        weights: Literal["tanh", "bell"] = "tanh",
        recycle: Literal["forever", "once"] = "forever",
        device: str | torch.device = "cpu",
    ) -> None:
        self.buffer = FadingReplay(
            capacity, obs_dim, action_dim, weights=weights, recycle=recycle, device=device
        )
        self.gamma, self.device = gamma, torch.device(device)
        self.reward_scale = torch.ones((), dtype=torch.float32)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def rows(self, raw: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        terminated = torch.from_numpy(raw["terminated"])
        return {
            "obs": torch.from_numpy(raw["obs"]),
            "action": torch.from_numpy(raw["action"]),
            "reward": torch.from_numpy(raw["reward"]).float() / self.reward_scale,
            "next_obs": torch.from_numpy(raw["next_obs"]),
            "discount": torch.full(terminated.shape, self.gamma).masked_fill(terminated, 0.0),
        }

    def fill(self, raw: dict[str, np.ndarray], src: np.ndarray) -> None:
        """Set the reward scale from the exploration transitions and tile them over the buffer."""
        scale = float(np.abs(raw["reward"]).mean())
        if scale == 0:
            raise ValueError(f"all {len(src)} exploration rewards are 0: no reward scale")
        self.reward_scale = torch.tensor(scale, dtype=torch.float32)
        self.buffer.fill(self.rows(raw), src)

    def add(self, raw: dict[str, np.ndarray], src: int) -> None:
        """One transition (arrays with a leading axis of 1), the newest."""
        row = {k: v[0].to(self.device) for k, v in self.rows(raw).items()}
        self.buffer.add(
            row["obs"], row["action"], row["reward"], row["next_obs"], float(row["discount"]), src
        )

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.buffer.sample(batch_size, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "reward_scale": self.reward_scale.clone(),
            "generator": self.generator.get_state(),
        }

    @staticmethod
    def sources(state: dict[str, Any]) -> np.ndarray:
        """The transitions a saved feed holds (ascending): what :meth:`load_state_dict` needs read back."""
        src = state["buffer"]["src"].numpy()
        return np.unique(src[src >= 0])

    def load_state_dict(self, state: dict[str, Any], raw: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state_dict` plus :func:`transitions_at` of :meth:`sources`."""
        self.reward_scale = state["reward_scale"].float()
        self.generator.set_state(state["generator"])
        self.buffer.load_state_dict(state["buffer"], self.rows(raw))
