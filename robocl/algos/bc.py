"""Chunked behaviour cloning on low-dimensional observations.

The simplest policy robocl trains: an MLP maps the normalised history of ``n_obs`` observations to a chunk
of ``horizon`` actions normalised to [-1, 1] (min-max over the store's statistics, as diffusion_policy and
LeRobot normalise actions), trained with an L2 loss on the steps that are not padding (ACT masks padded
steps the same way). It is the imitation baseline for the offline RL methods and the algorithm the shared
loop's contract tests run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from robocl.checkpoint import Checkpoint
from robocl.features import check_training_data, data_world, normalization_stats, state_keys
from robocl.nets import MLP, Normalizer
from robocl.policy import ChunkExecutor, ObsHistory, batch_size_of
from robocl.run.loop import guarded_step
from robocl.run.runtime import seeded
from robocl.store import StoreView, TrajectoryStore, WindowSampler


@dataclass
class BCConfig:
    """Chunked behaviour cloning."""

    # Low-dimensional store features fed to the policy; None = every state feature of the store.
    obs_keys: tuple[str, ...] | None = None
    n_obs: int = 2  # observation history length
    horizon: int = 10  # actions predicted per chunk
    n_action_steps: int = 5  # actions executed per chunk at inference (receding horizon)
    hidden: tuple[int, ...] = (256, 256)  # MLP widths
    lr: float = 3e-4  # Adam learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 10.0  # gradient clipping
    seed: int = 0  # torch initialisation and dropout

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [1, horizon={self.horizon}]")
        if self.n_obs < 1 or self.obs_keys == ():
            raise ValueError("BC needs n_obs >= 1 and at least one observation key")


@dataclass
class PolicySpec:
    """Shapes the network is built for, stored with the checkpoint."""

    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    fps: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)
    # The data's env, robot, rate, feature names/shapes/dtypes and action range (robocl.features.data_world),
    # which robocl eval checks an env against; empty in checkpoints from before it was recorded.
    world: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> PolicySpec:
        """The spec a checkpoint's config.json records."""
        shapes = {k: tuple(v) for k, v in spec["obs_shapes"].items()}
        world = dict(spec.get("world", {}))
        return cls(shapes, int(spec["action_dim"]), float(spec["fps"]), dict(spec["extra"]), world)

    @classmethod
    def from_store(
        cls, store: TrajectoryStore, obs_keys: tuple[str, ...], action_key: str = "action"
    ) -> PolicySpec:
        return cls(
            obs_shapes={k: store.features[k].shape for k in obs_keys},
            action_dim=int(np.prod(store.features[action_key].shape)),
            fps=store.fps,
            world=data_world(store, obs_keys),
        )


