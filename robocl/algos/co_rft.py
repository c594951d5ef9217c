"""CO-RFT: chunked offline RL fine-tuning of a vision-language-action policy (Huang, Fang et al. 2025,
arXiv 2508.02219; robocl's notes with the source of every default: refs co-rft.md and flow-policies.md).

A VLA-style policy (a conv encoder per camera, proprioception, a frozen sentence encoder for the
instruction, a transformer trunk, and a flow-matching action expert that turns noise into a chunk of h
actions) is trained in two stages on a few dozen demonstrations. Stage 1 is imitation with every parameter
trainable (the IL policy, which is also the baseline). Stage 2 is offline RL whose unit of decision is the
chunk: a causal critic "expert" beside the policy reads the trunk's feature and the chunk and outputs Q^(j)
for every prefix a_{t..t+j-1}; each prefix has its own n-step target, and a Cal-QL conservative term keeps Q
of unseen chunks down (but not below the Monte-Carlo return of the logged episode). The policy improves
through the critic in one of three ways (``actor``):

- ``best_of_n`` (Q-chunking's "QC"): the flow proposes N chunks (one from x_0 = 0, the others from noise of
  several scales) and the one with the highest Q^(h) is executed, and used as A' in the TD target. The flow
  itself stays as stage 1 left it, so the policy never leaves the demonstrations' support.
- ``distill`` (FQL / "QC-FQL"): a one-step actor maps noise to a chunk, trained to match the flow's sample
  from the same noise (weight ``distill_alpha``) while maximising Q^(h).
- ``td3_bc``: the regression head's TD3+BC update (for ``head="regression"``).

Choices where the paper is silent ([R] in the notes: the closest related work's default):
- chunked TD target per prefix (T-SAC's multi-horizon critic) with Q-chunking's in-chunk discounted sum;
  ``critic_loss="full"`` trains only the last valid prefix instead (the Q-chunking backup);
- twin critics, TD3 min over both in the target, Polyak tau 0.005 after every critic step (TD3/QC); acting
  by best-of-N ranks candidates by the mean over both (QC's q_agg);
- Cal-QL conservative term (temperature 1) on Q^(h) (Nakamoto et al.), weight 1.0 rather than Cal-QL's 5
  (measured; see the config);
- reward -1 per step until success, 0 at the success step (Q-chunking's robomimic convention);
- regression head: RoboVLMs' loss (Huber on arm channels + 0.01 x BCE on the gripper) and TD3+BC (delay 2,
  target noise 0.2 clipped at 0.5; alpha_bc rescaled to this BC term, see the config).

Deviations and why:
- The bootstrap for prefix j needs the history at o_{t+j}; the store's sampler gives it for j = h_eff
  only. With the trunk frozen (the default) every history's feature is computed once and looked up by id;
  with a trained trunk :class:`~robocl.store.chunked.ChunkedTDSampler` gathers the other h-1 histories
  (exact targets, at h times the observation reads; ``critic_loss="full"`` avoids that cost).
- Best-of-N with a frozen trunk draws each history's N candidates once per stage and re-ranks them under
  the target critics every ``bon_refresh`` updates (the target's argmax is at most that stale), instead of
  ranking B x h x N fresh samples every update, which cost ~10x an imitation update on a CPU.
- The flow is not trained in stage 2 (FQL and QC keep fitting it): stage 1 fitted it on the same data, and a
  frozen flow keeps the candidate table valid.
- The distilled actor's Q term is divided by mean|Q| (stop-gradient; FQL's optional ``normalize_q_loss``),
  so ``distill_alpha`` does not depend on the reward scale.
- The TD loss averages over valid (unpadded) prefixes rather than dividing by h, so the per-prefix and the
  full-chunk variants have the same scale.
- CQL samples are not importance-weighted by default: the deterministic actors have no log-density (the
  notes' [N] choice), and weighting only the uniform samples by h*d*log 2 (35 for h=10, d=5) would let
  them swamp the policy samples, which are the ones Cal-QL calibrates. ``cql_importance_sample`` restores it.
- 3 CQL samples per kind, not Cal-QL's 10: the term dominates an update's cost, and 3 gave as good a
  critic gradient (see the config comment); ``cql_n_samples=10`` restores Cal-QL's count.
- The trunk is frozen in stage 2 by default (see the config). With ``rl_train_backbone=True`` it learns
  through the critic loss only and the actor reads it detached (DrQ-v2's convention), so one optimiser
  owns each parameter.
- For an episode that did not terminate, V_MC adds r_last / (1 - gamma) for the steps after the cut
  (Cal-QL's value for failed episodes with a constant reward).
- ``val_fraction`` of the episodes (seeded) are held out of stage 2 to measure the critic: Q^(h) of the
  logged chunks against their Monte-Carlo returns, and the drop in Q when the logged chunk is perturbed.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robocl.algos.bc import PolicySpec
from robocl.checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint
from robocl.features import check_training_data, data_world, state_keys
from robocl.nets.critic import PrefixMLPCritic
from robocl.nets.flow import OneStepActor
from robocl.nets.language import DEFAULT_LANGUAGE_MODEL, LanguageEncoder
from robocl.nets.relative import RelativePositions, relative_position_pairs
from robocl.nets.transformer import ChunkCritic
from robocl.nets.vla import ChunkChooser, FlowChooser, VLAPolicy, VLAPolicyNet, snap_gripper
from robocl.store import StoreView, TrajectoryStore, WindowSampler
from robocl.store.chunked import ChunkedTDSampler, mc_returns, step_rewards
from robocl.train import LoopConfig, fit, guarded_step, to_torch


@dataclass
class CORFTConfig:
    """CO-RFT: imitation, then chunked offline RL (Cal-QL critic; best-of-N, distilled or TD3+BC actor)."""

    # ---- the policy network
    # Low-dimensional store features; None = every state feature of the store (observation.state first).
    state_keys: tuple[str, ...] | None = None
    image_keys: tuple[str, ...] = ()  # camera features (uint8 HxWx3); empty = the state-only policy
    # Frozen sentence encoder for the instruction (name or folder); None = off. A store with one instruction
    # gets none: a constant input tells the policy nothing.
    language_model: str | None = DEFAULT_LANGUAGE_MODEL
    # Add the differences between the positions the state features name (object - tool, ...; see
    # robocl.nets.relative); stores without position names get none.
    relative_positions: bool = True
    n_obs: int = 2  # observation history length (RoboVLMs uses 8-16; 2 keeps CPU runs fast)
    horizon: int = 10  # actions per chunk h (RoboVLMs' fwd_pred_next_n)
    d_model: int = 128  # width of the trunk and critic transformers
    n_layers: int = 2  # transformer layers in the trunk and in each critic
    n_heads: int = 4  # attention heads
    vision_channels: tuple[int, ...] = (32, 64, 128, 128)  # conv widths per camera encoder (stride 2 each)
    aug_shift: int = 4  # random-shift augmentation of frames during training, pixels
    dropout: float = 0.1  # trunk transformer dropout in stage 1 (ACT's 0.1: a few dozen demos overfit fast)
    head: Literal["flow", "regression"] = "flow"  # flow-matching action expert, or chunk regression
    head_hidden: tuple[int, ...] = (256, 256, 256)  # MLP widths of the action head (and the one-step actor)
    flow_steps: int = 10  # Euler steps K from noise to chunk (FQL, QC, pi0, SmolVLA: 10)
    # Where the low-dim history goes: "head" = straight to the action head and the critic (pi0's robot state;
    # the trunk fuses cameras and instruction), "trunk" = a token of the trunk, "both".
    state_path: Literal["head", "trunk", "both"] = "head"
    gripper: bool = True  # the last action channel is a gripper (flow: snapped at execution; regression: BCE)
    # ---- execution
    n_action_steps: int = 0  # actions executed per predicted chunk; 0 = the whole chunk, open loop
    ensemble_coef: float = 0.0  # temporal ensembling weight m (ACT: 0.01), a chunk every step; 0 = off
    flow_noise: float = 0.0  # noise scale sigma of x_0 ~ N(0, sigma^2 I) when acting; 0 = deterministic
    # ---- stage 1: imitation
    gripper_weight: float = 0.01  # regression: BCE weight against the arm Huber loss (RoboVLMs)
    huber_delta: float = 1.0  # regression: Huber threshold on normalised arm actions (torch's default)
    il_lr: float = 3e-4  # stage-1 AdamW lr, also the trunk's in stage 2 (RoboVLMs' 2e-5 is for a VLM)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (RoboVLMs: 0)
    max_grad_norm: float = 1.0  # stage-1 gradient clipping (RoboVLMs: 1.0)
    # ---- stage 2: chunked offline RL
    # How the policy improves through the critic; None = best_of_n for a flow head, td3_bc for regression.
    actor: Literal["best_of_n", "distill", "td3_bc"] | None = None
    # Best-of-N proposals per decision: the first from x_0 = 0 (the flow's mode), the others from noise of the
    # ``candidate_noise`` scales in turn. QC draws 32 at full noise; on 60 mixed demos (seed-0 pilots, 1k
    # updates) that lifted push from 20/28% (seen/unseen) to 58/68% but cut pick-place from 90/62% to
    # 50/30%: the critic's errors grow away from the mode, and the argmax of 32 finds them. 8 proposals at
    # 0.25/0.5 gave 50/70% and 80/52%; 32 at 0.25/0.5 40/62% and 74/54%; 32 at 0.1/0.25 30/42% and 86/60%.
    n_candidates: int = 8
    candidate_noise: tuple[float, ...] = (0.25, 0.5)
    bon_refresh: int = 50  # best-of-N: updates between re-ranking every history's candidates (target)
    distill_alpha: float = 10.0  # distill: weight of ||mu(o, z) - flow(o, z)||^2 (FQL: 10)
    val_fraction: float = 0.1  # episodes held out of stage 2 to validate the critic (0 = none)
    # Stage-2 clipping, against spikes only: TD3/Cal-QL do not clip, and clipping the critic at 1.0 left its
    # TD error growing (critic gradient norms are 10-200 while it fits -1/step returns).
    rl_max_grad_norm: float = 100.0
    gamma: float = 0.99  # per-step discount (QC, Cal-QL, TD3+BC)
    reward: Literal["step_penalty", "sparse", "store"] = "step_penalty"  # -1/step until success | +1 | stored
    critic_loss: Literal["prefix", "full"] = "prefix"  # TD target for every prefix j, or only the whole chunk
    n_critics: int = 2  # twin critics; targets take the minimum
    # critic network: "mlp" = PrefixMLPCritic (causal by a cumulative first layer, LayerNorm; ~5x cheaper),
    # "transformer" = T-SAC's causal transformer over [context, a_1..a_h] (ChunkCritic)
    critic: Literal["mlp", "transformer"] = "mlp"
    critic_hidden: tuple[int, ...] = (256, 256)  # widths of the MLP critic (TD3+BC, Cal-QL: 256 x 2-3)
    critic_lr: float = 3e-4  # critic Adam lr (QC, TD3+BC)
    actor_lr: float = 3e-4  # stage-2 actor Adam lr (TD3+BC; FQL)
    tau: float = 0.005  # Polyak rate of the target networks, per critic step
    # Stage 2 trains the trunk (through the critic) or freezes it (the notes: "frozen or at the IL lr").
    # Frozen: the policy keeps the features it imitated with, and each history is encoded once for the
    # whole stage (see rl_sampler); recomputing the trunk per batch took 4.4x an IL update (batch 256).
    rl_train_backbone: bool = False
    # Conservative term on Q^(h). Without it stage 2 collapsed on the arm tasks (regression head, 60 mixed
    # demos, 3 seeds: 0-1% success against IL's 30% pick-place and 79% push): the critic extrapolates over
    # 20-50-d chunks the demos never visit (benchmarks/results/co_rft_*_ablation.json).
    conservative: Literal["calql", "cql", "none"] = "calql"
    # Weight of the conservative term. Cal-QL's 5.0 over h x A = 50-d chunks pushed the logged chunks' Q up
    # without bound (TD error 19 -> 114 over 1k updates, pick-place, 60 mixed demos); 1.0 kept it at 3-6.
    cql_alpha: float = 1.0
    # Chunks per kind (uniform, policy at o, policy at o'). Cal-QL uses 10; 3 measured as good: on pick-place
    # (20 demos, h=10) one draw's critic gradient has cosine 0.95 with a 3x40-sample mean, as at n=10
    # (0.95) and above n=1-2 (0.92-0.93), at 40% of n=10's update time (the term is ~90% of it).
    cql_n_samples: int = 3
    cql_temperature: float = 1.0  # logsumexp temperature
    cql_sample_noise: float = 0.2  # std of the Gaussian added to TD3+BC / distilled chunks for the CQL term
    cql_importance_sample: bool = False  # subtract the uniform log-density h*d*log(0.5) (see deviations)
    # TD3+BC: lambda = alpha_bc / mean|Q|. TD3+BC's 2.5 assumes an MSE over one d-dim action; this BC term
    # averages a Huber over h x A chunk entries, ~17x smaller gradients per entry, and 2.5 (or 1.0) drove
    # the policy off the demos (0-13% success from 27%); 0.05 was the best of the pilots, and with Cal-QL
    # at weight 1, 2.5 still fell to 5% (pick-place) and 33% (push) against 41% and 84% (the ablation).
    alpha_bc: float = 0.05
    policy_delay: int = 2  # TD3+BC: critic steps per actor step
    target_noise: float = 0.2  # TD3+BC: target policy smoothing std, normalised actions
    target_noise_clip: float = 0.5  # TD3+BC: clip of that noise
    seed: int = 0  # network initialisation (both stages), the samplers' streams and the acting noise

    def __post_init__(self) -> None:
        self.image_keys = tuple(self.image_keys)
        if self.state_keys is not None:
            self.state_keys = tuple(self.state_keys)
        self.critic_hidden, self.head_hidden = tuple(self.critic_hidden), tuple(self.head_hidden)
        self.vision_channels, self.candidate_noise = tuple(self.vision_channels), tuple(self.candidate_noise)
        if self.state_keys == () and not self.image_keys:
            raise ValueError("CO-RFT needs state_keys or image_keys")
        if self.horizon < 1 or self.n_obs < 1 or self.flow_steps < 1:
            raise ValueError(
                f"horizon={self.horizon}, n_obs={self.n_obs}, flow_steps={self.flow_steps} must be >= 1"
            )
        if not 0 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [0, horizon={self.horizon}]")
        if self.ensemble_coef < 0 or (self.ensemble_coef and self.n_action_steps > 1):
            raise ValueError(
                f"ensemble_coef={self.ensemble_coef} must be >= 0, and temporal ensembling predicts every "
                f"step (n_action_steps={self.n_action_steps} must be 0 or 1)"
            )
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1) (V_MC of unfinished episodes needs it)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.actor is None:
            self.actor = "best_of_n" if self.head == "flow" else "td3_bc"
        choices = {
            "head": ("flow", "regression"),
            "state_path": ("head", "trunk", "both"),
            "actor": ("best_of_n", "distill", "td3_bc"),
            "reward": ("step_penalty", "sparse", "store"),
            "critic_loss": ("prefix", "full"),
            "conservative": ("calql", "cql", "none"),
            "critic": ("mlp", "transformer"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}")
        if self.actor == "best_of_n" and self.rl_train_backbone:
            raise ValueError(
                "actor='best_of_n' ranks candidates drawn once from the frozen trunk's features: it needs "
                "rl_train_backbone=False (or use actor='distill')"
            )
        if (self.head == "regression") != (self.actor == "td3_bc"):
            raise ValueError(
                f"actor={self.actor!r} does not fit head={self.head!r}: a regression head improves by "
                "'td3_bc', a flow head by 'best_of_n' or 'distill'"
            )
        for name in ("n_critics", "policy_delay", "cql_n_samples", "n_candidates", "bon_refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.flow_noise < 0 or any(s <= 0 for s in self.candidate_noise):
            raise ValueError(
                f"flow_noise={self.flow_noise} must be >= 0 and candidate_noise={self.candidate_noise} > 0"
            )
        if self.language_model in ("", "none", "None"):
            self.language_model = None


# ---------------------------------------------------------------------------------------------- losses
def chunk_bc_loss(
    chunk: torch.Tensor,
    grip_logit: torch.Tensor | None,
    target: torch.Tensor,
    is_pad: torch.Tensor,
    *,
    gripper_weight: float,
    huber_delta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Huber on arm channels + w * BCE(gripper logit, (g+1)/2), averaged over unpadded steps (B, h)."""
    valid = (~is_pad).float()
    n_valid = valid.sum().clamp_min(1.0)
    if grip_logit is None:
        per_step = F.huber_loss(chunk, target, reduction="none", delta=huber_delta).mean(-1)
        return (per_step * valid).sum() / n_valid, {}
    arm = F.huber_loss(chunk[..., :-1], target[..., :-1], reduction="none", delta=huber_delta).mean(-1)
    grip = F.binary_cross_entropy_with_logits(
        grip_logit, ((target[..., -1] + 1) / 2).clamp(0, 1), reduction="none"
    )
    arm_loss, grip_loss = (arm * valid).sum() / n_valid, (grip * valid).sum() / n_valid
    return arm_loss + gripper_weight * grip_loss, {"bc_arm": arm_loss.item(), "bc_gripper": grip_loss.item()}


