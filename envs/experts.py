"""Scripted experts for the robocl Panda tasks, with knobs that degrade them for mixed-quality datasets.

Each expert is a small state machine over privileged state (the ``"object"`` observation and, where the
observation lacks something such as the object's shape, ``env.unwrapped``). It outputs the env's own action
(end-effector deltas in [-1, 1] plus the gripper), so recorded demonstrations replay exactly.

Degradation knobs (all default to a clean expert):

- ``noise``: std of Gaussian noise added to every action dimension (then clipped to [-1, 1]).
- ``hesitation``: per-step probability of starting a pause of 2-5 steps with zero motion (gripper held).
- ``detour``: probability that a free-space leg first visits a random waypoint near its midpoint.

Usage::

    expert = make_expert(env, noise=0.1, seed=0)
    obs, _ = env.reset(seed=0)
    expert.reset()
    action = expert(obs)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from robocl_envs.door import UNLOCK, DoorEnv
from robocl_envs.panda import POS_SCALE, ROT_SCALE, PandaEnv
from robocl_envs.pick_place import SHAPES, PickPlaceEnv
from robocl_envs.push import HALF, PUSH_Z, PushEnv

OPEN, CLOSED = -1.0, 1.0


def _wrap(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` wrapped into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


class Expert:
    """Base class: subclasses implement ``_act(obs)`` (the clean action) and ``_reset_plan()``."""

    def __init__(
        self,
        env: gym.Env[Any, Any],
        *,
        noise: float = 0.0,
        hesitation: float = 0.0,
        detour: float = 0.0,
        seed: int = 0,
    ) -> None:
        for name, value in (("noise", noise), ("hesitation", hesitation), ("detour", detour)):
            if value < 0 or (name != "noise" and value > 1):
                raise ValueError(f"{name} must be >= 0 (and <= 1 for probabilities), got {value}")
        self.env, self.task = env, env.unwrapped
        if not isinstance(self.task, PandaEnv) or self.task.action_mode != "ee_delta":
            raise ValueError("scripted experts drive the Panda tasks in action_mode='ee_delta'")
        self.noise, self.hesitation, self.detour = noise, hesitation, detour
        self.rng = np.random.default_rng(seed)
        self.action_dim = int(np.prod(env.action_space.shape))
        self.reset()

    def reset(self) -> None:
        """Forget the plan; call at every episode start."""
        self._pause = 0
        self._legs: dict[str, np.ndarray | None] = {}
        self._reset_plan()

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        action = self._act(obs)
        if self._pause == 0 and self.hesitation > 0 and self.rng.random() < self.hesitation:
            self._pause = int(self.rng.integers(2, 6))
        if self._pause > 0:
            self._pause -= 1
            # Motion stops; a gripper channel (the last, when the action has one) keeps its command.
            action[: self.action_dim - 1 if self.action_dim >= 5 else self.action_dim] = 0.0
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ------------------------------------------------------------------------------------------ helpers
    def _reset_plan(self) -> None:
        raise NotImplementedError

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def _via(self, leg: str, ee: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Where to steer on this leg: a pending detour waypoint, else ``target``."""
        if leg not in self._legs:
            waypoint = None
            if self.detour > 0 and self.rng.random() < self.detour:
                offset = self.rng.uniform(-1.0, 1.0, size=3) * np.array([0.08, 0.08, 0.03])
                waypoint = (ee + target) / 2 + offset + np.array([0.0, 0.0, 0.05])
                waypoint[2] = max(waypoint[2], target[2], ee[2])  # detours never dive towards the table
            self._legs[leg] = waypoint
        waypoint = self._legs[leg]
        if waypoint is not None and np.linalg.norm(waypoint - ee) < 0.02:
            self._legs[leg] = waypoint = None
        return target if waypoint is None else waypoint

    @staticmethod
    def _move(
        ee: np.ndarray,
        target: np.ndarray,
        twist: float = 0.0,
        twist_target: float = 0.0,
        gripper: float = OPEN,
    ) -> np.ndarray:
        """A 5-d action steering the tool towards ``target`` and the twist towards ``twist_target``."""
        delta = np.clip((target - ee) / POS_SCALE, -1.0, 1.0)
        turn = np.clip(_wrap(twist_target - twist) / ROT_SCALE, -1.0, 1.0)
        return np.array([*delta, turn, gripper])


