"""An env whose worker process dies mid-episode, as one killed by the OOM killer would (see test_cli)."""

import multiprocessing
import os
import signal

import gymnasium as gym
from gymnasium.envs.classic_control import PendulumEnv


class DyingArm(PendulumEnv):
    def __init__(self) -> None:
        super().__init__()
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        if self.n_steps == 3 and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


gym.register("DyingArm-v0", entry_point=DyingArm, max_episode_steps=10)