def chunked_targets(
    reward: torch.Tensor,
    is_pad: torch.Tensor,
    done: torch.Tensor,
    next_q: torch.Tensor,
    gamma: float,
    *,
    per_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TD targets y^(j) (B, h) and the loss mask (B, h) of each prefix j = 1..h of a window.

    y^(j) = sum_{k<j} gamma^k r_{t+k} + gamma^j (1 - done_j) next_q[:, j-1], with next_q[:, j-1] the
    bootstrap value at o_{t+j}; only prefixes within the episode (j <= h_eff) count, and only the one that
    reaches a terminal end (j = h_eff, done) drops its bootstrap. ``per_prefix=False`` keeps j = h_eff only.
    """
    h = reward.shape[1]
    j = torch.arange(1, h + 1, device=reward.device)
    discounts = gamma ** (j - 1).to(reward.dtype)
    prefix_return = torch.cumsum(reward * discounts, dim=1)  # (B, h): R^(j) at index j-1
    valid = ~is_pad
    h_eff = valid.sum(1, keepdim=True)  # (B, 1)
    terminal = done.bool().unsqueeze(1) & (j == h_eff)
    y = prefix_return + (gamma**j).to(reward.dtype) * (~terminal).to(reward.dtype) * next_q
    return y, (valid if per_prefix else j == h_eff)


def critic_td_loss(q: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over critics (C, B, h) of the squared error averaged over the masked-in prefixes."""
    m = mask.to(q.dtype)
    return (((q - y) ** 2) * m).sum((1, 2)).div(m.sum().clamp_min(1.0)).sum()


def conservative_loss(
    q_data: torch.Tensor,
    q_uniform: torch.Tensor,
    q_policy: torch.Tensor,
    q_next_policy: torch.Tensor,
    mc_return: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
    log_uniform_density: float = 0.0,
) -> torch.Tensor:
    """alpha * mean[T logsumexp(Q(samples)/T) - Q(data)]; q_data (..., B), sample Qs (..., B, n).

    Cal-QL (``mc_return`` given) floors the policy samples' Q at V_MC(o) before the logsumexp, so the
    push-down stops once Q is calibrated; uniform samples are not floored. Uniform Qs have the log-density
    subtracted (0 = no importance weighting).
    """
    if mc_return is not None:
        floor = mc_return.unsqueeze(-1)
        q_policy, q_next_policy = torch.maximum(q_policy, floor), torch.maximum(q_next_policy, floor)
    samples = torch.cat([q_uniform - log_uniform_density, q_policy, q_next_policy], dim=-1)
    push_down = temperature * torch.logsumexp(samples / temperature, dim=-1)
    return alpha * (push_down - q_data).mean(-1).sum()


def td3_bc_actor_loss(
    q_pi: torch.Tensor, bc_loss: torch.Tensor, alpha_bc: float
) -> tuple[torch.Tensor, float]:
    """-lambda mean Q(o, pi(o)) + L_BC with lambda = alpha_bc / mean|Q| (not differentiated)."""
    lam = alpha_bc / q_pi.abs().mean().detach().clamp_min(1e-6)
    return -lam * q_pi.mean() + bc_loss, float(lam)


def distill_actor_loss(
    q_pi: torch.Tensor, actor_chunk: torch.Tensor, flow_chunk: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, float]:
    """FQL's one-step actor loss with the Q term normalised; q_pi (B,), chunks (B, h, A):

    L = alpha * mean_{b,k,a} (mu(o_b, z_b) - Euler_K(o_b, z_b))^2 - mean_b Q(o_b, mu(o_b, z_b)) / mean_b |Q|

    where Euler_K(o, z) is the flow's sample from the same noise z (a fixed target) and mean|Q| is not
    differentiated. Returns the loss and the distillation error (the first mean).
    """
    distill = ((actor_chunk - flow_chunk) ** 2).mean()
    return alpha * distill - q_pi.mean() / q_pi.abs().mean().detach().clamp_min(1e-6), distill.item()


def candidate_scales(n: int, noise: Sequence[float]) -> torch.Tensor:
    """(n,) noise scale of each best-of-N proposal: 0 for the first (the flow's mode), then ``noise`` in
    turn."""
    return torch.tensor([0.0, *itertools.islice(itertools.cycle(noise), n - 1)])


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


# ---------------------------------------------------------------------------------------------- acting
class BestOfN:
    """Best-of-N acting (QC): the flow proposes ``n`` chunks per row (:func:`candidate_scales`) and the one
    with the highest Q^(h), averaged over the critics, is executed."""

    def __init__(self, net: VLAPolicyNet, critics: nn.ModuleList, n: int, noise: Sequence[float]) -> None:
        self.net, self.critics, self.n, self.noise = net, critics, n, tuple(noise)

    def propose(self, feat: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, d) features -> (B, N, h, A) normalised candidate chunks."""
        cfg, a = self.net.config, self.net.spec.action_dim
        scales = candidate_scales(self.n, self.noise).to(feat.device)
        noise = torch.randn(len(feat), self.n, cfg.horizon, a, generator=generator, device=feat.device)
        chunks = self.net.sample(
            feat.repeat_interleave(self.n, 0), (noise * scales[:, None, None]).flatten(0, 1)
        )
        return chunks.view(len(feat), self.n, cfg.horizon, a)

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        candidates = self.propose(feat, generator)
        q = torch.stack(
            [c.q_chunk(feat.repeat_interleave(self.n, 0), candidates.flatten(0, 1)) for c in self.critics]
        ).mean(0)
        return candidates[torch.arange(len(feat)), q.view(-1, self.n).argmax(1)]


class OneStep:
    """The distilled actor's chunk mu(o, z) from z ~ N(0, noise_scale^2 I), clipped (gripper snapped)."""

    def __init__(self, actor: OneStepActor, horizon: int, action_dim: int, gripper: bool, noise_scale: float):
        self.actor, self.shape, self.gripper, self.noise_scale = (
            actor,
            (horizon, action_dim),
            gripper,
            noise_scale,
        )

    def chunk(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.actor(feat, noise).clamp(-1.0, 1.0)
        return snap_gripper(out) if self.gripper else out

    def __call__(self, feat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = (
            torch.randn(len(feat), *self.shape, generator=generator, device=feat.device) * self.noise_scale
        )
        return self.chunk(feat, noise)


# ---------------------------------------------------------------------------------------------- algorithm
class CORFT:
    """Stage ``"il"``: ``update`` is one imitation step on every parameter (flow matching, or the regression
    loss). :meth:`start_rl` builds the critics, the target networks, the stage-2 actor and optimisers, and
    switches ``update`` to one chunked critic step plus the actor's step (none for best-of-N, whose policy is
    the frozen flow ranked by the critic). Checkpoints record the stage, so both load with
    :func:`robocl.load_policy`.

    Initialising from a pretrained backbone (:meth:`init_backbone`, ``--init``): a robocl checkpoint of this
    policy, or a ``.safetensors`` file whose tensors are named ``trunk.<name>`` and match
    :class:`robocl.nets.transformer.TokenTrunk` built with the same config and store (same state keys,
    cameras, language dimension and widths). A user's own torch backbone therefore has to be saved as such
    a state dict; every trunk tensor must be present with the same shape (the action head is copied too
    when its shapes match).
    """

    name: ClassVar[str] = "co-rft"

    def __init__(
        self, config: CORFTConfig, spec: PolicySpec, device: str | torch.device = "cpu", *, stage: str = "il"
    ) -> None:
        torch.manual_seed(config.seed)
        self.config, self.spec, self.device = config, spec, torch.device(device)
        self.policy_net = VLAPolicyNet(config, spec).to(self.device)
        self.il_opt = torch.optim.AdamW(
            self.policy_net.parameters(), lr=config.il_lr, weight_decay=config.weight_decay
        )
        self.stage, self.step = "il", 0
        self._language: LanguageEncoder | None = None
        # Stage 2 with a frozen trunk: the sampler whose history ids batches carry; per history its feature
        # (n_histories, d), best-of-N's candidates (n_histories, N, h, A) and the index of the candidate the
        # target critics rank first (n_histories,).
        self._histories: ChunkedTDSampler | None = None
        self._features: torch.Tensor | None = None
        self._candidates: torch.Tensor | None = None
        self._choice: torch.Tensor | None = None
        if stage == "rl":
            self.start_rl()

    @classmethod
    def from_store(
        cls,
        config: CORFTConfig,
        store: TrajectoryStore,
        device: str = "cpu",
        *,
        language: LanguageEncoder | None = None,
    ) -> CORFT:
        """Shapes and statistics from ``store`` (state keys by default: every state feature), checked first;
        task embeddings from ``language`` or the config's model."""
        feats = store.features
        if config.state_keys is None:
            config = replace(config, state_keys=state_keys(store))
        check_training_data(store, method="co-rft", state=config.state_keys, images=config.image_keys)
        lang_dim, embeddings = 0, None
        if config.language_model is not None and len(store.tasks) > 1:  # one instruction is a constant
            if (store.episodes["task_index"] < 0).any():
                raise ValueError("language conditioning needs a task string on every episode")
            language = language or LanguageEncoder(config.language_model)
            embeddings = language.encode(store.tasks)
            lang_dim = language.dim
        pairs = (
            relative_position_pairs({k: feats[k].names for k in config.state_keys})
            if config.relative_positions
            else []
        )
        spec = PolicySpec(
            obs_shapes={k: tuple(feats[k].shape) for k in (*config.state_keys, *config.image_keys)},
            action_dim=int(np.prod(feats["action"].shape)),
            fps=store.fps,
            extra={
                "tasks": list(store.tasks),
                "lang_dim": lang_dim,
                "stage": "il",
                "relative_positions": [list(p) for p in pairs],
            },
            world=data_world(store, (*config.state_keys, *config.image_keys)),
        )
        algo = cls(config, spec, device)
        algo._language = language
        stats = dict(store.stats)
        if pairs:
            state = np.concatenate([store.steps(k).reshape(store.n_steps, -1) for k in config.state_keys], 1)
            relative = RelativePositions(pairs).numpy(state)
            stats["relative"] = {"mean": relative.mean(0), "std": relative.std(0)}
        algo.policy_net.normalizer.load_stats(stats)
        if embeddings is not None:
            algo.policy_net.task_embeddings.copy_(embeddings)
        return algo

    def init_backbone(self, path: str | Path) -> list[str]:
        """Copy a pretrained trunk (and a matching head) into the policy; returns the names copied."""
        path = Path(path)
        if path.is_dir():
            tensors = {k.removeprefix("policy."): v for k, v in load_checkpoint(path).tensors.items()}
        else:
            tensors = load_file(str(path))
        own = self.policy_net.state_dict()
        trunk = {k for k in own if k.startswith("trunk.")}
        if not trunk and any(k.startswith("trunk.") for k in tensors):
            raise ValueError(
                f"{path} holds a trunk but this policy has none (no cameras, no instruction and "
                f"state_path={self.config.state_path!r}): fine-tune with the backbone's inputs"
            )
        bad = sorted(k for k in trunk if k not in tensors or tensors[k].shape != own[k].shape)
        if bad:
            raise ValueError(
                f"{path}: the backbone does not match this policy's trunk; missing or differently shaped: "
                f"{bad[:8]}{' ...' if len(bad) > 8 else ''}"
            )
        heads = {k for k in own if k.startswith("head.")}
        if all(k in tensors and tensors[k].shape == own[k].shape for k in heads):
            trunk |= heads
        self.policy_net.load_state_dict({**own, **{k: tensors[k] for k in trunk}})
        return sorted(trunk)

    def start_rl(self) -> None:
        """Enter stage 2 from the current policy: critics, target copies, the actor and optimisers; step
        restarts at 0. The flow head (if any) is frozen from here on."""
        cfg = self.config
        torch.manual_seed(cfg.seed + 1)
        self.critics = nn.ModuleList(self._critic() for _ in range(cfg.n_critics)).to(self.device)
        self.target_policy = copy.deepcopy(self.policy_net).requires_grad_(False).eval()  # no dropout
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        groups: list[dict[str, Any]] = [{"params": list(self.critics.parameters()), "lr": cfg.critic_lr}]
        trunk = self.policy_net.trunk
        if trunk is not None:
            if cfg.rl_train_backbone:
                groups.append({"params": list(trunk.parameters()), "lr": cfg.il_lr})
            trunk.requires_grad_(cfg.rl_train_backbone)
        self.critic_opt = torch.optim.Adam(groups)
        self.one_step: OneStepActor | None = None
        self.actor_opt: torch.optim.Optimizer | None = None
        if cfg.actor == "td3_bc":
            self.actor_opt = torch.optim.Adam(self.policy_net.head.parameters(), lr=cfg.actor_lr)
        else:
            self.policy_net.head.requires_grad_(False)
        if cfg.actor == "distill":
            a = self.spec.action_dim
            feat_dim = self.policy_net.feat_dim
            self.one_step = OneStepActor(feat_dim, cfg.horizon, a, cfg.head_hidden).to(self.device)
            self.actor_opt = torch.optim.Adam(self.one_step.parameters(), lr=cfg.actor_lr)
        self.stage, self.step = "rl", 0
        self.spec.extra["stage"] = "rl"
        self._features = self._candidates = self._choice = None

    def _critic(self) -> nn.Module:
        cfg, a, feat_dim = self.config, self.spec.action_dim, self.policy_net.feat_dim
        if cfg.critic == "mlp":
            return PrefixMLPCritic(feat_dim, a, cfg.horizon, cfg.critic_hidden)
        return ChunkCritic(
            feat_dim, a, cfg.horizon, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads
        )

    def _best_of_n(self) -> BestOfN:
        cfg = self.config
        return BestOfN(self.policy_net, self.critics, cfg.n_candidates, cfg.candidate_noise)

    def _one_step(self, noise_scale: float = 1.0) -> OneStep:
        assert self.one_step is not None, "only the distill actor has a one-step policy"
        cfg = self.config
        return OneStep(self.one_step, cfg.horizon, self.spec.action_dim, cfg.gripper, noise_scale)

    # ------------------------------------------------------------------ updates
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        self.policy_net.train()  # evaluation may have switched it to eval (no augmentation)
        if self.stage == "rl" and not self.config.rl_train_backbone and self.policy_net.trunk is not None:
            self.policy_net.trunk.eval()  # a frozen trunk gives the critic the features the policy acts on
        metrics = self._il_update(batch) if self.stage == "il" else self._rl_update(batch)
        self.step += 1
        return metrics

    def _target_chunk(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.policy_net.normalizer.normalize("action", batch["action"].float()).clamp(-1, 1)

    def _bc(self, feat: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The imitation loss of the policy head at ``feat``: flow matching, or Huber + BCE (regression)."""
        net, cfg, target = self.policy_net, self.config, self._target_chunk(batch)
        if net.is_flow:
            return net.head.loss(feat, target, batch["action_is_pad"]), {}
        chunk, logit = net.regress(feat)
        return chunk_bc_loss(
            chunk, logit, target, batch["action_is_pad"],
            gripper_weight=cfg.gripper_weight, huber_delta=cfg.huber_delta,
        )  # fmt: skip

    def _il_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        net = self.policy_net
        loss, parts = self._bc(net.features(batch["obs"], net.lang_of(batch)), batch)
        grad_norm = guarded_step(loss, self.il_opt, net.parameters(), max_grad_norm=self.config.max_grad_norm)
        return {"loss": loss.item(), **parts, "grad_norm": grad_norm}

    def _rl_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        cfg, net = self.config, self.policy_net
        is_pad = batch["action_is_pad"]
        B, h = is_pad.shape
        per_prefix = cfg.critic_loss == "prefix"
        data_chunk = self._target_chunk(batch)  # (B, h, A)
        if cfg.actor == "best_of_n":
            rank = self._choice is None or self.step % cfg.bon_refresh == 0
            self._best_of_n_targets(batch["history_source"], rank=rank)
        feat, tfeat, next_feat = self._rl_features(batch, per_prefix)
        with torch.no_grad():
            next_chunk = self._bootstrap_chunk(batch, tfeat, per_prefix)
            next_q = torch.stack([c.q_chunk(tfeat, next_chunk) for c in self.target_critics]).min(0).values
            next_q = next_q.view(B, h) if per_prefix else next_q[:, None].expand(B, h)
            y, mask = chunked_targets(
                batch["reward"], is_pad, batch["done"], next_q, cfg.gamma, per_prefix=per_prefix
            )
        q = torch.stack([c(feat, data_chunk) for c in self.critics])  # (C, B, h)
        td = critic_td_loss(q, y, mask)
        metrics = {
            "critic_td": td.item(),
            "q_mean": q[0][mask].mean().item(),
            "target_mean": y[mask].mean().item(),
        }
        loss = td
        if cfg.conservative != "none":
            n = cfg.cql_n_samples
            with torch.no_grad():
                policy = self._policy_samples(batch, feat.detach(), next_feat, n)  # (B, 2n, h, A)
                uniform = torch.rand(B, n, h, self.spec.action_dim, device=self.device) * 2 - 1
                samples = torch.cat([uniform, policy], 1).flatten(0, 1)  # (B*3n, h, A)
            feat_rep = feat.repeat_interleave(3 * n, 0)
            q_s = torch.stack(
                [c.q_chunk(feat_rep, samples).view(B, 3 * n) for c in self.critics]
            )  # (C, B, 3n)
            h_eff = (~is_pad).sum(1)
            log_density = h * self.spec.action_dim * np.log(0.5) if cfg.cql_importance_sample else 0.0
            q_data = q[:, torch.arange(B, device=self.device), h_eff - 1]  # (C, B) Q of the logged chunk
            cons = conservative_loss(
                q_data, q_s[..., :n], q_s[..., n : 2 * n], q_s[..., 2 * n :],
                batch["mc_return"].float() if cfg.conservative == "calql" else None,
                alpha=cfg.cql_alpha, temperature=cfg.cql_temperature,
                log_uniform_density=log_density,
            )  # fmt: skip
            loss = loss + cons
            metrics.update(conservative=cons.item(), q_policy=q_s[0, :, n : 2 * n].mean().item())
        params = [p for g in self.critic_opt.param_groups for p in g["params"]]
        metrics["critic_grad_norm"] = guarded_step(
            loss, self.critic_opt, params, max_grad_norm=cfg.rl_max_grad_norm
        )
        soft_update(self.target_critics, self.critics, cfg.tau)
        soft_update(self.target_policy, net, cfg.tau)
        metrics.update(self._actor_update(batch, feat.detach()))
        return metrics

    def _actor_update(self, batch: Mapping[str, Any], feat: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        if cfg.actor == "td3_bc" and (self.step + 1) % cfg.policy_delay == 0:
            assert self.actor_opt is not None
            chunk, _ = self.policy_net.regress(feat)
            bc, parts = self._bc(feat, batch)
            actor_loss, lam = td3_bc_actor_loss(self.critics[0].q_chunk(feat, chunk), bc, cfg.alpha_bc)
            guarded_step(
                actor_loss,
                self.actor_opt,
                self.policy_net.head.parameters(),
                max_grad_norm=cfg.rl_max_grad_norm,
            )
            return {"actor_loss": actor_loss.item(), "bc": bc.item(), "lambda_": lam, **parts}
        if cfg.actor == "distill":
            assert self.one_step is not None and self.actor_opt is not None
            z = torch.randn(len(feat), cfg.horizon, self.spec.action_dim, device=self.device)
            with torch.no_grad():
                flow_chunk = self.policy_net.head.sample(feat, z)
            mu = self.one_step(feat, z)
            q_pi = torch.stack([c.q_chunk(feat, mu.clamp(-1, 1)) for c in self.critics]).mean(0)
            actor_loss, distill = distill_actor_loss(q_pi, mu, flow_chunk, cfg.distill_alpha)
            guarded_step(
                actor_loss, self.actor_opt, self.one_step.parameters(), max_grad_norm=cfg.rl_max_grad_norm
            )
            return {"actor_loss": actor_loss.item(), "distill": distill, "q_actor": q_pi.mean().item()}
        return {}

    def _boot_ids(self, batch: Mapping[str, Any], per_prefix: bool) -> torch.Tensor:
        """History ids of the bootstrap observations: o_{t+j} for every prefix (B*h,), or o_{t+h_eff} (B,)."""
        boot = batch["boot_id"]  # (B, h)
        if per_prefix:
            return boot.flatten()
        h_eff = (~batch["action_is_pad"]).sum(1)
        return boot[torch.arange(len(boot), device=self.device), h_eff - 1]

    def _bootstrap_chunk(
        self, batch: Mapping[str, Any], tfeat: torch.Tensor, per_prefix: bool
    ) -> torch.Tensor:
        """A' at every bootstrap observation (rows of ``tfeat``): the policy's next chunk."""
        cfg = self.config
        if cfg.actor == "best_of_n":
            assert self._candidates is not None and self._choice is not None
            ids = self._boot_ids(batch, per_prefix)
            return self._candidates[ids, self._choice[ids]]
        if cfg.actor == "distill":
            return self._one_step().chunk(tfeat, torch.randn(len(tfeat), cfg.horizon, self.spec.action_dim))
        chunk = self.target_policy.regress(tfeat)[0]
        noise = (torch.randn_like(chunk) * cfg.target_noise).clamp(
            -cfg.target_noise_clip, cfg.target_noise_clip
        )
        return (chunk + noise).clamp(-1, 1)

    def _policy_samples(
        self, batch: Mapping[str, Any], feat: torch.Tensor, next_feat: torch.Tensor, n: int
    ) -> torch.Tensor:
        """(B, 2n, h, A) chunks of the current policy for the conservative term: n at o_t, n at o_{t+h_eff}.
        Best-of-N uses its own proposals (drawn from the candidate table); the others add noise to the
        actor's chunk (TD3+BC) or draw the distilled actor's noise."""
        cfg, B, a = self.config, len(feat), self.spec.action_dim
        if cfg.actor == "best_of_n":
            assert self._candidates is not None
            ids = torch.stack([batch["history_id"], self._boot_ids(batch, per_prefix=False)], 1)  # (B, 2)
            pick = torch.randint(cfg.n_candidates, (B, 2, n), device=self.device)
            return self._candidates[ids[..., None], pick].flatten(1, 2)
        if cfg.actor == "distill":
            both = torch.stack([feat, next_feat], 1).repeat_interleave(n, 1)  # (B, 2n, d)
            z = torch.randn(B * 2 * n, cfg.horizon, a, device=self.device)
            return self._one_step().chunk(both.flatten(0, 1), z).view(B, 2 * n, cfg.horizon, a)
        chunks = torch.stack([self.policy_net.regress(feat)[0], self.policy_net.regress(next_feat)[0]], 1)
        chunks = chunks.repeat_interleave(n, 1)
        return (chunks + torch.randn_like(chunks) * cfg.cql_sample_noise).clamp(-1, 1)

    def _rl_features(
        self, batch: Mapping[str, Any], per_prefix: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk features of o_t (B, d), of the bootstrap histories (B*h, d) or (B, d) with ``per_prefix``
        off, and of o_{t+h_eff} (B, d) for the CQL samples at the next state. Only the first carries
        gradients, and only when stage 2 trains the trunk."""
        if "history_id" in batch:  # a frozen trunk: features looked up, computed once per history
            table = self._history_features(batch["history_source"])
            next_feat = table[self._boot_ids(batch, per_prefix=False)]
            return table[batch["history_id"]], table[self._boot_ids(batch, per_prefix)], next_feat
        net, lang = self.policy_net, self.policy_net.lang_of(batch)
        with torch.no_grad():
            if per_prefix:  # bootstrap every prefix j from o_{t+j}: the trunk once per distinct history
                unique, h = batch["prefix_unique"], batch["boot_id"].shape[1]
                boot = {k: v.flatten(0, 1)[unique] for k, v in batch["prefix_obs"].items()}
                boot_lang = None if lang is None else lang[unique // h]
                tfeat = self.target_policy.features(boot, boot_lang)[batch["prefix_inverse"]]
            else:
                tfeat = self.target_policy.features(batch["next_obs"], lang)
            next_feat = net.features(batch["next_obs"], lang)
        return net.features(batch["obs"], lang), tfeat, next_feat

    def _history_features(self, token: str) -> torch.Tensor:
        """(n_histories, d) frozen-trunk features of every history of the stage-2 sampler, computed at the
        first update after the trunk last changed (so a resumed run computes them from the same weights)."""
        source = self._histories
        if source is None or source.token != token:
            raise ValueError(
                "this batch's history ids come from another sampler than this algorithm's latest "
                "CORFT.rl_sampler(...): draw stage-2 batches from the sampler made last"
            )
        if self._features is None:
            net, chunk = self.policy_net, 1024
            parts = []
            with torch.no_grad():
                for lo in range(0, source.n_histories, chunk):
                    obs, task = source.histories(np.arange(lo, min(lo + chunk, source.n_histories)))
                    obs = {k: torch.from_numpy(v).to(self.device) for k, v in obs.items()}
                    lang = net.lang_of({"task_index": torch.from_numpy(task).to(self.device)})
                    parts.append(net.features(obs, lang))
            self._features = torch.cat(parts)
        return self._features

    @torch.no_grad()
    def _best_of_n_targets(self, token: str, *, rank: bool) -> None:
        """Best-of-N's target policy: every history's N candidates, drawn once per stage from a generator
        seeded by the config (so a resumed run draws the same ones), and with ``rank`` their ranking under
        the target critics (a resumed run restores the ranking it saved)."""
        table, best_of_n, n = self._history_features(token), self._best_of_n(), self.config.n_candidates
        rows = 256  # histories per piece: 8k candidate chunks through the flow or a critic at a time
        if self._candidates is None:
            generator = torch.Generator(self.device).manual_seed(self.config.seed + 2)
            self._candidates = torch.cat(
                [best_of_n.propose(table[lo : lo + rows], generator) for lo in range(0, len(table), rows)]
            )
        if not rank:
            return
        choice = []
        for lo in range(0, len(table), rows):
            feat, cand = table[lo : lo + rows].repeat_interleave(n, 0), self._candidates[lo : lo + rows]
            q = torch.stack([c.q_chunk(feat, cand.flatten(0, 1)) for c in self.target_critics]).min(0).values
            choice.append(q.view(-1, n).argmax(1))
        self._choice = torch.cat(choice)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, sampler: ChunkedTDSampler) -> dict[str, float]:
        """How the critic scores held-out demonstrations (windows whose chunk lies inside the episode):
        ``val_q_bias`` / ``val_q_abs_err`` / ``val_q_mc_corr``: Q^(h) of the logged chunk against its
        Monte-Carlo return; ``val_q_spread``: Q of the logged chunk minus Q of the same chunk with N(0, 0.2^2)
        noise (> 0: the critic tells demonstrated chunks from nearby ones); ``val_q_policy_gap``: Q of the
        chunk the policy would execute minus Q of the logged one."""
        if self.stage != "rl":
            raise ValueError("validate() measures the stage-2 critic: call start_rl() first")
        batch = to_torch(
            sampler.extend(sampler.sampler.get_batch(np.arange(len(sampler.sampler)))), self.device
        )
        full = ~batch["action_is_pad"].any(1)
        if not full.any():
            return {}
        net, was_training = self.policy_net, self.policy_net.training
        net.eval()
        feat = net.features(batch["obs"], net.lang_of(batch))[full]
        data = self._target_chunk(batch)[full]
        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        perturbed = (data + 0.2 * torch.randn(data.shape, generator=generator, device=self.device)).clamp(
            -1, 1
        )
        acting = self.policy().choose(feat, generator)
        q_data, q_perturbed, q_policy = (
            torch.stack([c.q_chunk(feat, x) for c in self.critics]).mean(0) for x in (data, perturbed, acting)
        )
        mc = batch["mc_return"][full].float()
        net.train(was_training)
        corr = torch.corrcoef(torch.stack([q_data, mc]))[0, 1] if len(mc) > 1 else torch.tensor(float("nan"))
        return {
            "val_q_bias": (q_data - mc).mean().item(),
            "val_q_abs_err": (q_data - mc).abs().mean().item(),
            "val_q_mc_corr": corr.nan_to_num(0.0).item(),
            "val_q_spread": (q_data - q_perturbed).mean().item(),
            "val_q_policy_gap": (q_policy - q_data).mean().item(),
        }

    # ------------------------------------------------------------------ training driver
    def il_sampler(self, data: TrajectoryStore | StoreView) -> WindowSampler:
        """Stage-1 windows over ``data`` (seeded from config.seed)."""
        view, common = self._windows(data)
        return WindowSampler(view, **common, seed=self.config.seed)

    def rl_sampler(self, data: TrajectoryStore | StoreView) -> ChunkedTDSampler:
        """Stage-2 windows with rewards, Monte-Carlo returns and bootstrap histories (a stream of its own).

        With a frozen trunk (the default) its batches carry history ids instead of observations, and this
        algorithm encodes every history of ``data`` once, at the first stage-2 update, and looks the
        features up: a stage-2 update then costs the critic and the actor only. Only the latest sampler
        made here has its ids resolved; :meth:`update` rejects a batch from an earlier one."""
        sampler = self._chunked_sampler(
            data, seed=self.config.seed + 1, history_ids=not self.config.rl_train_backbone
        )
        if sampler.history_ids:
            self._histories, self._features, self._candidates, self._choice = sampler, None, None, None
        return sampler

    def val_sampler(self, data: TrajectoryStore | StoreView) -> ChunkedTDSampler:
        """Windows of held-out episodes for :meth:`validate` (observations, rewards, Monte-Carlo returns)."""
        return self._chunked_sampler(data, seed=self.config.seed + 3, history_ids=False)

    def split(self, data: TrajectoryStore | StoreView) -> tuple[StoreView, StoreView | None]:
        """(stage-2 training episodes, held-out episodes or None): ``val_fraction`` of them, seeded."""
        view = data if isinstance(data, StoreView) else data.view()
        if not self.config.val_fraction or view.n_episodes < 2:
            return view, None
        return view.split(self.config.val_fraction, seed=self.config.seed)

    def _chunked_sampler(
        self, data: TrajectoryStore | StoreView, *, seed: int, history_ids: bool
    ) -> ChunkedTDSampler:
        view, common = self._windows(data)
        cfg, store = self.config, view.store
        rewards = step_rewards(store, cfg.reward)
        return ChunkedTDSampler(
            WindowSampler(view, **common, seed=seed),
            rewards,
            mc_returns(rewards, store.episodes, cfg.gamma),
            prefix=cfg.critic_loss == "prefix",
            history_ids=history_ids,
        )

    def _windows(self, data: TrajectoryStore | StoreView) -> tuple[StoreView, dict[str, Any]]:
        view = data if isinstance(data, StoreView) else data.view()
        cfg = self.config
        longest = int(view.store.episodes["length"][view.episode_indices].max())
        if cfg.horizon > longest:
            raise ValueError(
                f"horizon={cfg.horizon} is longer than every episode (the longest has {longest} steps): "
                "no window would hold a whole chunk"
            )
        keys = [*cfg.state_keys, *cfg.image_keys]
        return view, {"n_obs": cfg.n_obs, "horizon": cfg.horizon, "gamma": cfg.gamma, "obs_keys": keys,
                      "reward_key": None}  # fmt: skip

    def fit(
        self,
        data: TrajectoryStore | StoreView,
        run_dir: str | Path,
        il_loop: LoopConfig | None,
        rl_loop: LoopConfig | None,
        *,
        resume: bool = False,
        progress: bool = True,
    ) -> dict[str, Path]:
        """Stage 1 into ``run_dir/il`` (skipped when ``il_loop`` is None), stage 2 into ``run_dir/rl``
        (skipped when ``rl_loop`` is None), both through :func:`robocl.train.fit`; stage 2 trains on all
        but the held-out episodes (:meth:`split`) and logs :meth:`validate` on them at every evaluation.
        Returns the checkpoint paths of the stages run, {"il": ..., "rl": ...}."""
        if il_loop is None and rl_loop is None:
            raise ValueError("nothing to train: give stage 1 or stage 2 some updates")
        cfg = self.config
        # Before stage 1: a store that cannot give stage 2 its rewards must fail now, not after stage 1.
        reward = cfg.reward if rl_loop is not None else None
        check_training_data(data, method="co-rft", state=cfg.state_keys, images=cfg.image_keys, reward=reward)
        run_dir = Path(run_dir)
        paths = {}
        rl_last = run_dir / "rl" / "checkpoints" / "last"
        rl_saved = resume and resolve_checkpoint(rl_last) is not None
        if il_loop is not None and not rl_saved:
            il_resume = resume and resolve_checkpoint(run_dir / "il" / "checkpoints" / "last") is not None
            fit(self, self.il_sampler(data), il_loop, run_dir / "il", resume=il_resume, progress=progress)
        if il_loop is not None:
            paths["il"] = run_dir / "il" / "checkpoints" / "last"
        if rl_loop is None:
            return paths
        if self.stage == "il":
            self.start_rl()
        train, val = self.split(data)
        val_sampler = self.val_sampler(val) if val is not None else None
        fit(
            self,
            self.rl_sampler(train),
            rl_loop,
            run_dir / "rl",
            resume=rl_saved,
            evaluate=None if val_sampler is None else lambda algo: algo.validate(val_sampler),
            progress=progress,
        )
        return {**paths, "rl": rl_last}

    # ------------------------------------------------------------------ checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"policy.{k}": v for k, v in self.policy_net.state_dict().items()}
        if self.stage == "rl":
            out.update({f"critic.{k}": v for k, v in self.critics.state_dict().items()})
            if self.one_step is not None:
                out.update({f"actor.{k}": v for k, v in self.one_step.state_dict().items()})
        return out

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.policy_net.load_state_dict(_strip(tensors, "policy."))
        self._features = self._candidates = None  # recomputed from these weights at the next update
        if self.stage == "rl":
            self.critics.load_state_dict(_strip(tensors, "critic."))
            if self.one_step is not None:
                self.one_step.load_state_dict(_strip(tensors, "actor."))

    def trainer_state(self) -> dict[str, Any]:
        if self.stage == "il":
            return {"il_opt": self.il_opt.state_dict(), "step": self.step}
        return {
            "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": None if self.actor_opt is None else self.actor_opt.state_dict(),
            "target_policy": self.target_policy.state_dict(),
            "target_critics": self.target_critics.state_dict(),
            "best_of_n_choice": self._choice,  # the candidates' ranking, which only a refresh recomputes
            "step": self.step,
        }

    def load_trainer_state(self, state: Mapping[str, Any]) -> None:
        if self.stage == "il":
            self.il_opt.load_state_dict(state["il_opt"])
        else:
            self.critic_opt.load_state_dict(state["critic_opt"])
            if self.actor_opt is not None:
                self.actor_opt.load_state_dict(state["actor_opt"])
            self.target_policy.load_state_dict(state["target_policy"])
            self.target_critics.load_state_dict(state["target_critics"])
            self._choice = state["best_of_n_choice"]
        self.step = int(state["step"])

    def checkpoint_header(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "spec": asdict(self.spec), "seed": self.config.seed}

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str = "cpu") -> CORFT:
        s = ckpt.spec
        spec = PolicySpec(
            {k: tuple(v) for k, v in s["obs_shapes"].items()}, s["action_dim"], s["fps"], s["extra"]
        )
        algo = cls(CORFTConfig(**ckpt.config), spec, device, stage=s["extra"]["stage"])
        algo.load_tensors(ckpt.tensors)
        algo.step = ckpt.step
        return algo

    def policy(
        self,
        *,
        flow_noise: float | None = None,
        n_action_steps: int | None = None,
        ensemble_coef: float | None = None,
    ) -> VLAPolicy:
        """The policy of the current stage (IL: the flow or regression head; stage 2: best-of-N, the
        distilled actor or the TD3+BC head), executed as the config says unless overridden here."""
        cfg = self.config
        noise = cfg.flow_noise if flow_noise is None else flow_noise
        choose: ChunkChooser = FlowChooser(self.policy_net, noise)
        if self.stage == "rl" and cfg.actor == "best_of_n":
            choose = self._best_of_n()
        elif self.stage == "rl" and cfg.actor == "distill":
            choose = self._one_step(noise)
        return VLAPolicy(
            self.policy_net,
            self.device,
            self._language,
            choose=choose,
            n_action_steps=cfg.n_action_steps if n_action_steps is None else n_action_steps,
            ensemble_coef=cfg.ensemble_coef if ensemble_coef is None else ensemble_coef,
            seed=cfg.seed,
        )


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def train_co_rft(
    config: CORFTConfig,
    data: str | Path,
    run_dir: str | Path,
    *,
    il_loop: LoopConfig | None,
    rl_loop: LoopConfig | None,
    init: str | Path | None = None,
    resume: bool = False,
    tags: Sequence[str] = (),
    language: LanguageEncoder | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Both stages on the store at ``data`` (episodes with all ``tags``); returns the checkpoint paths."""
    with TrajectoryStore.open(data, "r") as store:
        device = (rl_loop or il_loop or LoopConfig()).device
        algo = CORFT.from_store(config, store, device=device, language=language)
        if init is not None and not resume:
            algo.init_backbone(init)
        view = store.view(tags=list(tags)) if tags else store.view()
        return algo.fit(view, run_dir, il_loop, rl_loop, resume=resume, progress=progress)
