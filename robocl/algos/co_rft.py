"""CO-RFT: chunked offline RL fine-tuning of a vision-language-action policy (Huang, Fang et al. 2025,
arXiv 2508.02219; robocl's notes with the source of every default: docs/refs co-rft.md).

A VLA-style policy (a conv encoder per camera, proprioception, a frozen sentence encoder for the
instruction, a transformer trunk, an action head that regresses a chunk of h actions) is trained in two
stages on a few dozen demonstrations. Stage 1 is imitation with every parameter trainable (the IL policy,
which is also the baseline). Stage 2 is offline RL whose unit of decision is the chunk: a causal critic
"expert" beside the policy reads the trunk's feature and the chunk and outputs Q^(j) for every prefix
a_{t..t+j-1}; each prefix has its own n-step target, a Cal-QL conservative term keeps Q of unseen chunks
down (but not below the Monte-Carlo return of the logged episode), and the action head improves through
the critic by TD3+BC.

Choices where the paper is silent ([R] in the notes: the closest related work's default):
- chunked TD target per prefix (T-SAC's multi-horizon critic) with Q-chunking's in-chunk discounted sum;
  ``critic_loss="full"`` trains only the last valid prefix instead (the Q-chunking backup);
- twin critics, TD3 min over both in the target, Polyak tau 0.005 after every critic step (TD3/QC);
- Cal-QL conservative term (temperature 1) on Q^(h) (Nakamoto et al.), weight 1.0 rather than Cal-QL's 5
  (measured; see the config);
- TD3+BC actor (delay 2, target noise 0.2 clipped at 0.5; Fujimoto & Gu; alpha_bc rescaled to this BC
  term, see the config), BC term = the stage-1 loss: Huber on the arm channels + 0.01 x BCE on the gripper
  channel (RoboVLMs);
- reward -1 per step until success, 0 at the success step (Q-chunking's robomimic convention).

Deviations and why:
- The bootstrap for prefix j needs the history at o_{t+j}; the store's sampler gives it for j = h_eff
  only. With the trunk frozen (the default) every history's feature is computed once and looked up by id;
  with a trained trunk :class:`ChunkedTDSampler` gathers the other h-1 histories through
  ``WindowSampler.get_batch`` (exact targets, at h times the observation reads; ``critic_loss="full"``
  avoids that cost).
- The TD loss averages over valid (unpadded) prefixes rather than dividing by h, so the per-prefix and the
  full-chunk variants have the same scale.
- CQL samples are not importance-weighted by default: the deterministic actor has no log-density (the
  notes' [N] choice), and weighting only the uniform samples by h*d*log 2 (35 for h=10, d=5) would let
  them swamp the policy samples, which are the ones Cal-QL calibrates. ``cql_importance_sample`` restores it.
- 3 CQL samples per kind, not Cal-QL's 10: the term dominates an update's cost, and 3 gave as good a
  critic gradient (see the config comment); ``cql_n_samples=10`` restores Cal-QL's count.
- The trunk is frozen in stage 2 by default (see the config). With ``rl_train_backbone=True`` it learns
  through the critic loss only and the actor reads it detached (DrQ-v2's convention), so one optimiser
  owns each parameter.
- For an episode that did not terminate, V_MC adds r_last / (1 - gamma) for the steps after the cut
  (Cal-QL's value for failed episodes with a constant reward).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from robocl.algos.bc import PolicySpec
from robocl.checkpoint import Checkpoint, load_checkpoint
from robocl.nets.critic import PrefixMLPCritic
from robocl.nets.language import DEFAULT_LANGUAGE_MODEL, LanguageEncoder
from robocl.nets.transformer import ChunkCritic
from robocl.nets.vla import VLAPolicy, VLAPolicyNet
from robocl.store import StoreView, TrajectoryStore, WindowSampler
from robocl.train import LoopConfig, fit, guarded_step


@dataclass
class CORFTConfig:
    """CO-RFT: imitation, then chunked offline RL (Cal-QL critic, TD3+BC actor)."""

    state_keys: tuple[str, ...] = ("observation.state", "observation.object")  # low-dim store features
    image_keys: tuple[str, ...] = ()  # camera features (uint8 HxWx3); empty = the state-only policy
    language_model: str | None = (
        DEFAULT_LANGUAGE_MODEL  # frozen sentence encoder (name or folder); None = off
    )
    n_obs: int = 2  # observation history length (RoboVLMs uses 8-16; 2 keeps CPU runs fast)
    horizon: int = 10  # actions per chunk h (RoboVLMs' fwd_pred_next_n)
    n_action_steps: int = 0  # actions executed per predicted chunk; 0 = the whole chunk, open loop
    d_model: int = 128  # width of the trunk and critic transformers
    n_layers: int = 2  # transformer layers in the trunk and in each critic
    n_heads: int = 4  # attention heads
    vision_channels: tuple[int, ...] = (32, 64, 128, 128)  # conv widths per camera encoder (stride 2 each)
    aug_shift: int = 4  # random-shift augmentation of frames during training, pixels
    dropout: float = 0.1  # trunk transformer dropout in stage 1 (ACT's 0.1: a few dozen demos overfit fast)
    gripper: bool = True  # the last action channel is a gripper: sigmoid output and BCE loss
    gripper_weight: float = 0.01  # BCE weight against the arm Huber loss (RoboVLMs arm_gripper_loss_ratio)
    huber_delta: float = 1.0  # Huber threshold on normalised arm actions (torch's default)
    il_lr: float = 3e-4  # stage-1 AdamW lr, also the trunk's in stage 2 (RoboVLMs' 2e-5 is for a VLM)
    weight_decay: float = 0.0  # AdamW decoupled weight decay (RoboVLMs: 0)
    max_grad_norm: float = 1.0  # stage-1 gradient clipping (RoboVLMs: 1.0)
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
    actor_lr: float = 3e-4  # action-head Adam lr in stage 2 (TD3+BC)
    tau: float = 0.005  # Polyak rate of the target networks, per critic step
    # Stage 2 trains the trunk (through the critic) or freezes it (the notes: "frozen or at the IL lr").
    # Frozen: the policy keeps the features it imitated with, and each history is encoded once for the
    # whole stage (see rl_sampler): 66 ms per update against 34 ms for an IL update (benchmarks/co_rft.py,
    # pick-place, batch 128, h = 10, one thread); recomputing the trunk per batch took 309 vs 71 (batch 256).
    rl_train_backbone: bool = False
    # Conservative term on Q^(h). Without it stage 2 collapses on the arm tasks (60 mixed demos, 3 seeds:
    # 0-1% success against IL's 30% pick-place and 79% push, at alpha_bc 2.5 or 0.5): the critic
    # extrapolates over 20-50-d chunks the demos never visit (benchmarks/results/co_rft_*_ablation.json).
    conservative: Literal["calql", "cql", "none"] = "calql"
    # Weight of the conservative term. Cal-QL's 5.0 over h x A = 50-d chunks pushed the logged chunks' Q up
    # without bound (TD error 19 -> 114 over 1k updates, pick-place, 60 mixed demos); 1.0 kept it at 3-6.
    cql_alpha: float = 1.0
    # Chunks per kind (uniform, policy at o, policy at o'). Cal-QL uses 10; 3 measured as good: on pick-place
    # (20 demos, h=10) one draw's critic gradient has cosine 0.95 with a 3x40-sample mean, as at n=10
    # (0.95) and above n=1-2 (0.92-0.93), at 40% of n=10's update time (the term is ~90% of it).
    cql_n_samples: int = 3
    cql_temperature: float = 1.0  # logsumexp temperature
    cql_sample_noise: float = 0.2  # std of the Gaussian added to policy chunks sampled for the CQL term
    cql_importance_sample: bool = False  # subtract the uniform log-density h*d*log(0.5) (see deviations)
    # TD3+BC: lambda = alpha_bc / mean|Q|. TD3+BC's 2.5 assumes an MSE over one d-dim action; this BC term
    # averages a Huber over h x A chunk entries, ~17x smaller gradients per entry, and 2.5 (or 1.0) drove
    # the policy off the demos (0-13% success from 27%); 0.05 was the best of the pilots, and with Cal-QL
    # at weight 1, 2.5 still fell to 5% (pick-place) and 33% (push) against 41% and 84% (the ablation).
    alpha_bc: float = 0.05
    policy_delay: int = 2  # critic steps per actor step (TD3)
    target_noise: float = 0.2  # target policy smoothing std, normalised actions (TD3)
    target_noise_clip: float = 0.5  # clip of that noise (TD3)
    seed: int = 0  # network initialisation (stage 1 and stage 2) and the samplers' streams

    def __post_init__(self) -> None:
        self.state_keys, self.image_keys = tuple(self.state_keys), tuple(self.image_keys)
        self.critic_hidden = tuple(self.critic_hidden)
        self.vision_channels = tuple(self.vision_channels)
        if not self.state_keys and not self.image_keys:
            raise ValueError("CO-RFT needs state_keys or image_keys")
        if self.horizon < 1 or self.n_obs < 1:
            raise ValueError(f"horizon={self.horizon} and n_obs={self.n_obs} must be >= 1")
        if not 0 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [0, horizon={self.horizon}]")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma={self.gamma} must be in [0, 1) (V_MC of unfinished episodes needs it)")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        choices = {
            "reward": ("step_penalty", "sparse", "store"),
            "critic_loss": ("prefix", "full"),
            "conservative": ("calql", "cql", "none"),
            "critic": ("mlp", "transformer"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}")
        if self.n_critics < 1 or self.policy_delay < 1 or self.cql_n_samples < 1:
            raise ValueError("n_critics, policy_delay and cql_n_samples must be >= 1")
        if self.language_model in ("", "none", "None"):
            self.language_model = None


# ---------------------------------------------------------------------------------------------- data
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

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


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


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


# ---------------------------------------------------------------------------------------------- algorithm
class CORFT:
    """Stage ``"il"``: ``update`` is one BC step on every parameter. :meth:`start_rl` builds the critics,
    the target networks and the stage-2 optimisers and switches ``update`` to one chunked critic step (plus
    an actor step every ``policy_delay``). Checkpoints record the stage, so both load with
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
        # Stage 2 with a frozen trunk: the sampler whose history ids batches carry, and their features.
        self._histories: ChunkedTDSampler | None = None
        self._features: torch.Tensor | None = None
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
        """Shapes and statistics from ``store``; task embeddings from ``language`` or the config's model."""
        feats = store.features
        for key in (*config.state_keys, *config.image_keys):
            if key not in feats:
                raise ValueError(f"{key!r} is not a feature of the store; it has {sorted(feats)}")
            if feats[key].is_image != (key in config.image_keys):
                kind = "an image" if feats[key].is_image else "low-dimensional"
                raise ValueError(f"{key!r} is {kind} but is listed among the other kind of keys")
        if store.n_episodes == 0:
            raise ValueError("the store has no episodes")
        lang_dim, embeddings = 0, None
        if config.language_model is not None:
            if (store.episodes["task_index"] < 0).any():
                raise ValueError("language conditioning needs a task string on every episode")
            language = language or LanguageEncoder(config.language_model)
            embeddings = language.encode(store.tasks)
            lang_dim = language.dim
        spec = PolicySpec(
            obs_shapes={k: tuple(feats[k].shape) for k in (*config.state_keys, *config.image_keys)},
            action_dim=int(np.prod(feats["action"].shape)),
            fps=store.fps,
            extra={"tasks": list(store.tasks), "lang_dim": lang_dim, "stage": "il"},
        )
        algo = cls(config, spec, device)
        algo._language = language
        algo.policy_net.normalizer.load_stats(store.stats)
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
        """Enter stage 2 from the current policy: critics, target copies, optimisers; step restarts at 0."""
        cfg = self.config
        torch.manual_seed(cfg.seed + 1)
        self.critics = nn.ModuleList(self._critic() for _ in range(cfg.n_critics)).to(self.device)
        self.target_policy = copy.deepcopy(self.policy_net).requires_grad_(False).eval()  # no dropout
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        groups: list[dict[str, Any]] = [{"params": list(self.critics.parameters()), "lr": cfg.critic_lr}]
        if cfg.rl_train_backbone:
            groups.append({"params": list(self.policy_net.trunk.parameters()), "lr": cfg.il_lr})
        self.policy_net.trunk.requires_grad_(cfg.rl_train_backbone)
        self.critic_opt = torch.optim.Adam(groups)
        self.actor_opt = torch.optim.Adam(self.policy_net.head.parameters(), lr=cfg.actor_lr)
        self.stage, self.step = "rl", 0
        self.spec.extra["stage"] = "rl"
        self._features = None

    def _critic(self) -> nn.Module:
        cfg, a = self.config, self.spec.action_dim
        if cfg.critic == "mlp":
            return PrefixMLPCritic(cfg.d_model, a, cfg.horizon, cfg.critic_hidden)
        return ChunkCritic(
            cfg.d_model, a, cfg.horizon, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads
        )

    # ------------------------------------------------------------------ updates
    def update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        self.policy_net.train()  # evaluation may have switched it to eval (no augmentation)
        if self.stage == "rl" and not self.config.rl_train_backbone:
            self.policy_net.trunk.eval()  # a frozen trunk gives the critic the features the policy acts on
        metrics = self._il_update(batch) if self.stage == "il" else self._rl_update(batch)
        self.step += 1
        return metrics

    def _bc(self, chunk: torch.Tensor, logit: torch.Tensor | None, batch: Mapping[str, Any]) -> Any:
        target = self.policy_net.normalizer.normalize("action", batch["action"].float()).clamp(-1, 1)
        cfg = self.config
        return chunk_bc_loss(
            chunk,
            logit,
            target,
            batch["action_is_pad"],
            gripper_weight=cfg.gripper_weight,
            huber_delta=cfg.huber_delta,
        )

    def _il_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        net = self.policy_net
        chunk, logit = net.act(net.features(batch["obs"], net.lang_of(batch)))
        loss, parts = self._bc(chunk, logit, batch)
        grad_norm = guarded_step(loss, self.il_opt, net.parameters(), max_grad_norm=self.config.max_grad_norm)
        return {"loss": loss.item(), **parts, "grad_norm": grad_norm}

    def _rl_update(self, batch: Mapping[str, Any]) -> dict[str, float]:
        cfg, net = self.config, self.policy_net
        is_pad = batch["action_is_pad"]
        B, h = is_pad.shape
        per_prefix = cfg.critic_loss == "prefix"
        data_chunk = net.normalizer.normalize("action", batch["action"].float()).clamp(-1, 1)  # (B, h, A)
        feat, tfeat, next_feat = self._rl_features(batch, per_prefix)
        with torch.no_grad():
            tchunk = self.target_policy.act(tfeat)[0]
            noise = (torch.randn_like(tchunk) * cfg.target_noise).clamp(
                -cfg.target_noise_clip, cfg.target_noise_clip
            )
            tchunk = (tchunk + noise).clamp(-1, 1)
            next_q = torch.stack([c.q_chunk(tfeat, tchunk) for c in self.target_critics]).min(0).values
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
                policy = torch.stack([net.act(feat.detach())[0], net.act(next_feat)[0]], 1)  # (B, 2, h, A)
                policy = policy.repeat_interleave(n, 1)
                policy = (policy + torch.randn_like(policy) * cfg.cql_sample_noise).clamp(-1, 1)
                uniform = torch.rand(B, n, h, self.spec.action_dim, device=self.device) * 2 - 1
                samples = torch.cat([uniform, policy], 1).flatten(0, 1)  # (B*3n, h, A)
            feat_rep = feat.repeat_interleave(3 * n, 0)
            q_s = torch.stack(
                [c.q_chunk(feat_rep, samples).view(B, 3 * n) for c in self.critics]
            )  # (C, B, 3n)
            h_eff = (~is_pad).sum(1)
            log_density = h * self.spec.action_dim * np.log(0.5) if cfg.cql_importance_sample else 0.0
            q_data = q[
                :, torch.arange(B, device=self.device), h_eff - 1
            ]  # (C, B) Q of the whole logged chunk
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
        if (self.step + 1) % cfg.policy_delay == 0:
            feat_a = feat.detach()
            chunk, logit = net.act(feat_a)
            q_pi = self.critics[0].q_chunk(feat_a, chunk)
            bc, parts = self._bc(chunk, logit, batch)
            actor_loss, lam = td3_bc_actor_loss(q_pi, bc, cfg.alpha_bc)
            guarded_step(
                actor_loss, self.actor_opt, net.head.parameters(), max_grad_norm=cfg.rl_max_grad_norm
            )
            metrics.update(actor_loss=actor_loss.item(), bc=bc.item(), lambda_=lam, **parts)
        return metrics

    def _rl_features(
        self, batch: Mapping[str, Any], per_prefix: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Trunk features of o_t (B, d), of the bootstrap histories (B*h, d) or (B, d) with ``per_prefix``
        off, and of o_{t+h_eff} (B, d) for the CQL samples at the next state. Only the first carries
        gradients, and only when stage 2 trains the trunk."""
        if "history_id" in batch:  # a frozen trunk: features looked up, computed once per history
            table = self._history_features(batch["history_source"])
            boot = batch["boot_id"]  # (B, h)
            h_eff = (~batch["action_is_pad"]).sum(1)
            next_feat = table[boot[torch.arange(len(boot), device=self.device), h_eff - 1]]
            return table[batch["history_id"]], table[boot.flatten()] if per_prefix else next_feat, next_feat
        net, lang = self.policy_net, self.policy_net.lang_of(batch)
        with torch.no_grad():
            if per_prefix:  # bootstrap every prefix j from o_{t+j}: the trunk once per distinct history
                unique, h = batch["prefix_unique"], batch["boot_id"].shape[1]
                boot = {k: v.flatten(0, 1)[unique] for k, v in batch["prefix_obs"].items()}
                boot_lang = None if lang is None else lang[unique // h]
                tfeat = self.target_policy.features(boot, boot_lang)[batch["prefix_inverse"]]
            else:
                tfeat = self.target_policy.features(batch["next_obs"], lang)
            next_feat = net.features(batch["next_obs"], lang) if self.config.conservative != "none" else None
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

    # ------------------------------------------------------------------ training driver
    def il_sampler(self, data: TrajectoryStore | StoreView) -> WindowSampler:
        """Stage-1 windows over ``data`` (seeded from config.seed)."""
        view, common = self._windows(data)
        return WindowSampler(view, **common, seed=self.config.seed)

    def rl_sampler(self, data: TrajectoryStore | StoreView) -> ChunkedTDSampler:
        """Stage-2 windows with rewards, Monte-Carlo returns and bootstrap histories (a stream of its own).

        With a frozen trunk (the default) its batches carry history ids instead of observations, and this
        algorithm encodes every history of ``data`` once, at the first stage-2 update, and looks the
        features up: a stage-2 update then costs the critic and the head only. Only the latest sampler made
        here has its ids resolved; :meth:`update` rejects a batch from an earlier one."""
        view, common = self._windows(data)
        cfg, store = self.config, view.store
        rewards = step_rewards(store, cfg.reward)
        sampler = ChunkedTDSampler(
            WindowSampler(view, **common, seed=cfg.seed + 1),
            rewards,
            mc_returns(rewards, store.episodes, cfg.gamma),
            prefix=cfg.critic_loss == "prefix",
            history_ids=not cfg.rl_train_backbone,
        )
        if sampler.history_ids:
            self._histories, self._features = sampler, None
        return sampler

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
        (skipped when ``rl_loop`` is None), both through :func:`robocl.train.fit`. Returns the checkpoint
        paths of the stages run, {"il": ..., "rl": ...}."""
        if il_loop is None and rl_loop is None:
            raise ValueError("nothing to train: give stage 1 or stage 2 some updates")
        run_dir = Path(run_dir)
        paths = {}
        rl_last = run_dir / "rl" / "checkpoints" / "last"
        if il_loop is not None and not (resume and rl_last.exists()):
            il_resume = resume and (run_dir / "il" / "checkpoints" / "last").exists()
            fit(self, self.il_sampler(data), il_loop, run_dir / "il", resume=il_resume, progress=progress)
        if il_loop is not None:
            paths["il"] = run_dir / "il" / "checkpoints" / "last"
        if rl_loop is None:
            return paths
        if self.stage == "il":
            self.start_rl()
        fit(
            self,
            self.rl_sampler(data),
            rl_loop,
            run_dir / "rl",
            resume=resume and rl_last.exists(),
            progress=progress,
        )
        return {**paths, "rl": rl_last}

    # ------------------------------------------------------------------ checkpoints
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"policy.{k}": v for k, v in self.policy_net.state_dict().items()}
        if self.stage == "rl":
            out.update({f"critic.{k}": v for k, v in self.critics.state_dict().items()})
        return out

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.policy_net.load_state_dict(_strip(tensors, "policy."))
        self._features = None
        if self.stage == "rl":
            self.critics.load_state_dict(_strip(tensors, "critic."))

    def trainer_state(self) -> dict[str, Any]:
        if self.stage == "il":
            return {"il_opt": self.il_opt.state_dict(), "step": self.step}
        return {
            "critic_opt": self.critic_opt.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "target_policy": self.target_policy.state_dict(),
            "target_critics": self.target_critics.state_dict(),
            "step": self.step,
        }

    def load_trainer_state(self, state: Mapping[str, Any]) -> None:
        if self.stage == "il":
            self.il_opt.load_state_dict(state["il_opt"])
        else:
            self.critic_opt.load_state_dict(state["critic_opt"])
            self.actor_opt.load_state_dict(state["actor_opt"])
            self.target_policy.load_state_dict(state["target_policy"])
            self.target_critics.load_state_dict(state["target_critics"])
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

    def policy(self) -> VLAPolicy:
        return VLAPolicy(self.policy_net, self.device, self._language)


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