class PickPlaceExpert(Expert):
    """Hover over the object with the fingers across it, descend, grasp, lift, carry, lower and release.

    Retries from the hover phase when a lift comes up empty or the object falls off during transport.
    """

    HOVER = 0.10  # m above the object centre
    CARRY_Z = 0.15  # m, transport height of the tool

    def _reset_plan(self) -> None:
        self.phase, self.count = "approach", 0

    def _grasp_twist(self, obj_quat: np.ndarray, twist: float) -> float:
        period = SHAPES[self.task.shape][2]
        if period >= 2 * np.pi:  # round: any twist grasps it
            return twist
        w, x, y, z = obj_quat
        yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        # With the tool pointing down, twist theta closes the fingers along world heading -pi/2 - theta, so
        # they cross the object's short side at theta = -yaw (mod the shape's symmetry period); take the
        # nearest.
        return twist + _wrap(-yaw - twist, period)

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        proprio, state = obs["proprio"].astype(float), obs["object"].astype(float)
        ee, width = proprio[14:17], proprio[23]
        twist = float(np.arctan2(proprio[22], proprio[21]))
        obj, zone = state[0:3], state[10:13]
        half_height = SHAPES[self.task.shape][1][-1]
        self.count += 1
        if self.phase == "approach":
            target = np.array([*obj[:2], obj[2] + self.HOVER])
            twist_target = self._grasp_twist(state[3:7], twist)
            steer = self._via("approach", ee, target)
            if (
                steer is target
                and np.linalg.norm(target[:2] - ee[:2]) < 0.01
                and abs(target[2] - ee[2]) < 0.03
                and abs(_wrap(twist_target - twist)) < 0.08
            ):
                self.phase, self.count = "descend", 0
            return self._move(ee, steer, twist, twist_target, OPEN)
        if self.phase == "descend":
            target = np.array([*obj[:2], max(obj[2], 0.015)])
            if abs(target[2] - ee[2]) < 0.008 or self.count > 15:
                self.phase, self.count = "grasp", 0
            return self._move(ee, target, twist, self._grasp_twist(state[3:7], twist), OPEN)
        if self.phase == "grasp":
            if self.count >= 4:
                self.phase, self.count = "lift", 0
            return self._move(ee, ee, gripper=CLOSED)
        if self.phase == "lift":
            if ee[2] > self.CARRY_Z - 0.03:
                held = obj[2] > ee[2] - 0.05 and width > 0.01
                self.phase = "transport" if held else "retry"
                self.count = 0
            return self._move(ee, np.array([*ee[:2], self.CARRY_Z]), gripper=CLOSED)
        if self.phase == "transport":
            if obj[2] < ee[2] - 0.06:  # dropped on the way
                self.phase, self.count = "retry", 0
            target = np.array([*zone[:2], self.CARRY_Z])
            steer = self._via("transport", ee, target)
            if steer is target and np.linalg.norm(target[:2] - ee[:2]) < 0.012:
                self.phase, self.count = "lower", 0
            return self._move(ee, steer, gripper=CLOSED)
        if self.phase == "lower":
            # Lower until the object's bottom is ~1.5 cm above the table, then let go.
            drop = obj[2] - (half_height + 0.015)
            if drop < 0.005 or self.count > 20:
                self.phase, self.count = "release", 0
            return self._move(ee, np.array([*zone[:2], ee[2] - drop]), gripper=CLOSED)
        if self.phase == "release":
            if self.count >= 3:
                self.phase, self.count = "retreat", 0
            return self._move(ee, ee, gripper=OPEN)
        if self.phase == "retry":
            # Open and rise before approaching again, so the fingers clear the object.
            if self.count >= 3:
                self._legs.clear()
                self.phase, self.count = "approach", 0
            return self._move(ee, np.array([*ee[:2], ee[2] + 0.05]), gripper=OPEN)
        return self._move(ee, np.array([*ee[:2], self.CARRY_Z]), gripper=OPEN)  # retreat


