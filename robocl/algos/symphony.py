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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from robocl.checkpoint import Checkpoint
from robocl.features import flatten_obs
from robocl.policy import batch_size_of
from robocl.run.loop import guarded_step
from robocl.run.runtime import seeded
from robocl.store.fading import PHI, ScaledFadingFeed

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
    # Weight of L_Sw in the loss (S3 and the newest draft: 1, no coefficient). Below 1 the pull of S toward
    # 1/e weakens: at S = 1/e the deterministic action is at most a_max tanh(1/e) = 0.35 a_max.
    swaddle_weight: float = 1.0
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
        if self.swaddle_weight < 0:
            raise ValueError(f"swaddle_weight must be >= 0, got {self.swaddle_weight}")
        if not 0 < self.swaddle_clamp < 0.5:
            raise ValueError(f"swaddle_clamp must be in (0, 0.5), got {self.swaddle_clamp}")
        if self.tile * self.n_explore < 2:
            raise ValueError(f"buffer tile * n_explore = {self.tile * self.n_explore} must be >= 2")


@dataclass
class SymphonySpec:
    """Shapes and env facts the networks are built for, stored with the checkpoint."""

    obs_dim: int
    action_dim: int
    env_id: str = ""
    max_episode_steps: int = 1000


# ---------------------------------------------------------------------------------------------- networks
def resine(x: torch.Tensor, p: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """SiLU-rectified sine with a learnable per-unit period: f = s sin(x/s), out = f sigmoid(w f / s), with
    s = sigmoid(p) and w = 1.5 (S3) or 1 / sigmoid(b) (newest draft); ``p``, ``b`` broadcast against ``x``.
    1/s is taken once on the parameters: activations are multiplied, not divided (cheaper both ways)."""
    sig = torch.sigmoid(p)
    inv = 1 / sig
    f = sig * torch.sin(x * inv)
    w = 1.5 if b is None else 1 / torch.sigmoid(b)
    return f * torch.sigmoid(f * (w * inv))


class ReSine(nn.Module):
    """:func:`resine` with its own parameters: p (and with ``learnable_w`` b), both U(-1/sqrt h, 1/sqrt h)."""

    def __init__(self, width: int, learnable_w: bool) -> None:
        super().__init__()
        bound = 1 / math.sqrt(width)
        self.p = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        # S3 fixes w = 1.5; the newest draft learns w = 1 / sigmoid(b) per unit (same init as p).
        self.b = nn.Parameter(torch.empty(width).uniform_(-bound, bound)) if learnable_w else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resine(x, self.p, self.b)


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


class CriticEnsemble(nn.Module):
    """``n`` independent FF critics with their weights stacked on a leading critic axis, so every layer is
    one matmul over all critics instead of a Python loop of ``n`` small ones (at the CPU benchmark's
    sizes the loop's kernel launches and autograd nodes cost as much as its arithmetic). Critic c computes
    exactly ``FF`` with the weights ``[c]``; the tensors are initialised from ``n`` separately built FFs,
    so the draws (and a seed's initial weights) are those of ``n`` FF critics."""

    def __init__(self, n: int, in_dim: int, hidden: int, out_dim: int, learnable_w: bool) -> None:
        super().__init__()
        critics = [FF(in_dim, hidden, out_dim, learnable_w) for _ in range(n)]

        def stack(layer: int, name: str) -> nn.Parameter:
            return nn.Parameter(torch.stack([getattr(c[layer], name).detach() for c in critics]))

        self.w1, self.b1 = stack(0, "weight"), stack(0, "bias")  # (n, hidden, in), (n, hidden)
        self.ln_w, self.ln_b = stack(1, "weight"), stack(1, "bias")  # (n, hidden)
        self.w2, self.b2 = stack(2, "weight"), stack(2, "bias")  # (n, hidden, hidden), (n, hidden)
        self.p = stack(3, "p")  # (n, hidden)
        self.b = stack(3, "b") if learnable_w else None
        self.w3, self.b3 = stack(4, "weight"), stack(4, "bias")  # (n, out, hidden), (n, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, n * out_dim): critic 0's outputs, then critic 1's, ..."""
        n, hidden = self.p.shape
        # The critics share their input: their first layers are one (B, in) x (in, n * hidden) matmul.
        y = nn.functional.linear(x, self.w1.flatten(0, 1), self.b1.flatten())
        y = y.view(-1, n, hidden).transpose(0, 1)  # (n, B, hidden)
        y = torch.addcmul(self.ln_b[:, None], nn.functional.layer_norm(y, (hidden,)), self.ln_w[:, None])
        y = torch.baddbmm(self.b2[:, None], y, self.w2.transpose(1, 2))
        y = resine(y, self.p[:, None], None if self.b is None else self.b[:, None])
        y = torch.baddbmm(self.b3[:, None], y, self.w3.transpose(1, 2))  # (n, B, out)
        return y.transpose(0, 1).flatten(1)


class ActorCritic(nn.Module):
    """The actor (direction, strength, beta heads) and ``n_critics`` critics in one module, one optimiser."""

    def __init__(self, config: SymphonyConfig, spec: SymphonySpec) -> None:
        super().__init__()
        self.action_dim = spec.action_dim
        self.actor = FF(spec.obs_dim, config.hidden, 3 * spec.action_dim, config.learnable_resine)
        in_dim, learnable_w = spec.obs_dim + spec.action_dim, config.learnable_resine
        self.critics = CriticEnsemble(config.n_critics, in_dim, config.hidden, config.n_q, learnable_w)

    def heads(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, obs_dim) -> direction A in (-1, 1), strength S and beta in [0, 1); each (B, action_dim)."""
        y = torch.tanh(self.actor(obs) / 2)
        direction, strength, beta = y.split(self.action_dim, dim=-1)
        return direction, strength.abs(), beta.abs()

    def nodes(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, n_critics * n_q) node values of every critic, concatenated."""
        return self.critics(torch.cat([obs, action], dim=-1))


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


@torch.compiler.disable  # traced, numpy's argsort would become torch's sort again
def soft_truncated_value(nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, Nq) nodes -> (B,) weighted sum of the nodes sorted ascending. On a CPU the order comes from
    numpy's vectorised argsort, a quarter of torch.sort's time for rows of a few hundred; the gather
    carries the gradient."""
    if nodes.device.type == "cpu":
        order = torch.from_numpy(np.argsort(nodes.detach().numpy(), axis=-1))
    else:
        order = nodes.detach().argsort(dim=-1)
    return nodes.gather(-1, order) @ weights


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
    loss = actor_loss + critic_loss + config.swaddle_weight * swaddle_loss
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

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place: parameters may hold views of them (:func:`flat_buffer`)."""
        super().zero_grad(set_to_none=False)

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
    """The learner: networks, optimiser, the advantage baseline's EMA and the noise generator. Its data come
    from :meth:`feed` (the fading replay), filled by an online source (:mod:`robocl.run.online`)."""

    name: ClassVar[str] = "symphony"

    def __init__(
        self,
        config: SymphonyConfig,
        spec: SymphonySpec,
        device: str | torch.device = "cpu",
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self.config, self.spec, self.device = config, spec, torch.device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device; this Symphony runs on {self.device}")
        # torch.compile fuses the loss's chains of small elementwise ops (ReSine, Swaddling, ReHSE) and their
        # backward into a few generated kernels; on one CPU core it pays after about a minute of compiling.
        # CUDA graphs replay those kernels with one launch: at both benchmark sizes an update on a GPU is
        # launch-bound (H200: 4.8 ms compiled, 3.3 ms with graphs; results/symphony_cuda_speed.json).
        self.loss: Any = symphony_loss
        if cuda_graphs:
            self.loss = _graphed(torch.compile(symphony_loss, dynamic=False, mode="reduce-overhead"))
        elif compile:
            self.loss = torch.compile(symphony_loss, dynamic=False)
        with seeded(config.seed):
            self.net = ActorCritic(config, spec).to(self.device)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        # All weights (and their gradients) live in one flat buffer, the critics' last: the optimiser, the
        # gradient norm and Polyak averaging are then a few kernels over all weights, not a few per tensor.
        self.flat = flat_buffer(list(self.net.parameters()), with_grad=True)
        self.target_critics = flat_buffer(list(self.target.critics.parameters()), with_grad=False)
        self.optimizer = SymphonyAdamW(
            [self.flat], config.lr, config.betas, config.weight_decay, config.anneal_eps
        )
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        self.weights = value_weights(config.n_critics * config.n_q, config.value_weights).to(self.device)
        self.ema = torch.zeros((), device=self.device)  # the advantage baseline's EMA state M (M0 = 0)
        self.step = 0  # gradient updates done

    def feed(self) -> ScaledFadingFeed:
        """Symphony's replay: the fading buffer sized tile x exploration, rewards scaled as in S3."""
        cfg = self.config
        return ScaledFadingFeed(
            cfg.tile * cfg.n_explore, self.spec.obs_dim, self.spec.action_dim, gamma=cfg.gamma,
            seed=cfg.seed + 1, weights=cfg.replay_weights, recycle=cfg.recycle, device=self.device,
        )  # fmt: skip

    @torch.no_grad()
    def act(self, obs: np.ndarray, training: bool, t: int) -> np.ndarray:
        """Exploration action a_max tanh(S A + eps) for one flat (obs_dim,) observation at step ``t`` of its
        episode. The deliberate noise-only fall (the last ``fall_steps`` of a capped episode) ends training
        episodes only; exploration keeps the actor on (S3)."""
        actor_on = not training or t < self.spec.max_episode_steps - self.config.fall_steps
        direction, strength, _ = self.net.heads(torch.as_tensor(obs, device=self.device)[None])
        noise = action_noise((1, self.spec.action_dim), self.config.noise_bound, self.generator, self.device)
        signal = strength * direction if actor_on else torch.zeros_like(direction)
        return (self.config.a_max * torch.tanh(signal + noise))[0].cpu().numpy()

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on a batch (obs, action, reward, next_obs, discount), then Polyak."""
        noise = action_noise(
            tuple(batch["action"].shape), self.config.noise_bound, self.generator, self.device
        )
        loss, new_ema, terms = self.loss(
            self.net, self.target, batch, noise, self.weights, self.ema, self.config
        )
        grad_norm = guarded_step(loss, self.optimizer, [self.flat])
        self.ema = new_ema.detach()
        # S3 updates the critics only (the tail of the flat buffer); the target's actor is never evaluated.
        self.target_critics.lerp_(self.flat[-self.target_critics.numel() :], self.config.tau)
        self.step += 1
        names = ["loss", *terms, "ema"]
        values = torch.stack([loss.detach(), *terms.values(), self.ema]).tolist()  # one device sync
        return {**dict(zip(names, values, strict=True)), "grad_norm": grad_norm}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        trainer = {
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "ema": self.ema.cpu(),
            "generator": self.generator.get_state(),
        }
        # Cloned: views of one buffer would share memory, which safetensors refuses.
        model = {f"net.{k}": v.clone() for k, v in self.net.state_dict().items()}
        return {"model": model, "trainer": trainer}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        model = _strip(state["model"], "net.")
        if "critics.w1" not in model:  # per-critic tensors: written before the fused ensemble
            raise ValueError("this Symphony checkpoint predates the fused critics: it acts but cannot resume")
        self.net.load_state_dict(model)
        trainer = state["trainer"]
        self.target.load_state_dict(trainer["target"])
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.step = int(trainer["step"])
        self.ema = trainer["ema"].to(self.device)
        self.generator.set_state(trainer["generator"])

    @staticmethod
    def policy_from_checkpoint(ckpt: Checkpoint, device: str = "cpu") -> SymphonyPolicy:
        """The actor-critic network (no target copy, optimiser or fading buffer), for inference. Only the
        actor acts, so only its tensors are read (which also reads checkpoints from before the fused
        critics); the critics keep their initial weights."""
        config = SymphonyConfig(**ckpt.config)
        net = ActorCritic(config, SymphonySpec(**ckpt.spec)).to(device)
        net.actor.load_state_dict(_strip(ckpt.tensors, "net.actor."))
        return SymphonyPolicy(net, torch.device(device), config.a_max)

    def policy(self, noisy: bool = False) -> SymphonyPolicy:
        """The deterministic policy, or (``noisy``) one acting with the training noise, seeded by the step."""
        if not noisy:
            return SymphonyPolicy(self.net, self.device, self.config.a_max)
        bound, seed = self.config.noise_bound, self.config.seed + 10_000 + self.step
        return SymphonyPolicy(self.net, self.device, self.config.a_max, bound, seed)


def _graphed(loss: Any) -> Any:
    """``loss`` compiled with CUDA graphs, as an update calls it. A graph's outputs are overwritten by its
    next replay: the EMA state, kept across updates, is cloned out (the loss and terms are used up within
    the update that made them)."""

    def run(*args: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        torch.compiler.cudagraph_mark_step_begin()  # one update = one step: earlier outputs may be reused
        value, ema, terms = loss(*args)
        return value, ema.clone(), terms

    return run


def flat_buffer(params: list[nn.Parameter], with_grad: bool) -> torch.Tensor:
    """One new contiguous buffer holding ``params`` in order, each now a view of its slice; ``with_grad``:
    their gradients too, views of the buffer's ``.grad`` (backward accumulates into them in place as long
    as nothing sets them to None: :meth:`SymphonyAdamW.zero_grad` zeroes instead)."""
    flat = torch.cat([p.detach().flatten() for p in params])
    grad = torch.zeros_like(flat) if with_grad else None
    offset = 0
    for p in params:
        p.data = flat[offset : offset + p.numel()].view_as(p)
        if grad is not None:
            p.grad = grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    flat.grad = grad
    return flat


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


class SymphonyPolicy:
    """Numpy policy a_max tanh(S A) for evaluation; with ``noise_bound`` > 0, a_max tanh(S A + eps) with the
    training noise eps (its own generator, seeded: evaluating never moves the training stream). It also
    keeps what it did, for :meth:`action_stats`: the strength S and the action magnitude |a| decide whether
    small actions cap a run (the issue S3's Swaddling raises: S settles near 1/e)."""

    def __init__(
        self, net: ActorCritic, device: torch.device, a_max: float, noise_bound: float = 0.0, seed: int = 0
    ) -> None:
        self.net, self.device, self.a_max, self.noise_bound = net, device, a_max, noise_bound
        self.generator = torch.Generator(device).manual_seed(seed) if noise_bound > 0 else None
        self._sums = torch.zeros(4, dtype=torch.float64)  # sum S, sum |a|, count |a| > 0.5, entries

    def reset(self) -> None:
        """Symphony's policy is memoryless."""

    @torch.no_grad()
    def predict(self, obs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """A flat observation, or the rollout engine's dict keyed by store feature names."""
        obs = flatten_obs(obs)
        _, single = batch_size_of(obs, 1)
        x = torch.as_tensor(obs, device=self.device)
        direction, strength, _ = self.net.heads(x[None] if single else x)
        signal = strength * direction
        if self.generator is not None:
            signal = signal + action_noise(tuple(signal.shape), self.noise_bound, self.generator, self.device)
        action = self.a_max * torch.tanh(signal)
        magnitude = (action / self.a_max).abs()
        self._sums += (
            torch.stack(
                [strength.sum(), magnitude.sum(), (magnitude > 0.5).sum(), torch.tensor(magnitude.numel())]
            )
            .double()
            .cpu()
        )
        action = action.cpu().numpy()
        return action[0] if single else action

    def action_stats(self) -> dict[str, float]:
        """Means over every action produced: strength S, |a| / a_max, the share of |a| / a_max above 0.5."""
        total_s, total_a, large, n = self._sums.tolist()
        n = max(n, 1.0)
        return {"strength": total_s / n, "action_abs": total_a / n, "action_abs_above_half": large / n}
