"""Symphony: one online actor-critic with limited parametric noise, Swaddling and a fading replay buffer.

Ishuov, Folgheraiter, Nurmanov, Gordo, Farkas, Dombi, arXiv:2512.10477. One module holds the actor and three
critics of ``n_q`` nodes; one AdamW without bias correction steps it on one combined loss. The critics'
nodes all regress one TD target with ReHSE; the target value is a fixed-weight sum of the target critic's
*sorted* nodes (soft truncation of optimistic nodes). The actor, trained on next states through the target
critic (no target actor), maximises ReHAE of a temporal advantage normalised by an EMA baseline. Actions are
``a_max tanh(S A + eps)`` with constant clipped noise; Swaddling keeps the strength S near 1/e, so the
policy's signal is buried in the noise unless a joint needs a large command. Defaults are the paper's S3
version (Dec 2025 code); the newest draft's changes (Aug 2026) are options, named so in the config.

Deviations, and why:
- Advantage denominator: |baseline| is clamped to >= ``ADV_FLOOR`` (the paper divides by |M| with no
  epsilon); with M0 = 0 a zero-valued batch would otherwise divide by zero.
- Not implemented from the newest draft: gradient dropout (S2), the Fourier feature extractor and reward
  net, one noise tensor reused per env step, the Humanoid control-cost add-back, UTD 1 (set
  ``updates_per_step``). The newest Polyak "all parameters" equals S3's critics-only update here because
  the target's actor is never used.
- Seeds: the authors reseed every step with fresh random seeds; robocl draws all noise and batches from
  one seeded device generator so runs are reproducible and resumable.
- Periodic evaluation runs through the shared evaluator (``robocl.eval``), including during exploration,
  so curves start at the first mark; the S3 code evaluates only once training has started.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from robocl.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from robocl.policy import batch_size_of
from robocl.store import Feature, OnlineReplay, TrajectoryStore
from robocl.store.fading import PHI, FadingReplay, transitions_at
from robocl.train import guarded_step

ADV_FLOOR = 1e-6  # smallest |baseline| the advantage is divided by (robocl's guard, see module docstring)


@dataclass
class SymphonyConfig:
    """Symphony (arXiv:2512.10477); defaults are the paper's S3 version."""

    hidden: int = 512  # width h of every FF block (S3 rule: h = buffer size / 1000)
    n_q: int = 128  # nodes per critic (S3: h / 4); the value uses n_critics * n_q sorted nodes
    n_critics: int = 3  # independent critic networks
    batch_size: int = 384  # transitions per update (S3: = number of nodes)
    lr: float = 1e-4  # AdamW step size
    betas: tuple[float, float] = (0.618, 0.995)  # AdamW moment decays (b1 = 1/phi)
    weight_decay: float = 0.01  # decoupled weight decay
    anneal_eps: bool = False  # newest draft: AdamW eps annealed from 1 - 1e-8 to 1e-8 (SGD-like start)
    tau: float = 0.005  # Polyak rate of the target critics per update (newest draft: 0.001)
    gamma: float = 0.99  # discount; only `terminated` zeroes it
    alpha: float = 0.618  # EMA coefficient of the advantage baseline (1/phi)
    baseline: Literal["per_sample", "scalar"] = "per_sample"  # S3 per-sample baseline; newest: scalar EMA
    swaddle_in_target: bool = False  # newest draft: subtract the Swaddling value H' inside the TD target
    learnable_resine: bool = False  # newest draft: ReSine's 1.5 becomes a learnable 1/sigmoid(b)
    updates_per_step: int = 3  # gradient updates per env step after exploration (newest: 1)
    n_explore: int = 10_240  # env steps with the untrained actor before any update
    tile: int = 50  # exploration transitions are tiled this many times; buffer size = tile * n_explore
    value_weights: Literal["tanh", "bell"] = "tanh"  # node weights of the sorted target value (newest: bell)
    replay_weights: Literal["tanh", "bell"] = "tanh"  # fading replay age weights (newest: bell)
    recycle: Literal["forever", "once"] = "forever"  # terminal recycling: S3 code / newest draft's text
    a_max: float = 1.0  # action = a_max * tanh(...); the paper sends [-1, 1] even to Humanoid's +-0.4 box
    noise_bound: float = math.e  # eps = clip(N(0,1), -b, b) / b; S3 uses e, the SE variant pi
    swaddle_clamp: float = 1e-3  # S and beta clamped to [c, 1 - c] in the Swaddling loss (newest: 1e-8)
    fall_steps: int = 50  # last steps of a capped training episode run noise only (newest: 100)
    seed: int = 0  # initialisation, noise, batch sampling and env reset seeds

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        for name in ("hidden", "n_q", "n_critics", "batch_size", "updates_per_step", "n_explore", "tile"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.tau <= 1 and 0 <= self.gamma < 1 and 0 <= self.alpha < 1):
            raise ValueError(f"need 0 < tau={self.tau} <= 1, 0 <= gamma={self.gamma} < 1, 0 <= alpha < 1")
        if self.baseline not in ("per_sample", "scalar") or self.value_weights not in ("tanh", "bell"):
            raise ValueError(f"bad baseline={self.baseline!r} or value_weights={self.value_weights!r}")
        if not 0 < self.swaddle_clamp < 0.5:
            raise ValueError(f"swaddle_clamp must be in (0, 0.5), got {self.swaddle_clamp}")
        if self.tile * self.n_explore < 2:
            raise ValueError(f"buffer tile * n_explore = {self.tile * self.n_explore} must be >= 2")


