"""A simulated stand-in for a 6-DoF LeRobot arm (SO-100 motor names, cameras "laptop" and "phone"), written
against robocl's robot-env contract (:mod:`robocl.robot`) so that it can be copied for a real one.

To run policies on your arm: copy this file into your project, keep the joint and camera names of your
recordings, and replace the driver methods (``start_episode``, ``read_state``, ``read_cameras``,
``send_action``, ``stop``; ``success`` only if the robot can tell) with your robot's SDK calls, e.g. LeRobot's
``robot.get_observation()`` / ``robot.send_action()`` / ``robot.disconnect()``. Then, from the folder that
holds it:

    PYTHONPATH=. robocl eval --policy runs/bc/checkpoints/bc/last --env robot_arm:SimArm-v0 --episodes 10

The stand-in: joint targets in degrees move each joint 60% of the way per step (a servo's lag); the task
is to bring the arm from a random start pose to the pose drawn as a red mark on both cameras.
"""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np

from robocl.robot import RobotEnv

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
LOW = (-150.0, -100.0, -150.0, -100.0, -150.0, 0.0)  # degrees; the gripper opening in percent
HIGH = (150.0, 100.0, 150.0, 100.0, 150.0, 100.0)
HOME = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 50.0], np.float32)
GOAL = np.array([30.0, 40.0, -60.0, 30.0, 0.0, 10.0], np.float32)
TOLERANCE = 5.0  # degrees: success once every arm joint (not the gripper) is this close to GOAL
CAMERA = (48, 64)  # (height, width)
LINKS = (16.0, 14.0, 7.0)  # upper arm, forearm, hand, in pixels


class SimArm(RobotEnv):
    """Stand-in arm; ``report_success=False`` behaves like a real arm that cannot tell success."""

    def __init__(
        self, *, realtime: bool = False, report_success: bool = True, terminate_on_success: bool = True
    ):
        super().__init__(
            robot="so100",
            joint_names=JOINTS,
            joint_low=LOW,
            joint_high=HIGH,
            fps=30,
            cameras={"laptop": CAMERA, "phone": CAMERA},
            max_delta=15.0,
            task="move the arm to the red mark",
            reports_success=report_success,
            terminate_on_success=terminate_on_success,
            realtime=realtime,
        )
        self._q = HOME.copy()

    # ------------------------------------------------------------------ driver (replace for a real arm)
    def start_episode(self, rng: np.random.Generator) -> None:
        self._q = (HOME + rng.uniform(-40, 40, size=6)).clip(LOW, HIGH).astype(np.float32)

    def read_state(self) -> np.ndarray:
        return self._q.copy()

    def read_cameras(self) -> dict[str, np.ndarray]:
        return {"laptop": _side_view(self._q), "phone": _top_view(self._q)}

    def send_action(self, action: np.ndarray) -> None:
        self._q = (self._q + 0.6 * (action - self._q)).astype(np.float32)

    def stop(self) -> None:
        """The stand-in holds its pose; a real arm would command its measured position, or disable torque."""

    def success(self) -> bool:
        return bool(np.all(np.abs(self._q[:5] - GOAL[:5]) < TOLERANCE))


def _joint_points(q: np.ndarray) -> np.ndarray:
    """Shoulder, elbow, wrist and fingertip in the arm's vertical plane: (4, 2) as (reach, height)."""
    angles = np.deg2rad(np.cumsum([q[1], q[2], q[3]]))
    steps = np.stack([np.sin(angles), np.cos(angles)], axis=1) * np.asarray(LINKS)[:, None]
    return np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)])


def _draw(image: np.ndarray, points: np.ndarray, color: tuple[int, int, int]) -> None:
    """A polyline through ``points`` (x, y pixels), clipped to the image."""
    h, w = image.shape[:2]
    for a, b in itertools.pairwise(points):
        for t in np.linspace(0.0, 1.0, 40):
            x, y = np.rint(a + t * (b - a)).astype(int)
            if 0 <= x < w and 0 <= y < h:
                image[y, x] = color


def _side_view(q: np.ndarray) -> np.ndarray:
    image = np.full((*CAMERA, 3), 60, np.uint8)
    base = np.array([CAMERA[1] / 2, CAMERA[0] - 4])
    for pose, color in ((GOAL, (220, 40, 40)), (q, (230, 230, 230))):
        reach_height = _joint_points(pose)
        _draw(image, base + reach_height * [1, -1], color)
    return image


def _top_view(q: np.ndarray) -> np.ndarray:
    image = np.full((*CAMERA, 3), 90, np.uint8)
    center = np.array([CAMERA[1] / 2, CAMERA[0] / 2])
    for pose, color in ((GOAL, (220, 40, 40)), (q, (230, 230, 230))):
        reach = _joint_points(pose)[:, 0]
        pan = np.deg2rad(pose[0])
        _draw(image, center + np.outer(reach, [np.cos(pan), np.sin(pan)]), color)
    return image


gym.register("SimArm-v0", entry_point=SimArm, max_episode_steps=60)
