"""Stands in for a user's package that registers a real-robot env on import (see test_user_env)."""

import gymnasium as gym

gym.register("UserArm-v0", entry_point="gymnasium.envs.classic_control:PendulumEnv", max_episode_steps=15)