@dataclass
class OnlineLoopConfig:
    """How long and how observably a Symphony run trains (method hyper-parameters are in SymphonyConfig)."""

    env: str = "Humanoid-v5"  # gymnasium id with a time limit; Dict observations are flattened
    steps: int = 1_000_000  # env steps in total, exploration included (a resumed run continues up to it)
    eval_every: int = 2_500  # env steps between deterministic evaluations (paper: 2,500); 0: end only
    eval_episodes: int = 25  # episodes per evaluation (paper: 25)
    checkpoint_every: int = 10_000  # env steps between checkpoints (one more is written at exit)
    log_every: int = 1_000  # env steps between TensorBoard writes of the update metrics
    device: str = "cpu"  # training device: "cpu", "cuda" or "cuda:N"

    def __post_init__(self) -> None:
        for name in ("steps", "eval_episodes", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")


@dataclass
class SymphonySpec:
    """Shapes and env facts the networks are built for, stored with the checkpoint."""

    obs_dim: int
    action_dim: int
    env_id: str = ""
    max_episode_steps: int = 1000


# ---------------------------------------------------------------------------------------------- networks
class ReSine(nn.Module):
    """SiLU-rectified sine with a learnable per-unit period: f = s sin(x/s), out = f sigmoid(w f / s)."""

    def __init__(self, width: int, learnable_w: bool) -> None:
        super().__init__()
        bound = 1 / math.sqrt(width)
        self.p = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        # S3 fixes w = 1.5; the newest draft learns w = 1 / sigmoid(b) per unit (same init as p).
        self.b = nn.Parameter(torch.empty(width).uniform_(-bound, bound)) if learnable_w else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sig = torch.sigmoid(self.p)
        f = sig * torch.sin(x / sig)
        w = 1.5 if self.b is None else 1 / torch.sigmoid(self.b)
        return f * torch.sigmoid(w * f / sig)


class FF(nn.Sequential):
    """Linear -> LayerNorm -> Linear -> ReSine -> Linear: the paper's block, one nonlinearity"""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, learnable_w: bool) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, hidden),
            ReSine(hidden, learnable_w),
            nn.Linear(hidden, out_dim),
        )


