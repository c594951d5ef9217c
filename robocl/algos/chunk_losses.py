"""The losses of chunked offline RL as pure functions (CO-RFT's stage 1 and 2), each with its maths.

Shapes: B windows, h actions per chunk, A action dimensions, C critics, n samples per kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)
