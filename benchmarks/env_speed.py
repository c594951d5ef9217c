"""Simulation throughput of every robocl task, with gymnasium's Pusher-v5 measured beside it as a reference.

For each env id: control steps per second with random actions (episodes reset as they end, resets included;
the fastest of ``--repeats`` timed windows, the one least disturbed on a shared machine),
state-only and with one 128x128 RGB camera rendered after every step; each in one env in this process, and
in an ``AsyncVectorEnv`` of 2 worker processes (numbers are total steps over both workers). The camera is
rendered by the benchmark itself (``mujoco.Renderer``, the model's "front" camera, else its first, else the
free camera) so every env pays for exactly one frame per step. The goal is >= 1,000 state-only control steps
per second per core.

robosuite's Lift and gymnasium-robotics' FetchPush would be further references, but neither package is a
robocl dependency; the run records why they were left out.

    python -m benchmarks.env_speed                         # every id, a few minutes on 2 cores
    python -m benchmarks.env_speed --steps 300 --repeats 1 --ids robocl/PickPlace-v0,Pusher-v5
"""

from __future__ import annotations

import os

# MuJoCo picks its OpenGL backend when first imported; EGL renders without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

import argparse
import functools
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import robocl_envs

from benchmarks.common import markdown_table, run_info, write_result

CAMERA_SIZE = 128
N_WORKERS = 2
GOAL_STEPS_PER_CORE = 1000.0
REFERENCE_IDS = ["Pusher-v5"]
# Third-party references this script has no driver for: name -> the package they need.
NOT_MEASURED = {"robosuite Lift": "robosuite", "gymnasium-robotics FetchPush": "gymnasium_robotics"}


class OneCamera(gym.Wrapper):
    """Renders one square RGB frame of the MuJoCo scene after every reset and step, returned in ``info``.

    In ``info`` rather than the observation so every observation type works; a vector env still ships the
    frames back to the parent process, as a collector would.
    """

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        model = env.unwrapped.model
        cameras = [model.camera(i).name for i in range(model.ncam)]
        self._camera: str | int = "front" if "front" in cameras else (cameras[0] if cameras else -1)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._renderer = mujoco.Renderer(model, size, size)

    def _frame(self) -> np.ndarray:
        self._renderer.update_scene(self.env.unwrapped.data, self._camera)
        return self._renderer.render()

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "frame": self._frame()}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "frame": self._frame()}

    def close(self) -> None:
        self._renderer.close()
        super().close()


def make_env(env_id: str, camera: bool) -> gym.Env:
    """Module-level so spawned vector-env workers can unpickle it."""
    env = gym.make(env_id)
    return OneCamera(env, CAMERA_SIZE) if camera else env


def _best_rate(step: Callable[[], Any], n_steps: int, repeats: int) -> float:
    """Steps per second of the fastest of ``repeats`` timed windows of ``n_steps`` calls of ``step()``.

    The fastest window is the one least disturbed by other processes on a shared machine.
    """
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        best = max(best, n_steps / (time.perf_counter() - start))
    return best


def steps_per_second_single(env_id: str, camera: bool, n_steps: int, repeats: int, seed: int) -> float:
    env = make_env(env_id, camera)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    env.step(env.action_space.sample())  # first render creates the GL context: keep it out of the timing

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    rate = _best_rate(step, n_steps, repeats)
    env.close()
    return rate


def steps_per_second_vector(env_id: str, camera: bool, n_steps: int, repeats: int, seed: int) -> float:
    """Total steps per second over the workers (each call steps every worker once)."""
    # Spawned workers: this process has already rendered, and a forked child would inherit that GL state.
    vec = gym.vector.AsyncVectorEnv(
        [functools.partial(make_env, env_id, camera)] * N_WORKERS, context="spawn"
    )
    vec.action_space.seed(seed)
    vec.reset(seed=seed)
    vec.step(vec.action_space.sample())  # worker start-up and first render are not throughput
    # The default autoreset restarts finished sub-envs.
    rate = _best_rate(lambda: vec.step(vec.action_space.sample()), max(1, n_steps // N_WORKERS), repeats)
    vec.close()
    return rate * N_WORKERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="state-only steps per timed window")
    parser.add_argument(
        "--camera-steps", type=int, default=100, help="steps per timed window with the camera"
    )
    parser.add_argument("--ids", help="comma-separated env ids (default: every robocl task + references)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed windows per measurement; the best counts"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ids = args.ids.split(",") if args.ids else [i for ids in robocl_envs.FAMILIES.values() for i in ids]
    if not args.ids:
        ids += REFERENCE_IDS
    skipped = {
        name: "not installed"
        if importlib.util.find_spec(package) is None
        else "installed, but no driver here"
        for name, package in NOT_MEASURED.items()
    }

    # The machine may be shared: the 1-minute load average before and after shows whether others competed.
    load_before = os.getloadavg()[0]
    results = []
    for env_id in ids:
        row: dict[str, Any] = {"env_id": env_id}
        try:
            for camera, n_steps in ((False, args.steps), (True, args.camera_steps)):
                mode = "camera" if camera else "state"
                row[f"{mode}_1_env"] = steps_per_second_single(
                    env_id, camera, n_steps, args.repeats, args.seed
                )
                row[f"{mode}_{N_WORKERS}_workers"] = steps_per_second_vector(
                    env_id, camera, n_steps, args.repeats, args.seed
                )
            row["meets_goal"] = row["state_1_env"] >= GOAL_STEPS_PER_CORE
        except Exception as err:  # one broken env must not throw away the other measurements
            row["error"] = f"{type(err).__name__}: {err}"
        print(
            f"{env_id}: "
            + ", ".join(
                f"{k} {v:,.0f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in row.items()
                if k != "env_id"
            ),
            flush=True,
        )
        results.append(row)

    info = run_info(args.seed)
    info["versions"].update(mujoco=mujoco.__version__, gymnasium=gym.__version__)
    payload = {
        **info,
        "mujoco_gl": os.environ.get("MUJOCO_GL", ""),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "settings": {"steps": args.steps, "camera_steps": args.camera_steps, "repeats": args.repeats,
                     "camera_size": CAMERA_SIZE, "workers": N_WORKERS,
                     "goal_state_steps_per_core": GOAL_STEPS_PER_CORE},
        "skipped": skipped,
        "results": results,
    }  # fmt: skip
    path = write_result("env_speed", payload)
    columns = {
        "state_1_env": "state, 1 env",
        f"state_{N_WORKERS}_workers": f"state, {N_WORKERS} workers",
        "camera_1_env": f"camera {CAMERA_SIZE}px, 1 env",
        f"camera_{N_WORKERS}_workers": f"camera, {N_WORKERS} workers",
    }
    goal = f">= {GOAL_STEPS_PER_CORE:,.0f}/s/core"
    rows = [
        [
            r["env_id"],
            *(r.get(key, "error") for key in columns),
            {True: "yes", False: "no"}.get(r.get("meets_goal"), "-"),
        ]
        for r in results
    ]
    print(
        f"\nControl steps per second ({info['machine']}, commit {info['commit']}, seed {args.seed}, "
        f"load average {load_before:.1f} before, {payload['load_average_1min']['after']:.1f} after):\n"
    )
    print(markdown_table(["env id", *columns.values(), goal], rows))
    for name, why in skipped.items():
        print(f"\nnot measured: {name} ({why})")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
