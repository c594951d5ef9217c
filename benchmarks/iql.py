"""IQL (Kostrikov, Nair, Levine 2022, arXiv 2110.06169): the one-step offline-RL baseline of the CO-RFT
benchmark, on the store's low-dimensional observations (one step, no history, no chunks).

Defaults are d3rlpy's ``IQLConfig`` (expectile 0.7, advantage temperature 3.0, weights clipped at 100, twin
Q, Polyak 0.005, gamma 0.99, Adam 3e-4 with the actor's lr cosine-annealed, batch 256, 2 x 256 MLPs) and
CORL's Gaussian actor (tanh mean, state-independent log-std in [-5, 2]); it acts with the mean. Rewards are
CO-RFT's (-1 per step until success, :mod:`robocl.store.chunked`), observations are standardised with the
store's statistics and actions scaled to [-1, 1] by their min-max, so the baseline sees what CO-RFT sees
except the chunking, the history and the relative positions.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robocl.features import normalization_stats
from robocl.nets import MLP, Normalizer
from robocl.run.loop import to_torch
from robocl.store import TrajectoryStore, WindowSampler
from robocl.store.chunked import ChunkedTDSampler, mc_returns, step_rewards


@dataclass
class IQLConfig:
    obs_keys: tuple[str, ...] = ("observation.state", "observation.object")
    expectile: float = 0.7  # tau of the expectile value loss (d3rlpy, IQL's MuJoCo setting)
    temperature: float = 3.0  # beta of the advantage weights exp(beta (Q - V))
    max_weight: float = 100.0  # clip of those weights
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of the target Q
    lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    n_updates: int = 20_000
    seed: int = 0


class IQL:
    def __init__(self, config: IQLConfig, store: TrajectoryStore) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        feats = store.features
        self.shapes = {k: tuple(feats[k].shape) for k in config.obs_keys}
        obs_dim = sum(int(np.prod(s)) for s in self.shapes.values())
        act_dim = int(np.prod(feats["action"].shape))
        self.normalizer = Normalizer(
            {**self.shapes, "action": (act_dim,)},
            {**{k: "mean_std" for k in self.shapes}, "action": "min_max"},
        )
        self.normalizer.load_stats({**store.stats, **normalization_stats(store, config.obs_keys)[0]})
        self.q = nn.ModuleList(MLP(obs_dim + act_dim, config.hidden, 1) for _ in range(2))
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = MLP(obs_dim, config.hidden, 1)
        self.actor = MLP(obs_dim, config.hidden, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=config.lr)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=config.lr)
        self.actor_opt = torch.optim.Adam([*self.actor.parameters(), self.log_std], lr=config.lr)
        self.actor_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, config.n_updates)
        rewards = step_rewards(store, "step_penalty")
        self.sampler = ChunkedTDSampler(
            WindowSampler(store, n_obs=1, horizon=1, gamma=config.gamma, obs_keys=list(self.shapes),
                          reward_key=None, seed=config.seed),
            rewards, mc_returns(rewards, store.episodes, config.gamma), prefix=False,
        )  # fmt: skip

    def flat(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, ...) per key -> (B, obs_dim) standardised."""
        return torch.cat([self.normalizer.normalize(k, obs[k].float()).flatten(1) for k in self.shapes], 1)

    def update(self) -> dict[str, float]:
        cfg = self.config
        b = to_torch(self.sampler.sample(cfg.batch_size), "cpu")
        obs, nxt = self.flat(b["obs"]), self.flat(b["next_obs"])
        action = self.normalizer.normalize("action", b["action"][:, 0].float()).clamp(-1, 1)
        reward, done = b["reward"][:, 0], b["done"].float()
        with torch.no_grad():
            q_t = torch.min(*(q(torch.cat([obs, action], 1)).squeeze(-1) for q in self.q_target))
            y = reward + cfg.gamma * (1 - done) * self.v(nxt).squeeze(-1)
        v = self.v(obs).squeeze(-1)
        diff = q_t - v
        weight = torch.abs(cfg.expectile - (diff < 0).float())
        v_loss = (weight * diff**2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        obs_action = torch.cat([obs, action], 1)
        q_loss = torch.stack([F.mse_loss(q(obs_action).squeeze(-1), y) for q in self.q]).sum()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            for t, o in zip(self.q_target.parameters(), self.q.parameters(), strict=True):
                t.lerp_(o, cfg.tau)
            adv_weight = torch.exp(cfg.temperature * (q_t - v.detach())).clamp(max=cfg.max_weight)
        dist = torch.distributions.Normal(torch.tanh(self.actor(obs)), self.log_std.clamp(-5, 2).exp())
        actor_loss = -(adv_weight * dist.log_prob(action).sum(-1)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.actor_schedule.step()
        return {"v_loss": v_loss.item(), "q_loss": q_loss.item(), "actor_loss": actor_loss.item()}

    def policy(self) -> IQLPolicy:
        return IQLPolicy(self)


class IQLPolicy:
    """Acts with the actor's mean; observations keyed by store feature names, one step or a batch."""

    def __init__(self, algo: IQL) -> None:
        self.algo, self.obs_keys = algo, list(algo.shapes)

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def predict(self, obs: Mapping[str, Any]) -> np.ndarray:
        first = self.obs_keys[0]
        single = np.asarray(obs[first]).ndim == len(self.algo.shapes[first])
        x = {
            k: torch.as_tensor(np.asarray(obs[k], np.float32)).reshape(-1, 1, *self.algo.shapes[k])
            for k in self.obs_keys
        }
        action = self.algo.normalizer.unnormalize("action", torch.tanh(self.algo.actor(self.algo.flat(x))))
        return action[0].numpy() if single else action.numpy()
