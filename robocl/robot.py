"""The robot-env contract: what an env for a real arm provides so that ``robocl eval`` runs a policy on it.

A robot env is a gymnasium env with a dict observation. Its keys become store features by the rule every
robocl rollout applies, so a policy trained on a recording finds its inputs under the same names:

    =================  ==============================  ==========================================
    observation key    store feature                   value
    =================  ==============================  ==========================================
    ``state``          ``observation.state``           joint positions (float32, ``joint_names``)
    ``images.<cam>``   ``observation.images.<cam>``    camera frame, (H, W, 3) uint8; optional
    any key ``K``      ``observation.K``               anything else the policy reads
    ``instruction``    the episode's task              the instruction, for language policies
    =================  ==============================  ==========================================

(robocl's simulated arm tasks name theirs ``proprio``, ``object``, ``image_front``, ``image_wrist``, mapped to
``observation.state``, ``observation.object``, ``observation.images.front``/``wrist``.) A LeRobot dataset's
``observation.state`` and ``observation.images.laptop`` are therefore an env's ``state`` and
``images.laptop``. ``observation_names`` gives per-dimension names, recorded and checked like LeRobot's;
``camera_calibrations`` (from the rig's calibration: OpenCV intrinsics and hand-eye extrinsics) are recorded
with the fixed cameras' features, for policies that locate things in their frames (CO-RFT's
``detect_entity``, which also needs the tool's position in the state, named ``tcp.x``/``tcp.y``/``tcp.z``).

:class:`RobotEnv` implements the rest of the contract once:

- ``step`` clips every action to the joint limits and to ``max_delta`` per step away from the measured
  state before it reaches the motors, and returns at the policy's rate (``fps``; ``realtime=True`` sleeps
  out the rest of each control tick);
- ``info["success"]`` only where the robot can tell (``reports_success``): without it ``robocl eval``
  reports no success rate and ``--record`` stores the episodes' success as unknown;
- a safe stop: :meth:`stop` runs when a step raises, when the env closes and when an episode ends.

A subclass supplies the driver: :meth:`start_episode`, :meth:`read_state`, :meth:`read_cameras`,
:meth:`send_action`, :meth:`stop` and, if it can, :meth:`success`. ``examples/robot_arm.py`` is one to copy.
"""

from __future__ import annotations

import string
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from robocl.store import CameraCalibration


class RobotEnv(gym.Env, ABC):
    """A real (or stand-in) arm behind robocl's robot-env contract; see the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        *,
        robot: str,
        joint_names: Sequence[str],
        joint_low: Sequence[float],
        joint_high: Sequence[float],
        fps: float,
        cameras: Mapping[str, tuple[int, int]] | None = None,
        camera_calibrations: Mapping[str, CameraCalibration] | None = None,
        max_delta: float | None = None,
        task: str | None = None,
        reports_success: bool = True,
        terminate_on_success: bool = True,
        realtime: bool = True,
    ) -> None:
        """``cameras``: name -> (height, width); ``camera_calibrations``: name -> the calibration of a fixed
        camera among them at that frame size; ``max_delta``: the largest change of a joint target per
        step (joint units); ``task``: the instruction given to language-conditioned policies."""
        low, high = np.asarray(joint_low, np.float32), np.asarray(joint_high, np.float32)
        if not len(joint_names) == len(low) == len(high) or not (low < high).all():
            raise ValueError(
                f"joint_names, joint_low and joint_high must have one entry per joint with low < high; got "
                f"{len(joint_names)} names, low {low.tolist()}, high {high.tolist()}"
            )
        self.robot, self.fps, self.task = robot, float(fps), task
        self.max_delta, self.realtime = max_delta, realtime
        self.reports_success, self.terminate_on_success = reports_success, terminate_on_success
        self.metadata = {**self.metadata, "render_fps": self.fps}  # robocl records steps at this rate
        self.cameras = dict(cameras or {})
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(low, high, dtype=np.float32)}
        for name, (h, w) in self.cameras.items():
            spaces[f"images.{name}"] = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
        if task is not None:
            spaces["instruction"] = gym.spaces.Text(max_length=max(len(task), 1), charset=string.printable)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(low, high, dtype=np.float32)
        self.observation_names = {"state": tuple(joint_names)}
        calibrations = dict(camera_calibrations or {})
        if set(calibrations) - set(self.cameras):
            raise ValueError(
                f"camera_calibrations name cameras {sorted(set(calibrations) - set(self.cameras))} that are "
                f"not in cameras {sorted(self.cameras)}"
            )
        self.camera_calibrations = {f"images.{name}": c.to_dict() for name, c in calibrations.items()}
        self._next_tick = 0.0

    # ------------------------------------------------------------------ the driver a subclass supplies
    @abstractmethod
    def start_episode(self, rng: np.random.Generator) -> None:
        """Bring the robot and the scene to an episode's start (a real arm: move home, wait for the
        operator to reset the scene); ``rng`` is the episode's seeded generator."""

    @abstractmethod
    def read_state(self) -> np.ndarray:
        """The measured joint positions, (n_joints,)."""

    def read_cameras(self) -> dict[str, np.ndarray]:
        """One (H, W, 3) uint8 frame per camera named in ``cameras``."""
        return {}

    @abstractmethod
    def send_action(self, action: np.ndarray) -> None:
        """Command joint targets, already clipped to the limits and to ``max_delta``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop safely: hold the current position (or release torque where holding is unsafe)."""

    def success(self) -> bool:
        """Whether the task is done now; asked only when ``reports_success`` is set."""
        raise NotImplementedError(f"{type(self).__name__} sets reports_success but defines no success()")

    # ------------------------------------------------------------------ gymnasium
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.start_episode(self.np_random)
        self._next_tick = time.monotonic() + 1.0 / self.fps
        return self._observe(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        try:
            self.send_action(self.safe_action(action))
            if self.realtime:  # the policy's rate: a step returns one control period after the last
                time.sleep(max(0.0, self._next_tick - time.monotonic()))
                self._next_tick = max(self._next_tick, time.monotonic()) + 1.0 / self.fps
            obs = self._observe()
            info = {"success": bool(self.success())} if self.reports_success else {}
        except BaseException:
            self.stop()
            raise
        terminated = bool(info.get("success")) and self.terminate_on_success
        if terminated:
            self.stop()
        return obs, 0.0, terminated, False, info

    def close(self) -> None:
        self.stop()
        super().close()

    def safe_action(self, action: np.ndarray) -> np.ndarray:
        """``action`` clipped to the joint limits and to ``max_delta`` around the measured state."""
        space = self.action_space
        target = np.clip(np.asarray(action, np.float32).reshape(space.shape), space.low, space.high)
        if self.max_delta is not None:
            state = self.read_state()
            target = np.clip(target, state - self.max_delta, state + self.max_delta)
        return target.astype(np.float32)

    def _observe(self) -> dict[str, Any]:
        obs: dict[str, Any] = {"state": np.asarray(self.read_state(), np.float32)}
        frames = self.read_cameras()
        missing = sorted(set(self.cameras) - set(frames))
        if missing:
            raise RuntimeError(f"{self.robot}: read_cameras() returned no frame for camera(s) {missing}")
        obs.update({f"images.{name}": frames[name] for name in self.cameras})
        if self.task is not None:
            obs["instruction"] = self.task
        return obs