class ActorCritic(nn.Module):
    """The actor (direction, strength, beta heads) and ``n_critics`` critics in one module, one optimiser."""

    def __init__(self, config: SymphonyConfig, spec: SymphonySpec) -> None:
        super().__init__()
        self.action_dim = spec.action_dim
        self.actor = FF(spec.obs_dim, config.hidden, 3 * spec.action_dim, config.learnable_resine)
        self.critics = nn.ModuleList(
            FF(spec.obs_dim + spec.action_dim, config.hidden, config.n_q, config.learnable_resine)
            for _ in range(config.n_critics)
        )

    def heads(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, obs_dim) -> direction A in (-1, 1), strength S and beta in [0, 1); each (B, action_dim)."""
        y = torch.tanh(self.actor(obs) / 2)
        direction, strength, beta = y.split(self.action_dim, dim=-1)
        return direction, strength.abs(), beta.abs()

    def nodes(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, n_critics * n_q) node values of every critic, concatenated."""
        x = torch.cat([obs, action], dim=-1)
        return torch.cat([critic(x) for critic in self.critics], dim=-1)


# ---------------------------------------------------------------------------------------------- losses
def rehse(u: torch.Tensor) -> torch.Tensor:
    """Rectified Hubber symmetric error u tanh(u/2): ~u^2/2 near 0, ~|u| far away."""
    return u * torch.tanh(u / 2)


def rehae(u: torch.Tensor) -> torch.Tensor:
    """Rectified Hubber asymmetric error |u| tanh(u/2): odd, monotone, flat at 0."""
    return u.abs() * torch.tanh(u / 2)


def barrier(x: torch.Tensor) -> torch.Tensor:
    """Omega(x) = ln((1 + x) / (1 - x)) = 2 atanh(x)."""
    return torch.log((1 + x) / (1 - x))


def value_weights(n: int, kind: Literal["tanh", "bell"] = "tanh") -> torch.Tensor:
    """Normalised weights of the ascending-sorted nodes, (n,) float32.

    tanh (S3): tanh((pi (1 - x))^e), dropping the top ~25-30% of nodes; bell (newest draft):
    exp(-(|1 - phi/2 - x| phi)^(2e)), the mirror image of the replay's bell.
    """
    x = torch.arange(n, dtype=torch.float64) / n
    if kind == "tanh":
        w = torch.tanh((math.pi * (1 - x)) ** math.e)
    else:
        w = torch.exp(-((torch.abs(1 - PHI / 2 - x) * PHI) ** (2 * math.e)))
    return (w / w.sum()).float()


def soft_truncated_value(nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, Nq) nodes -> (B,) weighted sum of the nodes sorted ascending."""
    return nodes.sort(dim=-1).values @ weights


def action_noise(
    shape: tuple[int, ...], bound: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """eps = clip(N(0, 1), -bound, bound) / bound, in [-1, 1]; constant over training."""
    return torch.randn(shape, generator=generator, device=device).clamp(-bound, bound) / bound


def temporal_advantage(
    q: torch.Tensor, ema: torch.Tensor, alpha: float, baseline: Literal["per_sample", "scalar"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) target values (with grad) and the EMA state -> (advantage (B,), new EMA state).

    per_sample (S3 code): b_i = alpha M + (1 - alpha) q*_i, Adv_i = (q_i - b_i) / |b_i|, M <- mean b_i.
    scalar (newest code): M <- alpha M + (1 - alpha) mean q*, Adv_i = (q_i - M) / |M|.
    """
    q_detached = q.detach()
    if baseline == "per_sample":
        base = alpha * ema + (1 - alpha) * q_detached
        new_ema = base.mean()
    else:
        new_ema = alpha * ema + (1 - alpha) * q_detached.mean()
        base = new_ema
    return (q - base) / base.abs().clamp_min(ADV_FLOOR), new_ema