class BCNet(nn.Module):
    def __init__(self, config: BCConfig, spec: PolicySpec) -> None:
        super().__init__()
        self.config, self.spec = config, spec
        shapes = {**spec.obs_shapes, "action": (spec.action_dim,)}
        self.normalizer = Normalizer(
            shapes, {**{k: "mean_std" for k in spec.obs_shapes}, "action": "min_max"}
        )
        in_dim = config.n_obs * sum(int(np.prod(s)) for s in spec.obs_shapes.values())
        self.mlp = MLP(in_dim, config.hidden, config.horizon * spec.action_dim)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, n_obs, ...) per key -> normalised action chunk (B, h, A)."""
        parts = [self.normalizer.normalize(k, obs[k].float()).flatten(1) for k in self.spec.obs_shapes]
        out = self.mlp(torch.cat(parts, dim=1))
        return out.view(-1, self.config.horizon, self.spec.action_dim)


class BC:
    name: ClassVar[str] = "bc"

    def __init__(self, config: BCConfig, spec: PolicySpec, device: str | torch.device = "cpu") -> None:
        self.config, self.spec, self.device = config, spec, torch.device(device)
        with seeded(config.seed):
            self.net = BCNet(config, spec).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.step = 0

    @classmethod
    def from_store(cls, config: BCConfig, store: TrajectoryStore, device: str = "cpu") -> BC:
        """Inputs (default: every state feature), shapes and statistics from ``store``, checked first."""
        if config.obs_keys is None:
            config = replace(config, obs_keys=state_keys(store))
        check_training_data(store, method="bc", state=config.obs_keys)
        algo = cls(config, PolicySpec.from_store(store, config.obs_keys), device)
        algo.net.normalizer.load_stats({**store.stats, **normalization_stats(store, config.obs_keys)[0]})
        return algo

    def sampler(self, data: TrajectoryStore | StoreView) -> WindowSampler:
        """Windows shaped for this policy (history, chunk length, observation keys), seeded from config."""
        return WindowSampler(
            data,
            n_obs=self.config.n_obs,
            horizon=self.config.horizon,
            obs_keys=self.config.obs_keys,
            reward_key=None,
            seed=self.config.seed,
        )

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        pred = self.net(batch["obs"])
        target = self.net.normalizer.normalize("action", batch["action"].float().flatten(2))
        valid = (~batch["action_is_pad"]).float()  # (B, h)
        per_step = ((pred - target) ** 2).mean(-1)
        loss = (per_step * valid).sum() / valid.sum().clamp_min(1.0)
        grad_norm = guarded_step(
            loss, self.optimizer, self.net.parameters(), max_grad_norm=self.config.max_grad_norm
        )
        self.step += 1
        return {"loss": loss.item(), "grad_norm": grad_norm}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        trainer = {"optimizer": self.optimizer.state_dict(), "step": self.step}
        return {"model": dict(self.net.state_dict()), "trainer": trainer}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["trainer"]["optimizer"])
        self.step = int(state["trainer"]["step"])

    @staticmethod
    def policy_from_checkpoint(ckpt: Checkpoint, device: str = "cpu") -> ChunkPolicy:
        """The network alone (no optimiser), for inference."""
        net = BCNet(BCConfig(**ckpt.config), PolicySpec.from_dict(ckpt.spec)).to(device)
        net.load_state_dict(ckpt.tensors)
        return ChunkPolicy(net, torch.device(device))

    def policy(self) -> ChunkPolicy:
        return ChunkPolicy(self.net, self.device)


class ChunkPolicy:
    """numpy-in, numpy-out inference for networks mapping observation histories to action chunks."""

    def __init__(
        self,
        net: BCNet,
        device: torch.device,
        n_action_steps: int | None = None,
        ensemble_coef: float | None = None,
    ) -> None:
        self.net, self.device = net.eval(), device
        self.obs_keys = list(net.spec.obs_shapes)
        self._single_ndim = {k: len(s) for k, s in net.spec.obs_shapes.items()}
        self.history = ObsHistory(net.config.n_obs)
        steps = (
            n_action_steps
            if n_action_steps is not None
            else (None if ensemble_coef else net.config.n_action_steps)
        )
        self.executor = ChunkExecutor(
            self.predict_chunk, net.config.horizon, n_action_steps=steps, ensemble_coef=ensemble_coef
        )

    def reset(self) -> None:
        self.history.reset()
        self.executor.reset()

    @torch.no_grad()
    def predict_chunk(self, obs_history: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, n_obs, ...) histories -> (B, h, A) actions in the environment's units."""
        obs = {k: torch.as_tensor(np.asarray(obs_history[k]), device=self.device) for k in self.obs_keys}
        chunk = self.net.normalizer.unnormalize("action", self.net(obs))
        return chunk.cpu().numpy()

    def predict(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        batch, single = batch_size_of(obs, self._single_ndim)
        step = {k: np.asarray(obs[k]).reshape(batch, *self.net.spec.obs_shapes[k]) for k in self.obs_keys}
        action = self.executor(self.history.push(step), batch)
        return action[0] if single else action
