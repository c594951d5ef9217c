"""A flow-matching action-chunk head: noise -> chunk in K Euler steps, conditioned on trunk features.

The design of pi0's and SmolVLA's "action expert" and of Flow Q-Learning's BC flow (Park, Li, Levine 2025;
robocl's notes: refs flow-policies.md): a velocity network v(o, x_t, t) over a normalised chunk x, trained by
conditional flow matching on the rectified-flow path x_t = (1 - t) x_0 + t A, and integrated from x_0 at
inference. Choices where the sources differ:

- t ~ U(0, 1) (FQL and Q-chunking), not pi0's Beta that favours the noisy end;
- the velocity network is an MLP over [features, x_t flattened, t] (FQL/QC's actor; GELU, no layer norm),
  since robocl's trunk already fuses the observation into one feature vector;
- x_0 ~ N(0, sigma^2 I) at inference with sigma a policy setting, not a training one: sigma = 1 samples the
  demonstrators' spread (their injected noise included), sigma = 0 integrates deterministically and follows
  the mode; training always draws x_0 ~ N(0, I) so that every sigma in [0, 1] stays inside the trained paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robocl.nets.mlp import MLP


def flow_matching_loss(
    velocity: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, is_pad: torch.Tensor
) -> torch.Tensor:
    """Conditional flow-matching loss of one batch, averaged over the chunk steps that are not padding.

    L = sum_{b,k} m_{bk} ||v_theta(o_b, x_t, t)_{bk} - (A_{bk} - x0_{bk})||^2 / (d * sum_{b,k} m_{bk})

    velocity: v_theta at (o, x_t, t) with x_t = (1 - t) x0 + t A, (B, h, d); target: the data chunk A and
    noise: x0, both (B, h, d); is_pad: (B, h), True where step k lies past the episode's end (its target
    is a repeated action, not a demonstration).
    """
    valid = (~is_pad).to(velocity.dtype)
    per_step = ((velocity - (target - noise)) ** 2).mean(-1)  # (B, h)
    return (per_step * valid).sum() / valid.sum().clamp_min(1.0)


class FlowHead(nn.Module):
    """Velocity field over normalised chunks (B, h, d) in [-1, 1], conditioned on features (B, feat_dim)."""

    def __init__(
        self, feat_dim: int, horizon: int, action_dim: int, hidden: Sequence[int], n_steps: int = 10
    ) -> None:
        super().__init__()
        if n_steps < 1:
            raise ValueError(f"n_steps={n_steps} must be >= 1")
        self.horizon, self.action_dim, self.n_steps = horizon, action_dim, n_steps
        chunk = horizon * action_dim
        self.net = MLP(feat_dim + chunk + 1, hidden, chunk, activation=nn.GELU)

    def velocity(self, feat: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v(o, x_t, t): feat (B, F), x (B, h, d), t (B,) -> (B, h, d)."""
        inputs = torch.cat([feat, x.flatten(1), t.unsqueeze(1).to(feat.dtype)], dim=1)
        return self.net(inputs).view_as(x)

    def loss(self, feat: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        """:func:`flow_matching_loss` at x0 ~ N(0, I), t ~ U(0, 1) drawn from torch's RNG (one per row)."""
        noise = torch.randn_like(target)
        t = torch.rand(target.shape[0], device=target.device, dtype=target.dtype)
        x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * target
        return flow_matching_loss(self.velocity(feat, x_t, t), target, noise, is_pad)

    def sample(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Euler integration of the velocity from x_0 = ``noise`` (B, h, d) over K steps, clipped to
        [-1, 1]: x <- x + v(o, x, i/K) / K for i = 0..K-1."""
        x, dt = noise, 1.0 / self.n_steps
        for i in range(self.n_steps):
            t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
            x = x + self.velocity(feat, x, t) * dt
        return x.clamp(-1.0, 1.0)


class OneStepActor(nn.Module):
    """FQL's one-step policy mu_w(o, z): noise (B, h, d) straight to a chunk in one network call, trained
    to match the flow's K-step sample from the same noise while maximising Q. Output unclipped (B, h, d)."""

    def __init__(self, feat_dim: int, horizon: int, action_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        chunk = horizon * action_dim
        self.net = MLP(feat_dim + chunk, hidden, chunk, activation=nn.GELU)

    def forward(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([feat, noise.flatten(1)], dim=1)).view_as(noise)