def swaddling(
    strength: torch.Tensor, beta: torch.Tensor, clamp: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) strength S and beta -> (per-element sw, per-element beta term Omega(beta^2)).

    sw = Omega(S^(1/beta*)) + beta S ln S, with beta* detached in the exponent; both are clamped to
    [clamp, 1 - clamp] here (S3 1e-3, newest code 1e-8; the action itself uses the unclamped S).
    """
    s = strength.clamp(clamp, 1 - clamp)
    b = beta.clamp(clamp, 1 - clamp)
    sw = barrier(s ** (1 / b.detach())) + b * s * torch.log(s)
    return sw, barrier(b**2)


def symphony_loss(
    net: ActorCritic,
    target: ActorCritic,
    batch: Mapping[str, torch.Tensor],
    noise: torch.Tensor,
    weights: torch.Tensor,
    ema: torch.Tensor,
    config: SymphonyConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The one combined loss L_A + L_Q + L_Sw of a batch -> (loss, new EMA state, detached terms)."""
    direction, strength, beta = net.heads(batch["next_obs"])
    next_action = config.a_max * torch.tanh(strength * direction + noise)
    # Target parameters are frozen; the graph keeps the path into next_action, which trains the actor.
    q_next = soft_truncated_value(target.nodes(batch["next_obs"], next_action), weights)  # (B,)
    sw, beta_term = swaddling(strength, beta, config.swaddle_clamp)
    future = q_next.detach()
    if config.swaddle_in_target:
        future = future - sw.mean(-1).detach()
    y = batch["reward"] + batch["discount"] * future  # (B,)
    critic_loss = rehse(net.nodes(batch["obs"], batch["action"]) - y[:, None]).mean()
    advantage, new_ema = temporal_advantage(q_next, ema, config.alpha, config.baseline)
    actor_loss = -rehae(advantage).mean()
    swaddle_loss = sw.mean() + beta_term.mean()
    loss = actor_loss + critic_loss + swaddle_loss
    terms = {
        "critic_loss": critic_loss,
        "actor_loss": actor_loss,
        "swaddling": swaddle_loss,
        "q_target": q_next.mean(),
        "strength": strength.mean(),
        "beta": beta.mean(),
    }
    return loss, new_ema, {k: v.detach() for k, v in terms.items()}


