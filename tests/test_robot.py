"""The real-robot path, end to end, on the example arm a user copies (examples/robot_arm.py): a LeRobot v3
recording without success information -> ingest -> mark success -> train -> robocl eval --env module:Id
-> --record back into a store; and the checks that stop a policy on an env it does not fit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robocl import cli
from robocl.store import TrajectoryStore
from tests.store.convert.builders import write_lerobot_recording

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robot_arm.py"
TINY_CO_RFT = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--horizon", "4", "--batch-size", "16"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder holding their copy of the example, importable as PYTHONPATH=. makes it."""
    shutil.copy(EXAMPLE, tmp_path / "robot_arm.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("robot_arm", None)  # the next project imports (and registers) its own copy
    gym.registry.pop("SimArm-v0", None)


def teleoperate(n_episodes: int) -> list[dict[str, np.ndarray]]:
    """Demonstrations as LeRobot's recorder takes them on the arm: the leader arm's joint targets (a noisy
    operator heading for the goal pose), the follower's joints and both cameras before each action."""
    import robot_arm

    env = gym.make("SimArm-v0")
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(n_episodes):
        obs, _ = env.reset(seed=e)
        steps: dict[str, list[np.ndarray]] = {}
        done = False
        while not done:
            action = (robot_arm.GOAL + rng.normal(0, 2, 6)).astype(np.float32)
            frame = {
                "observation.state": obs["state"],
                "observation.images.laptop": obs["images.laptop"],
                "observation.images.phone": obs["images.phone"],
                "action": action,
            }
            for key, value in frame.items():
                steps.setdefault(key, []).append(value)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        episodes.append({k: np.stack(v) for k, v in steps.items()})
    env.close()
    return episodes


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_example_arm_meets_the_gymnasium_and_robot_contracts(project):
    import robot_arm

    env = robot_arm.SimArm()
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    # Safety: a target far from the measured pose moves at most max_delta per step, within the limits.
    far = np.array(robot_arm.HIGH, np.float32) * 10
    assert np.abs(env.safe_action(far) - env.read_state()).max() <= env.max_delta + 1e-4
    assert (env.safe_action(far) <= np.array(robot_arm.HIGH)).all()


def test_from_a_lerobot_recording_to_the_robot_and_back(project, capsys):
    import robot_arm

    recording = write_lerobot_recording(
        project / "so100_recording",
        teleoperate(6),
        task="move the arm to the red mark",
        joint_names=list(robot_arm.JOINTS),
        fps=30,
        robot_type="so100",
    )
    code, out, _ = run(capsys, "ingest", "lerobot", str(recording), "demos.zarr", "--quiet")
    assert code == 0 and "success unknown for 6 episodes" in out
    assert "success      unknown" in run(capsys, "info", "demos.zarr")[1]

    # Offline RL needs success: refused before stage 1 trains anything, with the fix in the message.
    code, _, err = run(
        capsys, "train", "co-rft", "--data", "demos.zarr", "--run-dir", "runs/co-rft", *TINY_CO_RFT
    )
    assert code == 2 and err.count("\n") == 1 and "robocl edit demos.zarr --episodes" in err
    assert not (project / "runs" / "co-rft" / "il").exists()
    assert run(capsys, "edit", "demos.zarr", "--episodes", "all", "--success", "true")[0] == 0
    code, out, _ = run(
        capsys, "train", "co-rft", "--data", "demos.zarr", "--run-dir", "runs/co-rft", *TINY_CO_RFT,
        "--il-updates", "4", "--rl-updates", "4", "--eval-episodes", "0",
    )  # fmt: skip
    assert code == 0 and "rl checkpoint" in out

    # Imitation on the proprioception (the store's only state feature, no simulator names needed).
    args = ["--data", "demos.zarr", "--run-dir", "runs/bc", "--n-updates", "150", "--batch-size", "64"]
    assert run(capsys, "train", "bc", *args)[0] == 0
    header = json.loads((project / "runs/bc/checkpoints/bc/last/config.json").read_text())
    assert header["config"]["obs_keys"] == ["observation.state"]
    world = header["spec"]["world"]
    assert world["robot"] == "so100" and world["fps"] == 30 and world["env_id"] is None
    assert world["observation"]["observation.state"]["names"] == list(robot_arm.JOINTS)

    code, out, _ = run(
        capsys, "eval", "--policy", "runs/bc/checkpoints/bc/last", "--env", "robot_arm:SimArm-v0",
        "--episodes", "3", "--record", "on_robot.zarr", "--video",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[0] == "robot_arm:SimArm-v0"  # no "[seen]": the arm has no position sets
    out_dir = project / "runs/bc/checkpoints/bc/eval/last_SimArm-v0"
    info = json.loads((out_dir / "eval_info.json").read_text())
    assert info["positions"] is None and f"success rate  {info['aggregate']['success_rate']:.1%}" in out
    assert sorted(p.name for p in (out_dir / "videos").iterdir()) == ["episode_000.mp4", "episode_001.mp4"]
    with TrajectoryStore.open("on_robot.zarr") as store:
        assert store.n_episodes == 3 and store.success_known.all() and store.tag_names == ["eval"]
        assert {"observation.state", "observation.images.laptop", "observation.images.phone"} <= set(
            store.features
        )
        assert store.features["observation.state"].names == robot_arm.JOINTS

    # An arm that cannot tell success: no success rate claimed, and the recording says "unknown".
    code, out, _ = run(
        capsys, "eval", "--policy", "runs/bc/checkpoints/bc/last", "--env", "robot_arm:SimArm-v0",
        "--episodes", "2", "--env-kwargs", '{"report_success": false}', "--record", "blind.zarr",
    )  # fmt: skip
    assert code == 0 and "success rate" not in out and "cycle time" not in out
    with TrajectoryStore.open("blind.zarr") as store:
        assert not store.success_known.any() and "success" not in store.features


def test_a_policy_on_an_env_it_does_not_fit_is_stopped_before_the_first_step(project, capsys):
    from robocl.collect import collect

    collect("robocl/PickPlace-v0", 2, "pick.zarr", progress=False).close()
    args = ["--data", "pick.zarr", "--run-dir", "runs/bc", "--n-updates", "2", "--batch-size", "8"]
    assert run(capsys, "train", "bc", *args, "--obs-keys", "observation.state")[0] == 0
    policy = ["--policy", "runs/bc/checkpoints/bc/last", "--episodes", "1"]
    code, _, err = run(capsys, "eval", *policy, "--env", "robot_arm:SimArm-v0")
    assert code == 2 and err.count("\n") == 1
    for mismatch in (
        "env: expected robocl/PickPlace-v0, got robot_arm:SimArm-v0",
        "robot: expected panda, got so100",
        "fps: expected 10, got 30",
        "action: expected (5,) float32, got (6,) float32",
        "observation.state: expected (",
    ):
        assert mismatch in err
    # The arm's proprioception fits any arm task: only the env id tells that this policy learnt another task.
    code, _, err = run(capsys, "eval", *policy, "--env", "robocl/Door-Pull-v0")
    assert code == 2 and err.endswith(
        "does not fit robocl/Door-Pull-v0: env: expected robocl/PickPlace-v0, got robocl/Door-Pull-v0 "
        "(--force runs it anyway)\n"
    )
    assert run(capsys, "eval", *policy, "--env", "robocl/Door-Pull-v0", "--force")[0] == 0


def test_a_robot_env_records_its_camera_calibrations():
    """The rig's calibration of a fixed camera is recorded with its feature, for policies that locate
    things in its frames; a calibration of a camera the env does not have is refused."""
    from robocl.features import FeatureObs
    from robocl.robot import RobotEnv
    from robocl.store import CameraCalibration

    calibration = CameraCalibration(
        (300.0, 300.0, 159.5, 119.5), (0.8, 0.0, 0.6), ((0, -1, 0), (-1, 0, 0), (0, 0, -1))
    )

    class Arm(RobotEnv):
        def __init__(self, **calibrations):
            super().__init__(
                robot="arm", joint_names=["j0"], joint_low=[-1], joint_high=[1], fps=10,
                cameras={"top": (240, 320), "wrist": (240, 320)}, **calibrations,
            )  # fmt: skip

        start_episode = read_state = send_action = stop = lambda self, *args: None

    features = FeatureObs(Arm(camera_calibrations={"top": calibration})).features()
    assert features["observation.images.top"].camera == calibration
    assert features["observation.images.wrist"].camera is None
    with pytest.raises(ValueError, match=r"camera_calibrations name cameras \['front'\] that are not in"):
        Arm(camera_calibrations={"front": calibration})
