"""The data source of an online method: it steps an env with the learner's exploration policy, records every
transition in the run's trajectory store, and hands the training loop batches from the method's replay.

The loop pulls one batch per update (:meth:`OnlineSource.sample`); the source steps the env once every
``updates_per_step`` batches, after ``explore_steps`` steps with the untrained policy that fill the replay
before the first update. The store has the schema of a collected run (:mod:`robocl.features`: observation
features, action, reward, the success flag), so ``robocl info``, the converters and the samplers read it.

Transitions reach the store through :class:`~robocl.store.OnlineReplay`, committed only at checkpoints (its
ring holds everything between two), so the store never runs ahead of the checkpoint a resume starts from. A
resume rebuilds the replay from the store and re-plays the unfinished episode's stored actions from its
reset seed, which restores a deterministic simulator's state mid-episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from robocl.features import FeatureObs, flatten_obs
from robocl.store import OnlineReplay, TrajectoryStore
from robocl.store.fading import transitions_at

#: ``act(flat_obs, training, t)``: the exploration action at step ``t`` of the episode; ``training`` is
#: False during the initial exploration.
Act = Callable[[np.ndarray, bool, int], np.ndarray]


class Feed(Protocol):
    """The method's replay: filled with the exploration transitions, then one transition per env step."""

    def fill(self, raw: dict[str, np.ndarray], src: np.ndarray) -> None: ...

    def add(self, raw: dict[str, np.ndarray], src: int) -> None: ...

    def sample(self, batch_size: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    @staticmethod
    def sources(state: dict[str, Any]) -> np.ndarray: ...

    def load_state_dict(self, state: dict[str, Any], raw: dict[str, np.ndarray]) -> None: ...


def make_env(env_id: str) -> FeatureObs:
    """The env an online run steps: observations renamed to store features; it needs a time limit."""
    env = gym.make(env_id)
    if env.spec is None or env.spec.max_episode_steps is None:
        raise ValueError(f"{env_id} has no registered time limit (max_episode_steps)")
    return FeatureObs(env)


def train_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode``: even numbers, so never an evaluation seed."""
    return 2 * (seed * 2**20 + episode)


class OnlineSource:
    """Env + store + replay of one online run (``store_path`` is created, or reopened with ``resume``)."""

    def __init__(
        self,
        env_id: str,
        act: Act,
        feed: Feed,
        store_path: str | Path,
        *,
        seed: int,
        explore_steps: int,
        updates_per_step: int,
        commit_every: int,
        resume: bool = False,
    ) -> None:
        self.env = make_env(env_id)
        self.env_id, self.act, self.feed, self.seed = env_id, act, feed, seed
        self.explore_steps, self.updates_per_step = explore_steps, updates_per_step
        spec = self.env.spec
        assert spec is not None and spec.max_episode_steps is not None, "make_env checked the time limit"
        # Every transition between two checkpoints (and the exploration before the first) fits in the ring.
        self.capacity = explore_steps + commit_every + spec.max_episode_steps + 1
        self._replay_kwargs = {"flush_every": self.capacity + 1, "task": env_id, "source": "online"}
        self.updates = 0  # batches handed out
        self.episode, self.episode_return, self.t = 0, 0.0, 0
        self.last_return: float | None = None
        if resume:
            self.store = TrajectoryStore.open(store_path, "a")  # restored by load_state_dict
        else:
            fps = float(self.env.metadata.get("render_fps") or 1.0 / self.env.unwrapped.dt)
            meta = {"env_id": env_id, "recorded_by": "online training"}
            self.store = TrajectoryStore.create(store_path, self.env.features(), fps=fps, meta=meta)
            self.replay = OnlineReplay(self.store, self.capacity, **self._replay_kwargs)
            self._reset()

    @property
    def obs_dim(self) -> int:
        return sum(int(np.prod(s.shape)) for s in self.env.observation_space.spaces.values())

    @property
    def env_steps(self) -> int:
        return self.replay.total_added

    def _reset(self) -> None:
        self.obs, _ = self.env.reset(seed=train_seed(self.seed, self.episode))
        self.t = 0

    def _step(self, training: bool) -> None:
        src = self.replay.total_added  # this transition's index in the run (and in its store)
        action = np.asarray(self.act(flatten_obs(self.obs, tuple(self.replay.obs_keys)), training, self.t))
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("success", False))
        self.replay.add(self.obs, action, float(reward), next_obs, terminated, truncated, success)
        if src + 1 == self.explore_steps:
            self.feed.fill(
                transitions_at(self.replay, np.arange(self.explore_steps)), np.arange(self.explore_steps)
            )
        elif training:
            self.feed.add(transitions_at(self.replay, np.array([src])), src)
        self.t += 1
        self.episode_return += float(reward)
        if terminated or truncated:
            self.last_return, self.episode, self.episode_return = self.episode_return, self.episode + 1, 0.0
            self._reset()
        else:
            self.obs = next_obs

    def sample(self, batch_size: int) -> dict[str, Any]:
        """The next batch; the env steps first when this batch starts a new env step's updates."""
        if self.updates % self.updates_per_step == 0:
            while self.replay.total_added < self.explore_steps:
                self._step(training=False)
            self._step(training=True)
        self.updates += 1
        return self.feed.sample(batch_size)

    def metrics(self) -> dict[str, float]:
        """What the loop logs beside the update metrics."""
        out = {"env_steps": float(self.env_steps)}
        if self.last_return is not None:
            out["episode_return"] = self.last_return
        return out

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        replay_state = self.replay.state_dict()  # commits the finished episodes first
        return {
            "replay": _tree(replay_state, torch.from_numpy),
            "feed": self.feed.state_dict(),
            "episode": self.episode,
            "episode_return": self.episode_return,
            "updates": self.updates,
            "store_steps": self.store.n_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.store.n_steps != state["store_steps"]:
            raise ValueError(
                f"{self.store.location} holds {self.store.n_steps} steps but the checkpoint expects "
                f"{state['store_steps']}: the run was killed while saving; it cannot resume exactly"
            )
        replay_state = _tree(state["replay"], lambda t: t.numpy())
        self.replay = OnlineReplay.from_store(self.store, self.capacity, replay_state, **self._replay_kwargs)
        sources = self.feed.sources(state["feed"])
        self.feed.load_state_dict(state["feed"], transitions_at(self.replay, sources))
        self.episode, self.episode_return = int(state["episode"]), float(state["episode_return"])
        self.updates = int(state["updates"])
        self._reset()
        tail = replay_state["tail"]
        if tail is not None:
            for action in tail["action"]:
                self.obs, *_ = self.env.step(action)
                self.t += 1
            replayed = flatten_obs(self.obs, tuple(self.replay.obs_keys))
            expected = flatten_obs(
                {k: v[-1] for k, v in tail["next_obs"].items()}, tuple(self.replay.obs_keys)
            )
            if not np.array_equal(replayed, expected):
                raise RuntimeError(f"{self.env_id} is not deterministic: the unfinished episode differs")

    def close(self) -> None:
        self.env.close()
        self.store.close()


def _tree(value: Any, leaf: Any) -> Any:
    """Map ``leaf`` over the arrays of nested dicts (trainer.pt holds tensors, the replay numpy)."""
    if isinstance(value, Mapping):
        return {k: _tree(v, leaf) for k, v in value.items()}
    return leaf(value) if isinstance(value, np.ndarray | torch.Tensor) else value
