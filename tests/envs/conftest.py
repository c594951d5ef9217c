"""Shared set-up for the robocl task tests: headless rendering and small rollout helpers (as fixtures)."""

from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend when first imported; EGL renders without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest


def _expert_successes(env_id: str, seeds: range, **make_kwargs: Any) -> int:
    from robocl_envs.experts import make_expert

    env = gym.make(env_id, **make_kwargs)
    expert = make_expert(env, seed=0)
    n_success = 0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        expert.reset()
        terminated = truncated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(expert(obs))
        n_success += bool(info["success"])
    env.close()
    return n_success


def _rollout(env: gym.Env[Any, Any], seed: int, n_steps: int) -> tuple[list[Any], list[float]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    observations, rewards = [obs], []
    for _ in range(n_steps):
        obs, reward, _, _, _ = env.step(env.action_space.sample())
        observations.append(obs)
        rewards.append(float(reward))
    return observations, rewards


@pytest.fixture
def expert_successes() -> Callable[..., int]:
    """``f(env_id, seeds, **make_kwargs)``: episodes in which the clean scripted expert ends in success."""
    return _expert_successes


@pytest.fixture
def rollout() -> Callable[..., tuple[list[Any], list[float]]]:
    """``f(env, seed, n_steps)``: observations and rewards of seeded random actions after a seeded reset."""
    return _rollout


@pytest.fixture(scope="session")
def can_render() -> bool:
    """Whether an offscreen OpenGL context can be made here; image tests skip otherwise."""
    import mujoco

    try:
        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
        mujoco.Renderer(model, 16, 16).close()
    except Exception:  # any GL failure means no offscreen rendering on this machine
        return False
    return True