class PushExpert(Expert):
    """Get behind the block's rear face, then push it along its own x axis towards the goal.

    Where the pads touch the rear face steers the block: pushing off-centre towards the side it has turned to
    turns it back (torque about its centre of friction). The contact offset comes from a PI controller on the
    heading error (the integral finds the offset of the centre of friction of unevenly heavy halves); the
    desired heading leans towards the goal's lateral offset until the last few centimetres.
    """

    PUSH_STEP = 0.02  # m per control step: slow pushes keep the block from sliding on after contact
    SLIDE_STEP = 0.005  # m per step the contact point may move sideways along the rear face
    SLIDE_TOL = 0.004  # m; contact offsets closer than this to the desired one are left alone
    LEAN_GAIN = 4.0  # rad of desired heading per m of lateral goal offset
    KP, KI = 0.3, 0.05  # contact offset (m) per rad of heading error, and its integral gain per step

    def _reset_plan(self) -> None:
        self.done, self.integral = False, 0.0
        self.detour_b: np.ndarray | None = None  # pending detour waypoint, block frame
        self.detour_drawn = False

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        proprio, state = obs["proprio"].astype(float), obs["object"].astype(float)
        ee, block, goal = proprio[14:17], state[0:3], state[8:10]
        twist = float(np.arctan2(proprio[22], proprio[21]))
        heading, goal_heading = np.arctan2(state[4], state[3]), np.arctan2(state[11], state[10])
        c, s = np.cos(heading), np.sin(heading)
        to_world = np.array([[c, -s], [s, c]])
        err = to_world.T @ (goal - block[:2])  # goal offset in the block frame
        pusher = to_world.T @ (ee[:2] - block[:2])  # tool position in the block frame
        yaw_err = _wrap(heading - goal_heading)
        self.done = self.done or max(abs(err[0]), abs(err[1])) + HALF * abs(yaw_err) < 0.012
        rear = -HALF - 0.0125  # tool position with the pads' front face on the rear face
        in_contact = pusher[0] > rear - 0.01
        desired = float(np.clip(self.LEAN_GAIN * err[1], -0.15, 0.15)) if err[0] > 0.06 else 0.0
        heading_err = yaw_err - desired
        if in_contact:
            self.integral = float(np.clip(self.integral + self.KI * heading_err, -0.04, 0.04))
        offset = float(np.clip(self.KP * heading_err + self.integral, -0.05, 0.05))
        if self.done:
            target_b = pusher + np.array([-0.01, 0.0])  # ease off so the block stays put
        elif pusher[0] > rear + 0.01 or abs(pusher[1]) > HALF:
            target_b = np.array([rear - 0.06, pusher[1]])  # beside or ahead of the rear face: back off first
        elif not in_contact and abs(pusher[1] - offset) > 0.01:
            target_b = np.array([rear - 0.03, offset])  # line up behind the contact point
        elif abs(offset - pusher[1]) > self.SLIDE_TOL:
            # Re-place the contact without pushing: sliding along the face under load would drag the block.
            slide = float(np.clip(offset - pusher[1], -self.SLIDE_STEP, self.SLIDE_STEP))
            target_b = np.array([pusher[0] - 0.003, pusher[1] + slide])
        else:
            step = float(np.clip(err[0], 0.0, self.PUSH_STEP))
            target_b = np.array([pusher[0] + step, pusher[1]])
        if not (in_contact or self.done or self.detour_drawn):
            # A detour (drawn once, before the first contact): a random point behind the rear face first.
            self.detour_drawn = True
            if self.rng.random() < self.detour:
                self.detour_b = np.array([rear - self.rng.uniform(0.04, 0.1), self.rng.uniform(-0.06, 0.06)])
        if self.detour_b is not None:
            if np.linalg.norm(pusher - self.detour_b) < 0.015 or in_contact:
                self.detour_b = None
            else:
                target_b = self.detour_b
        target = np.array([*(block[:2] + to_world @ target_b), PUSH_Z])
        action = self._move(ee, target, twist, 0.0, CLOSED)
        return action[:2] if self.task.planar else action


