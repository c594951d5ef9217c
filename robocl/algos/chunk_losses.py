"""The losses of chunked offline RL as pure functions (CO-RFT's stage 1 and 2), each with its maths.

Shapes: B windows, h actions per chunk, A action dimensions, C critics, n samples per kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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
    length: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD targets y^(j) of prefix lengths j (B, S), or of every j = 1..h (B, h) without ``length``.

    y^(j) = sum_{k<j} gamma^k r_{t+k} + gamma^j (1 - done_j) next_q^(j), with next_q^(j) (same shape as
    the result) the bootstrap value at o_{t+j}; only prefixes within the episode (j <= h_eff) are meant to
    be trained (:func:`td_prefixes` draws them), and only the one that reaches a terminal end (j = h_eff,
    done) drops its bootstrap.
    """
    B, h = reward.shape
    if length is None:
        length = torch.arange(1, h + 1, device=reward.device).expand(B, h)
    discounts = gamma ** torch.arange(h, device=reward.device).to(reward.dtype)
    prefix_return = torch.cumsum(reward * discounts, dim=1).gather(1, length - 1)  # R^(j)
    h_eff = (~is_pad).sum(1, keepdim=True)  # (B, 1)
    terminal = done.bool().unsqueeze(1) & (length == h_eff)
    return prefix_return + (gamma**length).to(reward.dtype) * (~terminal).to(reward.dtype) * next_q


def td_prefixes(
    is_pad: torch.Tensor, n_shorter: int | None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix lengths of each window the TD loss trains, and their weights: (B, 1 + s) each.

    Column 0 is the logged chunk's whole length h_eff (weight 1), the chunk the conservative term compares
    against. The other s = min(n_shorter, h - 1) columns are shorter lengths j < h_eff drawn uniformly
    without replacement, each weighted (h_eff - 1) / min(s, h_eff - 1), and columns a short window has no
    prefix for get weight 0. So each window's weights sum to h_eff, and with them

        sum_{b,s} w_bs (Q^(j_bs) - y^(j_bs))^2 / sum_{b,s} w_bs

    is an unbiased estimate of the per-prefix loss over every j <= h_eff (a prefix is drawn with probability
    min(s, h_eff - 1) / (h_eff - 1)), at 1 + s critic rows per window instead of h. ``n_shorter`` None takes
    every shorter prefix in order (weights 1: that loss exactly), 0 the whole chunk alone.
    """
    B, h = is_pad.shape
    h_eff = (~is_pad).sum(1, keepdim=True)  # (B, 1)
    j = torch.arange(1, h + 1, device=is_pad.device)
    shorter = j < h_eff  # (B, h)
    s = h - 1 if n_shorter is None else min(n_shorter, h - 1)
    if n_shorter is None:
        key = j.to(torch.float32).expand(B, h)
    else:
        key = torch.rand(B, h, generator=generator, device=is_pad.device)
    key = torch.where(shorter, key, torch.inf)  # the shorter prefixes first, drawn (or in order)
    drawn = key.argsort(dim=1, stable=True)[:, :s] + 1  # (B, s) lengths
    n_short = h_eff - 1
    weight = n_short / n_short.clamp(max=s).clamp_min(1)
    weight = torch.where(torch.arange(s, device=is_pad.device) < n_short, weight, 0.0)
    length = torch.cat([h_eff, drawn], 1)
    return length, torch.cat([torch.ones(B, 1, device=is_pad.device), weight], 1)


def critic_td_loss(q: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over critics (C, B, S) of the squared error averaged over the prefixes, weighted by ``mask``
    (booleans, or :func:`td_prefixes`' weights)."""
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


def soft_update(target: Sequence[torch.Tensor], online: Sequence[torch.Tensor], tau: float) -> None:
    """target <- target + tau (online - target) for paired parameters, all in one foreach kernel."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target), list(online), tau)