class SymphonyAdamW(torch.optim.Optimizer):
    """AdamW without bias correction (the paper's optimiser).

    S3: p <- p - lr (m / (sqrt(v) + eps) + wd p). Newest draft (``anneal_eps``): eps_t = b2 eps_{t-1} +
    (1 - b2) 1e-8 from eps_0 = 1 - 1e-8, and p <- p (1 - lr wd) - lr m / (sqrt(v) + eps_t).
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        anneal_eps: bool = False,
    ) -> None:
        eps = 1 - 1e-8 if anneal_eps else 1e-8
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "eps": eps})
        self.anneal_eps = anneal_eps

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            if self.anneal_eps:
                group["eps"] = b2 * group["eps"] + (1 - b2) * 1e-8
            eps = group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["m"], state["v"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                if self.anneal_eps:
                    p.mul_(1 - lr * wd).addcdiv_(m, v.sqrt().add_(eps), value=-lr)
                else:
                    p.sub_(lr * (m / (v.sqrt() + eps) + wd * p))


# ---------------------------------------------------------------------------------------------- algorithm
class Symphony:
    """The algorithm object: networks, optimiser, EMA and reward-scale state, and the fading buffer."""

    name: ClassVar[str] = "symphony"

    def __init__(
        self, config: SymphonyConfig, spec: SymphonySpec, device: str | torch.device = "cpu"
    ) -> None:
        torch.manual_seed(config.seed)
        self.config, self.spec, self.device = config, spec, torch.device(device)
        self.net = ActorCritic(config, spec).to(self.device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = SymphonyAdamW(
            self.net.parameters(), config.lr, config.betas, config.weight_decay, config.anneal_eps
        )
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.weights = value_weights(config.n_critics * config.n_q, config.value_weights).to(self.device)
        self.ema = torch.zeros((), device=self.device)  # the advantage baseline's EMA state M (M0 = 0)
        self.reward_mean_abs = torch.ones((), device=self.device)  # r_bar, set when exploration ends
        self.buffer = FadingReplay(
            config.tile * config.n_explore,
            spec.obs_dim,
            spec.action_dim,
            weights=config.replay_weights,
            recycle=config.recycle,
            device=self.device,
        )
        self.step = 0  # gradient updates done

    @torch.no_grad()
    def act(self, obs: np.ndarray, actor_on: bool = True) -> np.ndarray:
        """Training action a_max tanh(S A + eps) for one (obs_dim,) obs; noise only if not actor_on."""
        direction, strength, _ = self.net.heads(torch.as_tensor(obs, device=self.device)[None])
        noise = action_noise((1, self.spec.action_dim), self.config.noise_bound, self.generator, self.device)
        signal = strength * direction if actor_on else torch.zeros_like(direction)
        return (self.config.a_max * torch.tanh(signal + noise))[0].cpu().numpy()

    def scale_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """r_hat = r / r_bar; the one place rewards are scaled, so a rebuilt buffer matches bit for bit."""
        return reward.to(self.device, torch.float32) / self.reward_mean_abs

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on a batch (obs, action, reward, next_obs, discount), then Polyak."""
        noise = action_noise(
            tuple(batch["action"].shape), self.config.noise_bound, self.generator, self.device
        )
        loss, new_ema, terms = symphony_loss(
            self.net, self.target, batch, noise, self.weights, self.ema, self.config
        )
        grad_norm = guarded_step(loss, self.optimizer, self.net.parameters())
        self.ema = new_ema.detach()
        # S3 updates the critics only; the target's actor is never evaluated.
        online = [p for c in self.net.critics for p in c.parameters()]
        frozen = [p for c in self.target.critics for p in c.parameters()]
        with torch.no_grad():
            torch._foreach_lerp_(frozen, online, self.config.tau)
        self.step += 1
        names = ["loss", *terms, "ema"]
        values = torch.stack([loss.detach(), *terms.values(), self.ema]).tolist()  # one device sync
        return {**dict(zip(names, values, strict=True)), "grad_norm": grad_norm}

    def train_step(self) -> dict[str, float]:
        """Sample a fresh batch from the fading buffer and update on it."""
        return self.update(self.buffer.sample(self.config.batch_size, self.generator))

    # ------------------------------------------------------------------ checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        net = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return {**net, **{f"target.{k}": v for k, v in self.target.state_dict().items()}}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for prefix, module in (("net.", self.net), ("target.", self.target)):
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def trainer_state(self) -> dict[str, Any]:
        """Optimiser, step, EMA, reward scale, generator, buffer layout (transitions are in the store)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "ema": self.ema.cpu(),
            "reward_mean_abs": self.reward_mean_abs.cpu(),
            "generator": self.generator.get_state(),
            "buffer": self.buffer.state_dict(),
        }

    def load_trainer_state(self, state: Mapping[str, Any], raw: Mapping[str, np.ndarray]) -> None:
        """``raw``: :func:`~robocl.store.fading.transitions_at` of the buffer's unique sources, ascending."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.ema = state["ema"].to(self.device)
        self.reward_mean_abs = state["reward_mean_abs"].to(self.device)
        self.generator.set_state(state["generator"])
        self.buffer.load_state_dict(state["buffer"], self.buffer_rows(raw))

    def buffer_rows(self, raw: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Raw transitions (env rewards, terminated flags) -> buffer rows (scaled rewards, discounts)."""
        terminated = torch.from_numpy(raw["terminated"])
        return {
            "obs": torch.from_numpy(raw["obs"]),
            "action": torch.from_numpy(raw["action"]),
            "reward": self.scale_reward(torch.from_numpy(raw["reward"])),
            "next_obs": torch.from_numpy(raw["next_obs"]),
            "discount": torch.full(terminated.shape, self.config.gamma).masked_fill(terminated, 0.0),
        }

    def checkpoint_header(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "spec": asdict(self.spec), "seed": self.config.seed}

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str = "cpu") -> Symphony:
        """Weights only (for inference); a training resume goes through :func:`train_online`."""
        algo = cls(SymphonyConfig(**ckpt.config), SymphonySpec(**ckpt.spec), device)
        algo.load_tensors(ckpt.tensors)
        algo.step = ckpt.step
        return algo

    def policy(self) -> SymphonyPolicy:
        return SymphonyPolicy(self.net, self.device, self.config.a_max)


class SymphonyPolicy:
    """Deterministic numpy policy a_max tanh(S A) for evaluation."""

    def __init__(self, net: ActorCritic, device: torch.device, a_max: float) -> None:
        self.net, self.device, self.a_max = net, device, a_max

    def reset(self) -> None:
        """Symphony's policy is memoryless."""

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """A flat observation, or the rollout engine's dict keyed by store feature names."""
        obs = flat_obs(obs)
        _, single = batch_size_of(obs, 1)
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        direction, strength, _ = self.net.heads(x[None] if single else x)
        action = (self.a_max * torch.tanh(strength * direction)).cpu().numpy()
        return action[0] if single else action


# ---------------------------------------------------------------------------------------------- online loop
OBS_KEY = "observation.state"
# Store features of a dict-observation task (robocl's arm tasks) that Symphony sees, concatenated in order.
STATE_KEYS = (OBS_KEY, "observation.object")


def flat_obs(obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    """The evaluator's dict keyed by store feature names -> the flat vector :func:`make_env` gives."""
    if isinstance(obs, Mapping):
        return np.concatenate([np.asarray(obs[k]) for k in STATE_KEYS if k in obs], axis=-1)
    return np.asarray(obs)


def make_env(env_id: str) -> Any:
    """A gymnasium env with flat float observations; Symphony's last-steps rule needs its time limit."""
    import gymnasium as gym

    env = gym.make(env_id)
    if isinstance(env.observation_space, gym.spaces.Dict):
        # robocl's arm tasks: proprioception then object state, as the rollout engine's observation.state
        # and observation.object (the instruction is text, and the cameras are off).
        keys = [k for k in ("proprio", "object") if k in env.observation_space.spaces]
        space = gym.spaces.Box(
            -np.inf, np.inf, (sum(env.observation_space[k].shape[0] for k in keys),), np.float32
        )
        env = gym.wrappers.TransformObservation(
            env, lambda o: np.concatenate([o[k] for k in keys]).astype(np.float32), space
        )
    if env.spec is None or env.spec.max_episode_steps is None:
        raise ValueError(f"{env_id} has no registered time limit (max_episode_steps)")
    return env


def train_seed(seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode``: even numbers, so never an evaluation seed."""
    return 2 * (seed * 2**20 + episode)


def eval_start_seed(seed: int) -> int:
    """Reset seed of a run's first evaluation episode (episode i: + i), far above every training seed."""
    return 10**9 + 1000 * seed


def evaluate_policy(policy: Any, env_id: str, n_episodes: int, seed: int, out_dir: Path) -> dict[str, Any]:
    """Deterministic episodes through the shared evaluator (``robocl eval``'s engine and eval_info.json),
    with the same reset seeds at every evaluation of the run; returns the evaluator's summary."""
    from robocl.eval.evaluate import evaluate

    result = evaluate(policy, env_id, n_episodes=n_episodes, out_dir=out_dir, seed=eval_start_seed(seed),
                      progress=False)  # fmt: skip
    return result["summary"]


def _tree(value: Any, leaf: Any) -> Any:
    """Map ``leaf`` over the arrays of nested dicts (trainer.pt holds tensors, the replay numpy)."""
    if isinstance(value, Mapping):
        return {k: _tree(v, leaf) for k, v in value.items()}
    return leaf(value) if isinstance(value, np.ndarray | torch.Tensor) else value


class OnlineRun:
    """One Symphony run: env, algorithm, trajectory store (``run_dir/replay.zarr``) and episode state.

    Every transition goes to the store through :class:`OnlineReplay`; commits happen only at checkpoints
    (the replay's ring is sized to hold what comes between two), so the store never runs ahead of the
    checkpoint a resume starts from. A resume rebuilds the fading buffer from the store and re-plays the
    unfinished episode's stored actions from its reset seed, which restores a deterministic simulator's
    state mid-episode.
    """

    def __init__(
        self, config: SymphonyConfig, loop: OnlineLoopConfig, run_dir: str | Path, resume: bool
    ) -> None:
        self.loop, self.run_dir = loop, Path(run_dir)
        self.last = self.run_dir / "checkpoints" / "last"
        self.env = make_env(loop.env)
        if resume:
            if resolve_checkpoint(self.last) is None:
                raise FileNotFoundError(f"--resume: no checkpoint at {self.last}")
            ckpt = load_checkpoint(self.last, method=Symphony.name)
            config, spec = SymphonyConfig(**ckpt.config), SymphonySpec(**ckpt.spec)
        elif resolve_checkpoint(self.last) is not None:
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume or use a new run dir")
        else:
            spec = SymphonySpec(
                obs_dim=int(np.prod(self.env.observation_space.shape)),
                action_dim=int(np.prod(self.env.action_space.shape)),
                env_id=loop.env,
                max_episode_steps=int(self.env.spec.max_episode_steps),
            )
        self.config, self.spec = config, spec
        if loop.steps <= config.n_explore:
            warnings.warn(
                f"symphony: steps={loop.steps} <= n_explore={config.n_explore}: every step explores with the "
                f"untrained actor and the run makes no update; give --steps more than {config.n_explore}, or "
                "a smaller --n-explore",
                UserWarning,
                stacklevel=2,
            )
        self.algo = Symphony(config, spec, loop.device)
        store_path = self.run_dir / "replay.zarr"
        capacity = loop.checkpoint_every + spec.max_episode_steps + 1
        kwargs = {"flush_every": capacity + 1, "task": loop.env, "source": "symphony"}
        if resume:
            self.store = TrajectoryStore.open(store_path, "a")
            self._restore(ckpt, capacity, kwargs)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            features = {
                OBS_KEY: Feature("state", "float32", (spec.obs_dim,)),
                "action": Feature("action", "float32", (spec.action_dim,)),
                "reward": Feature("reward", "float32"),
            }
            meta = {"env_id": loop.env, "method": "symphony", "seed": config.seed}
            fps = float(self.env.metadata.get("render_fps") or 50)
            self.store = TrajectoryStore.create(store_path, features, fps=fps, meta=meta)
            self.replay = OnlineReplay(self.store, capacity, **kwargs)
            self.episode, self.episode_return = 0, 0.0
            self._reset()

    # ------------------------------------------------------------------ stepping
    def _reset(self) -> None:
        obs, _ = self.env.reset(seed=train_seed(self.config.seed, self.episode))
        self.obs, self.t = np.asarray(obs, np.float32), 0

    def env_step(self) -> tuple[list[dict[str, float]], float | None]:
        """Act, store, update ``updates_per_step`` times -> (update metrics, return of a finished episode)."""
        config, algo = self.config, self.algo
        src = self.replay.total_added  # this transition's index in the run
        training = src >= config.n_explore
        # The deliberate noise-only fall ends training episodes only; exploration keeps the actor on (S3).
        actor_on = not training or self.t < self.spec.max_episode_steps - config.fall_steps
        action = algo.act(self.obs, actor_on)
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        next_obs = np.asarray(next_obs, np.float32)
        self.replay.add(self.obs, action, float(reward), next_obs, terminated, truncated)
        if src + 1 == config.n_explore:
            raw = transitions_at(self.replay, np.arange(config.n_explore), OBS_KEY)
            r_bar = torch.from_numpy(raw["reward"]).abs().mean()
            if r_bar == 0:
                raise ValueError(f"all {config.n_explore} exploration rewards are 0: no reward scale")
            algo.reward_mean_abs = r_bar.to(algo.device)
            algo.buffer.fill(algo.buffer_rows(raw), np.arange(config.n_explore))
        elif training:
            dev = algo.device
            algo.buffer.add(
                torch.from_numpy(self.obs).to(dev),
                torch.from_numpy(action).to(dev),
                algo.scale_reward(torch.tensor(float(reward), dtype=torch.float32)),
                torch.from_numpy(next_obs).to(dev),
                0.0 if terminated else config.gamma,  # truncation bootstraps
                src,
            )
        # Updates start at the first step after exploration, as in S3 (the fill step itself trains nothing).
        metrics = [algo.train_step() for _ in range(config.updates_per_step)] if training else []
        self.t += 1
        self.episode_return += float(reward)
        finished = None
        if terminated or truncated:
            finished, self.episode, self.episode_return = self.episode_return, self.episode + 1, 0.0
            self._reset()
        else:
            self.obs = next_obs
        return metrics, finished

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        replay_state = self.replay.state_dict()  # commits the finished episodes first
        loop_state = {
            "episode": self.episode,
            "episode_return": self.episode_return,
            "store_steps": self.store.n_steps,
            "replay": _tree(replay_state, torch.from_numpy),
        }
        state = {"algorithm": self.algo.trainer_state(), "loop": loop_state}
        header = self.algo.checkpoint_header()
        return save_checkpoint(
            self.last, method=Symphony.name, tensors=self.algo.tensors(), step=self.algo.step,
            trainer_state=state, **header,
        )  # fmt: skip

    def _restore(self, ckpt: Checkpoint, capacity: int, kwargs: dict[str, Any]) -> None:
        state = ckpt.trainer_state()
        loop_state = state["loop"]
        if self.store.n_steps != loop_state["store_steps"]:
            raise ValueError(
                f"{self.store.location} holds {self.store.n_steps} steps but the checkpoint expects "
                f"{loop_state['store_steps']}: the run was killed while saving; it cannot resume exactly"
            )
        replay_state = _tree(loop_state["replay"], lambda t: t.numpy())
        self.replay = OnlineReplay.from_store(self.store, capacity, replay_state, **kwargs)
        self.algo.load_tensors(ckpt.tensors)
        buffer_src = state["algorithm"]["buffer"]["src"].numpy()
        raw = transitions_at(self.replay, np.unique(buffer_src[buffer_src >= 0]), OBS_KEY)
        self.algo.load_trainer_state(state["algorithm"], raw)
        self.episode, self.episode_return = int(loop_state["episode"]), float(loop_state["episode_return"])
        self._reset()
        tail = replay_state["tail"]
        if tail is not None:
            for action in tail["action"]:
                obs, *_ = self.env.step(action)
                self.obs, self.t = np.asarray(obs, np.float32), self.t + 1
            if not np.array_equal(self.obs, tail["next_obs"][OBS_KEY][-1]):
                raise RuntimeError(f"{self.spec.env_id} is not deterministic: the unfinished episode differs")

    # ------------------------------------------------------------------ the loop
    def run(self, progress: bool = True) -> list[dict[str, float]]:
        """Train to ``loop.steps`` env steps; returns every update's metrics with its ``env_step``."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        loop = self.loop
        start = self.replay.total_added
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start or None)
        history: list[dict[str, float]] = []
        bar = tqdm(total=loop.steps, initial=start, disable=not progress, desc="symphony", unit="step")
        tick, tick_step = time.perf_counter(), start
        try:
            while self.replay.total_added < loop.steps:
                metrics, finished = self.env_step()
                n = self.replay.total_added
                history += [{"env_step": n, **m} for m in metrics]
                bar.update(1)
                if finished is not None:
                    writer.add_scalar("train/episode_return", finished, n)
                if n % loop.log_every == 0:
                    now = time.perf_counter()
                    writer.add_scalar("perf/env_steps_per_s", (n - tick_step) / max(now - tick, 1e-9), n)
                    tick, tick_step = now, n
                    for key, value in (metrics[-1] if metrics else {}).items():
                        writer.add_scalar(f"train/{key}", value, n)
                if (loop.eval_every and n % loop.eval_every == 0) or n == loop.steps:
                    self.evaluate(writer, n)
                if n % loop.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
            self.save()
            writer.close()
        return history

    def evaluate(self, writer: Any, env_step: int) -> float:
        out = self.run_dir / "eval" / f"step_{env_step:08d}"
        summary = evaluate_policy(
            self.algo.policy(), self.loop.env, self.loop.eval_episodes, self.config.seed, out
        )
        row = {
            "env_step": env_step,
            "mean_return": summary["mean_return"],
            "success_rate": summary["success_rate"],
        }
        for key in ("mean_return", "success_rate"):
            if summary[key] is not None:  # None: the env reports no success (gymnasium's locomotion tasks)
                writer.add_scalar(f"eval/{key}", summary[key], env_step)
        with open(self.run_dir / "eval.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return float(summary["mean_return"])

    def close(self) -> None:
        self.env.close()
        self.store.close()


def train_online(
    config: SymphonyConfig, loop: OnlineLoopConfig, run_dir: str | Path, *, resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:  # fmt: skip
    """Train Symphony online on ``loop.env``; a resume takes the config from the checkpoint."""
    run = OnlineRun(config, loop, run_dir, resume)
    try:
        return run.run(progress)
    finally:
        run.close()
