"""Cross-entropy-method planning over open-loop action sequences, as HyperCRL's MPC agent plans.

The whole population is evaluated at once: ``cost`` receives every sampled sequence as one (K, H, A) tensor,
so a learned model can roll all of them out in a batched forward per horizon step. By default each call
starts from N(0, init_std^2) (HyperCRL resets the distribution every environment step: no warm start, no
shift), refits mean and population std (ddof 0) on the elites ``n_iters`` times, then draws one more
population from the final distribution and returns its single cheapest sequence. Samples are not clipped:
the environment clips what it executes, and the cost sees the unclipped action (HyperCRL's action penalty
does too).

``warm_iters`` is an option outside the reference: a plan given the previous step's plan, shifted by one step
(``shift``), starts from it as the mean (std init_std again) and refits only ``warm_iters`` times, which
cuts the model rollouts per action from n_iters + 1 populations to warm_iters + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class CEMConfig:
    """CEM sizes; the defaults are HyperCRL's pusher values."""

    horizon: int = 20  # planned steps H
    n_samples: int = 500  # sequences per population K
    n_elites: int = 40  # lowest-cost sequences refitted on, E
    n_iters: int = 5  # refits I before the final best-of-K draw
    init_std: float = 1.0  # std of the N(0, std^2) every plan starts from, in raw action units
    warm_iters: int | None = None  # refits of a plan warm-started from the previous one (None: no warm start)

    def __post_init__(self) -> None:
        if not 1 <= self.n_elites <= self.n_samples:
            raise ValueError(f"n_elites={self.n_elites} must be in [1, n_samples={self.n_samples}]")
        if self.horizon < 1 or self.n_iters < 0 or self.init_std <= 0:
            raise ValueError(
                f"need horizon >= 1, n_iters >= 0, init_std > 0; got {self.horizon}, {self.n_iters}, "
                f"{self.init_std}"
            )
        if self.warm_iters is not None and self.warm_iters < 0:
            raise ValueError(f"warm_iters={self.warm_iters} must be >= 0 (or None: no warm start)")


@torch.no_grad()
def cem_plan(
    cost: Callable[[torch.Tensor], torch.Tensor],
    action_dim: int,
    config: CEMConfig,
    generator: torch.Generator | None = None,
    init_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """The best (H, A) action sequence found; ``cost`` maps (K, H, A) sequences to (K,) costs.

    ``init_mean`` (H, A): warm start from it with ``config.warm_iters`` refits (see the module docstring).
    """
    shape = (config.horizon, action_dim)
    if init_mean is None:
        mean, n_iters = torch.zeros(shape), config.n_iters
    else:
        if config.warm_iters is None:
            raise ValueError("a warm-started plan needs config.warm_iters")
        mean, n_iters = init_mean, config.warm_iters
    std = torch.full(shape, config.init_std)
    for _ in range(n_iters):
        samples = _sample(mean, std, config.n_samples, generator)  # (K, H, A)
        elites = samples[torch.topk(cost(samples), config.n_elites, largest=False).indices]  # (E, H, A)
        mean, std = elites.mean(0), elites.std(0, correction=0)
    samples = _sample(mean, std, config.n_samples, generator)
    return samples[torch.argmin(cost(samples))]


def shift(plan: torch.Tensor) -> torch.Tensor:
    """The (H, A) plan one step on: its tail, then a zero action (the prior mean) for the new last step."""
    return torch.cat([plan[1:], torch.zeros_like(plan[:1])])


def _sample(mean: torch.Tensor, std: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    eps = torch.randn((n, *mean.shape), generator=generator)
    return mean + std * eps
