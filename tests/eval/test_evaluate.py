"""The evaluator on a scripted policy in a real env, checked against a hand-run loop."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
import robocl_envs  # noqa: F401  (registers the robocl/ ids)
from robocl_envs.experts import make_expert

from robocl.eval.evaluate import evaluate
from robocl.eval.rollout import actor_seed, rollout_episodes
from robocl.eval.video import count_frames
from robocl.store import TrajectoryStore
from robocl.store.validate import validate_store

ENV = "robocl/PickPlace-v0"


def hand_run(seed: int) -> tuple[bool, float | None, float]:
    """The same episode stepped by hand: success, cycle time (s) and return."""
    env = gym.make(ENV, terminate_on_success=True)
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, seed=actor_seed(seed))
    expert.reset()
    total, dt = 0.0, env.unwrapped.dt
    for t in range(10_000):
        obs, reward, terminated, truncated, info = env.step(expert(obs))
        total += float(reward)
        if info["success"]:
            return True, (t + 1) * dt, total
        if terminated or truncated:
            return False, None, total
    raise AssertionError("episode never ended")


def test_success_and_cycle_time_equal_a_hand_run(tmp_path):
    result = evaluate(
        "scripted",
        ENV,
        n_episodes=3,
        out_dir=tmp_path / "ev",
        seed=500,
        num_envs=1,
        video=True,
        n_videos=1,
        record=tmp_path / "rec.zarr",
        progress=False,
    )
    for row in result["episodes"]:
        success, cycle, ret = hand_run(500 + row.episode)
        assert row.success == success
        assert row.cycle_time == pytest.approx(cycle)
        assert row.episode_return == pytest.approx(ret, rel=1e-5)
    summary = result["summary"]
    assert summary["success_rate"] == pytest.approx(np.mean([r.success for r in result["episodes"]]))
    cycles = [r.cycle_time for r in result["episodes"] if r.success]
    assert summary["cycle_time_mean"] == pytest.approx(np.mean(cycles))
    assert (tmp_path / "ev" / "eval_info.json").exists()
    # the first episode's video: one frame per step plus the final observation
    length = result["episodes"][0].length
    assert count_frames(tmp_path / "ev" / "videos" / "episode_000.mp4") == length + 1
    # --record: a valid store with every evaluation episode tagged "eval"
    assert validate_store(tmp_path / "rec.zarr").ok
    store = TrajectoryStore.open(tmp_path / "rec.zarr")
    assert store.n_episodes == 3 and store.tag_names[:1] == ["eval"]
    assert store.episode(0).task.startswith("put the")


def test_parallel_workers_give_the_same_numbers(tmp_path):
    one = evaluate("scripted", ENV, n_episodes=2, out_dir=tmp_path / "a", seed=900, progress=False)
    two = evaluate(
        "scripted", ENV, n_episodes=2, out_dir=tmp_path / "b", seed=900, num_envs=2, progress=False
    )
    assert [r.cycle_time for r in one["episodes"]] == [r.cycle_time for r in two["episodes"]]


def test_a_user_registered_env_is_evaluated_by_module_and_id(tmp_path):
    result = evaluate(
        "random",
        "tests.eval.user_robot:UserArm-v0",
        n_episodes=2,
        out_dir=tmp_path,
        num_envs=2,
        progress=False,
    )
    assert [r.length for r in result["episodes"]] == [15, 15]
    # Pendulum reports no success and has no start-position sets: the report claims neither.
    assert result["summary"]["success_rate"] is None and [r.success for r in result["episodes"]] == [None] * 2
    assert result["table"].splitlines()[0] == "tests.eval.user_robot:UserArm-v0"
    assert "success rate" not in result["table"] and "cycle time" not in result["table"]
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg'"):
        evaluate("random", "no_such_pkg:Arm-v0", n_episodes=1, out_dir=tmp_path / "x", progress=False)


class CameraPolicy:
    """Reads the front camera, as an image policy's ``obs_keys`` say; records the frame shapes it gets."""

    obs_keys = ("observation.state", "observation.images.front")

    def __init__(self) -> None:
        self.frames: list[tuple[int, ...]] = []

    def reset(self) -> None:
        pass

    def predict(self, obs):
        self.frames.append(np.asarray(obs["observation.images.front"]).shape)
        return np.zeros(5, np.float32)


def test_a_camera_policy_gets_frames_without_video(tmp_path):
    policy = CameraPolicy()
    result = evaluate(
        policy, "robocl/PickPlace-v0", n_episodes=1, max_steps=3, out_dir=tmp_path, progress=False
    )
    assert result["summary"]["n_episodes"] == 1
    assert policy.frames and all(shape[-3:] == (96, 96, 3) for shape in policy.frames)


class SmallFramePolicy(CameraPolicy):
    """A camera policy that learnt from 48x48 frames, as its ``obs_shapes`` say."""

    def __init__(self) -> None:
        super().__init__()
        self.obs_shapes = {"observation.state": (24,), "observation.images.front": (48, 48, 3)}


def test_a_camera_policy_gets_frames_at_the_size_it_learnt_from(tmp_path):
    policy = SmallFramePolicy()
    evaluate(policy, "robocl/PickPlace-v0", n_episodes=1, max_steps=3, out_dir=tmp_path, progress=False)
    assert policy.frames and all(shape[-3:] == (48, 48, 3) for shape in policy.frames)


def test_a_frame_size_asked_for_that_the_policy_did_not_learn_is_an_error():
    with pytest.raises(ValueError, match=r"image_size=64, but the policy reads 48x48 frames"):
        next(rollout_episodes(ENV, 1, policy=SmallFramePolicy(), image_size=64, progress=False))