class DoorExpert(Expert):
    """Line up 10 cm in front of the grasp point, move in, grip, turn the knob/lever past the latch, pull.

    The pull follows the door's inward normal (tangent to the handle's arc about the hinge); the turn is held
    while pulling, since the knob springs back. A grip that comes loose restarts from the approach.
    """

    PULL_STEP = 0.03  # m per control step
    TARGET_ANGLE = 0.3  # rad; pull a little past the 0.2 rad success angle, then hold

    def _reset_plan(self) -> None:
        self.phase, self.count = "approach", 0

    def _act(self, obs: dict[str, Any]) -> np.ndarray:
        proprio, state = obs["proprio"].astype(float), obs["object"].astype(float)
        ee, twist = proprio[14:17], float(np.arctan2(proprio[22], proprio[21]))
        grasp, door, knob = state[0:3], state[3], state[5]
        normal = np.array([np.cos(door), -np.sin(door), 0.0])  # into the door
        hi = self.task.task.knob_range[1]
        # Turn the way the knob's range allows, well past the latch, and hold that while pulling.
        turn = (UNLOCK + 0.4) * (1.0 if hi > 0 else -1.0) if self.task.has_knob else 0.0
        self.count += 1
        if self.phase in ("grip", "turn", "pull") and np.linalg.norm(grasp - ee) > 0.025:
            self.phase, self.count = "retry", 0
        if self.phase == "approach":
            target = grasp - 0.10 * normal
            steer = self._via("approach", ee, target)
            if steer is target and np.linalg.norm(target - ee) < 0.01 and abs(_wrap(twist)) < 0.05:
                self.phase, self.count = "insert", 0
            return self._move(ee, steer, twist, 0.0, OPEN)
        if self.phase == "insert":
            if np.linalg.norm(grasp - ee) < 0.006 or self.count > 8:
                self.phase, self.count = "grip", 0
            return self._move(ee, grasp, twist, 0.0, OPEN)
        if self.phase == "grip":
            if self.count >= 4:
                self.phase, self.count = ("turn" if self.task.has_knob else "pull"), 0
            return self._move(ee, grasp, twist, 0.0, CLOSED)
        if self.phase == "turn":
            if abs(knob) > UNLOCK + 0.1:
                self.phase, self.count = "pull", 0
            return self._move(ee, grasp, twist, turn, CLOSED)
        if self.phase == "pull":
            step = self.PULL_STEP if door < self.TARGET_ANGLE else 0.0
            return self._move(ee, grasp - step * normal, twist, turn, CLOSED)
        # retry: let go, back off along the normal, then approach again
        if self.count >= 4:
            self._legs.clear()
            self.phase, self.count = "approach", 0
        return self._move(ee, ee - 0.05 * normal, twist, twist, OPEN)


EXPERTS: dict[type[PandaEnv], type[Expert]] = {
    PickPlaceEnv: PickPlaceExpert,
    PushEnv: PushExpert,
    DoorEnv: DoorExpert,
}


def make_expert(
    env: gym.Env[Any, Any], *, noise: float = 0.0, hesitation: float = 0.0, detour: float = 0.0, seed: int = 0
) -> Expert:
    """The scripted expert for ``env`` (a robocl Panda task, possibly wrapped)."""
    for env_cls, expert_cls in EXPERTS.items():
        if isinstance(env.unwrapped, env_cls):
            return expert_cls(env, noise=noise, hesitation=hesitation, detour=detour, seed=seed)
    raise ValueError(
        f"no scripted expert for {type(env.unwrapped).__name__}; known: {[cls.__name__ for cls in EXPERTS]}"
    )
