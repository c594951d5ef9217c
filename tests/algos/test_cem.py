"""The batched CEM planner: it finds a known optimum and validates its sizes."""

from __future__ import annotations

import pytest
import torch

from robocl.algos.cem import CEMConfig, cem_plan


def test_cem_finds_the_minimum_of_a_quadratic() -> None:
    target = torch.tensor([[0.5, -0.3], [1.2, 0.0], [-0.7, 0.4]])  # (H, A)
    calls = []

    def cost(actions: torch.Tensor) -> torch.Tensor:  # (K, H, A) -> (K,)
        calls.append(actions.shape)
        return ((actions - target) ** 2).sum((1, 2))

    config = CEMConfig(horizon=3, n_samples=300, n_elites=30, n_iters=8, init_std=1.0)
    best = cem_plan(cost, 2, config, torch.Generator().manual_seed(0))
    assert best.shape == (3, 2)
    torch.testing.assert_close(best, target, atol=0.05, rtol=0)
    # n_iters refits plus the final best-of-K draw, each one batched call over the whole population
    assert calls == [torch.Size([300, 3, 2])] * 9


def test_cem_is_reproducible_from_its_generator() -> None:
    config = CEMConfig(horizon=2, n_samples=20, n_elites=4, n_iters=2)

    def cost(a: torch.Tensor) -> torch.Tensor:
        return a.abs().sum((1, 2))

    first = cem_plan(cost, 1, config, torch.Generator().manual_seed(3))
    assert torch.equal(first, cem_plan(cost, 1, config, torch.Generator().manual_seed(3)))


def test_cem_config_rejects_more_elites_than_samples() -> None:
    with pytest.raises(ValueError, match="n_elites=50"):
        CEMConfig(n_samples=10, n_elites=50)
