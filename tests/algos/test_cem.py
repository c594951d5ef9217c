"""The batched CEM planner: it finds a known optimum, warm-starts, and validates its sizes."""

from __future__ import annotations

import pytest
import torch

from robocl.algos.cem import CEMConfig, cem_plan, shift


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


def test_warm_start_refits_warm_iters_times_from_the_given_mean() -> None:
    target = torch.tensor([[0.5], [-0.5]])
    calls = []

    def cost(actions: torch.Tensor) -> torch.Tensor:
        calls.append(actions)
        return ((actions - target) ** 2).sum((1, 2))

    config = CEMConfig(horizon=2, n_samples=400, n_elites=40, n_iters=6, init_std=0.1, warm_iters=1)
    best = cem_plan(cost, 1, config, torch.Generator().manual_seed(0), init_mean=target)
    assert len(calls) == 2  # one refit and the final draw, not n_iters + 1 populations
    torch.testing.assert_close(calls[0].mean(0), target, atol=0.02, rtol=0)  # sampled around the given mean
    torch.testing.assert_close(best, target, atol=0.05, rtol=0)
    assert torch.equal(shift(torch.tensor([[1.0], [2.0]])), torch.tensor([[2.0], [0.0]]))
    with pytest.raises(ValueError, match="warm_iters"):
        cem_plan(cost, 1, CEMConfig(horizon=2), init_mean=target)
