"""HyperCRL's fast planner against a plain CEM on predict_next, its warm start, and its model cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from robocl.algos.dynamics import HyperCRLConfig
from robocl.algos.hypercrl import HyperCRL, PlannerPolicy, PlanningModel


def _tiny(family: str, **overrides: object) -> HyperCRL:
    """A tiny model with one task's statistics and a few transitions (so updates have data)."""
    torch.manual_seed(0)
    config = HyperCRLConfig(
        family=family, n_tasks=1, hidden=(16, 16), hnet_hidden=(8,), horizon=4, n_samples=30, n_elites=5,
        n_iters=3, **overrides,
    )  # fmt: skip
    algo = HyperCRL(config)
    algo.start_task(0)
    n, d, a = 64, algo.state_dim, algo.action_dim
    state = torch.randn(n, d)
    algo.data[0].extend(state, torch.randn(n, a), state + 0.1 * torch.randn(n, d), [True] * n)
    algo.refresh_stats()
    return algo


def _reference_plan(
    algo: HyperCRL, state: torch.Tensor, reward_fn, generator: torch.Generator, init: torch.Tensor | None
) -> torch.Tensor:
    """CEM written out plainly: predict_next with the unfolded normalisation and the full output layer,
    batch-major rollouts, the reward per step, then elites, refit, and the final best-of-K draw."""
    cem, weights = algo.config.cem(), [w.detach() for w in algo.learner.weights(0)]
    mean = torch.zeros(cem.horizon, algo.action_dim) if init is None else init
    std = torch.full((cem.horizon, algo.action_dim), cem.init_std)
    n_iters = cem.n_iters if init is None else cem.warm_iters
    for it in range(n_iters + 1):
        samples = mean + std * torch.randn((cem.n_samples, cem.horizon, algo.action_dim), generator=generator)
        s, cost = state.expand(cem.n_samples, -1), torch.zeros(cem.n_samples)
        for h in range(cem.horizon):
            nxt = algo.predict_next(weights, 0, s, samples[:, h])
            cost -= reward_fn(s, samples[:, h], nxt)
            s = nxt
        if it == n_iters:
            return samples[torch.argmin(cost)]
        elites = samples[torch.topk(cost, cem.n_elites, largest=False).indices]
        mean, std = elites.mean(0), elites.std(0, correction=0)
    raise AssertionError("unreachable")


def _reward(prev: torch.Tensor, action: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """Any smooth function of all three: (..., D), (..., A), (..., D) -> (...)."""
    return -((nxt - 0.3) ** 2).sum(-1) - 0.1 * (action**2).sum(-1) + 0.05 * (prev * nxt).sum(-1)


@pytest.mark.parametrize("warm_iters", [0, 1])  # 0: the warm start that meets the 20 ms latency floor
@pytest.mark.parametrize("family", ["push", "door", "cheetah"])
def test_fast_planner_picks_the_reference_cem_plan(family: str, warm_iters: int) -> None:
    algo = _tiny(family, warm_iters=warm_iters)
    state = torch.randn(algo.state_dim)
    fast = algo.plan(0, state.numpy(), _reward, torch.Generator().manual_seed(7))
    slow = _reference_plan(algo, state, _reward, torch.Generator().manual_seed(7), None)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)
    # warm start: the previous plan shifted by one step, then warm_iters refits
    warm = algo.plan(0, state.numpy(), _reward, torch.Generator().manual_seed(8), previous=fast)
    init = torch.cat([fast[1:], torch.zeros(1, algo.action_dim)])
    torch.testing.assert_close(
        warm, _reference_plan(algo, state, _reward, torch.Generator().manual_seed(8), init), rtol=0, atol=1e-5
    )


def test_without_warm_iters_a_previous_plan_is_ignored() -> None:
    algo = _tiny("push")
    state = np.random.default_rng(0).standard_normal(algo.state_dim).astype(np.float32)
    cold = algo.plan(0, state, _reward, torch.Generator().manual_seed(1))
    again = algo.plan(0, state, _reward, torch.Generator().manual_seed(1), previous=cold)
    assert torch.equal(cold, again)


def _assert_cache_is_current(algo: HyperCRL) -> None:
    fresh = PlanningModel.build(
        [w.detach() for w in algo.learner.weights(0)], algo.stats[0], algo.codec, algo.state_dim
    )
    cached = algo.planning_model(0)
    for a, b in zip([cached.w_state, cached.w_action, cached.bias, *cached.layers],
                    [fresh.w_state, fresh.w_action, fresh.bias, *fresh.layers], strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["hypercrl", "finetune"])
def test_cached_planning_model_follows_updates_stats_and_loads(method: str) -> None:
    algo = _tiny("push", method=method)
    first = algo.planning_model(0)
    assert algo.planning_model(0) is first  # no hypernetwork forward between model changes
    algo.update({"idx": np.arange(32)})
    assert algo.planning_model(0) is not first
    _assert_cache_is_current(algo)
    n, d = 16, algo.state_dim
    algo.data[0].extend(5 + torch.randn(n, d), torch.randn(n, 2), torch.randn(n, d), [True] * n)
    algo.refresh_stats()  # new statistics change the folded first layer
    _assert_cache_is_current(algo)
    before = copy.deepcopy(algo.state_dict())
    algo.update({"idx": np.arange(32)})
    algo.load_state_dict(before)  # back to the saved model
    _assert_cache_is_current(algo)


def test_planner_policy_warm_starts_within_an_episode_only() -> None:
    calls: list[torch.Tensor | None] = []

    def plan(state: np.ndarray, previous: torch.Tensor | None) -> torch.Tensor:
        calls.append(previous)
        return torch.full((3, 2), float(len(calls)))

    policy = PlannerPolicy(plan)
    assert policy.predict(np.zeros(4)).tolist() == [1.0, 1.0]
    assert policy.predict(np.zeros((1, 4))).tolist() == [[2.0, 2.0]]  # the rollout engine's batch of one
    policy.reset()
    policy.predict(np.zeros(4))
    assert calls[0] is None and torch.equal(calls[1], torch.full((3, 2), 1.0)) and calls[2] is None
