"""Door opening with the robocl Panda: HyperCRL's door family (pull handle, round knob or lever)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from robocl_envs import rewards as R
from robocl_envs.panda import PROPRIO_DIM, PROPRIO_DOC, PandaEnv, Region, scene_xml

SUCCESS_ANGLE = 0.2  # rad; HyperCRL's success flag
UNLOCK = 0.5  # rad the knob or lever must be turned (either way within its range) to release the latch
LATCH_ANGLE = 0.02  # rad; the latch only re-engages on a door this close to shut
# Handle position relative to the hinge (m): near the free edge, 0.8 m above the arm's base. A tool pointing
# horizontally forward is only comfortably inside the Panda's joint-6 range this high above its base (at 0.3 m
# joint 6 would need more than its 3.75 rad limit), so the arm stands on a pedestal in front of a full door.
HANDLE_Y, HANDLE_Z = -0.35, 0.80
STANDOFF = 0.055  # m from the door face to the handle bar / knob centre
# m; the grasp point lies this much beyond the handle bar / knob centre, so they sit mid-pad, not at the tips.
GRASP_DEPTH = 0.015
# Tool pointing at the door (+x), fingers closing horizontally at zero twist: Rot_y(-pi/2) @ diag(1, -1, -1).
FORWARD_ROT = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])

EE_POS, EE_QUAT = slice(14, 17), slice(17, 21)
HANDLE_POS, DOOR_ANGLE, KNOB_ANGLE = slice(PROPRIO_DIM, PROPRIO_DIM + 3), PROPRIO_DIM + 3, PROPRIO_DIM + 5


@dataclass(frozen=True)
class DoorTask:
    """One door task: handle kind, knob/lever range (rad) and hinge damping (N m s/rad)."""

    handle: str = "pull"  # "pull" (fixed bar, no latch), "round" (knob) or "lever"
    knob_range: tuple[float, float] = (0.0, 0.0)
    damping: float = 1.0


# HyperCRL's T1..T5 in order.
TASKS: dict[str, DoorTask] = {
    "Pull": DoorTask("pull"),
    "RoundCW": DoorTask("round", (-1.57, 0.0)),
    "LeverCW": DoorTask("lever", (-1.57, 0.0)),
    "RoundCCW": DoorTask("round", (0.0, 1.57)),
    "LeverCCW": DoorTask("lever", (0.0, 1.57)),
}
EXTRA_TASKS: dict[str, DoorTask] = {
    "PullHeavy": DoorTask("pull", damping=8.0),
    "RoundCCWHeavy": DoorTask("round", (0.0, 1.57), damping=8.0),
}


class DoorEnv(PandaEnv):
    """Open a hinged door by its pull handle, round knob or lever (HyperCRL's door tasks, robocl Panda).

    ## Description
    A 40 x 118 cm door stands in a frame in front of the arm (on a 20 cm pedestal) and opens towards it about
    a vertical hinge on its +y edge. Round knobs and levers spring back to 0 and hold a latch shut until
    turned by 0.5 rad in the task's direction (HyperCRL: [-1.57, 0] or [0, 1.57]); the pull handle has no
    latch.

    ## Action space
    ``Box(-1, 1, (5,), float32)``: tool delta (dx, dy, dz) scaled to +-5 cm per step, twist about the tool
    axis (which points at the door, so the twist turns a grasped knob) scaled to +-0.5 rad per step, gripper
    (-1 open, +1 closed). HyperCRL's 6-d OSC pose control is reduced to the twist: tilting the tool never
    helps here. Joint action modes as in ``PandaEnv``. 10 Hz.

    ## Observation space
    ``Dict`` with ``"proprio"`` ``Box(24,)``, ``"object"`` ``Box(7,)`` (float32), ``"instruction"``
    ``Text(96)`` and, with ``images=True``, ``"image_front"`` / ``"image_wrist"`` ``Box(0, 255, (S, S, 3),
    uint8)``.
    {proprio}
    | index | object entry | unit |
    |---|---|---|
    | 0-2 | grasp point: where the tool centre should be to grip the handle / knob / lever (world) | m |
    | 3 | door angle (0 shut, positive open) | rad |
    | 4 | door angular velocity | rad/s |
    | 5 | knob or lever angle (0 for the pull handle) | rad |
    | 6 | knob or lever angular velocity | rad/s |

    ``env.unwrapped.get_state()`` returns ``concat(proprio, object)`` (31,), the input of ``reward_fn``.

    ## Rewards
    Dense (HyperCRL's door_pose): ``50 |door| + 20 |knob| - |d| - log(|d|^2 + 0.005) - 5 - tilt`` with ``d``
    the tool-to-grasp-point vector, the knob term only for knobs and levers, and ``tilt`` the angle between
    the tool axis and the door's inward normal (HyperCRL: roll/pitch error in the handle frame). Sparse:
    success.

    ## Success, starting state, episode end
    Success: door angle >= 0.2 rad. The arm starts by inverse kinematics with the tool 10 cm in front of the
    grasp point, gripper open (HyperCRL's 20 servo steps, done in one go). ``positions`` draws the door
    frame's position from a central box ("seen") or a ring around it ("unseen"; ``REGIONS``). Truncation after
    200 steps (HyperCRL's horizon).

    ## Arguments
    ``task`` (a ``DoorTask``) plus the ``PandaEnv`` arguments.

    ## Version history
    v0: first version.
    """

    OBJECT_NAMES = (
        *(f"grasp.{axis}" for axis in "xyz"),
        "door.angle",
        "door.vel",
        "knob.angle",
        "knob.vel",
    )
    NOMINAL_ROT = FORWARD_ROT
    Q_REST = np.array([0.0, -0.56, 0.0, -2.17, 0.0, 3.18, np.pi / 4])  # tool forward at (0.5, 0, 0.8)
    WORKSPACE_LOW = np.array([0.2, -0.5, 0.3])
    WORKSPACE_HIGH = np.array([0.85, 0.5, 1.1])
    REGIONS: ClassVar[dict[str, Region]] = {  # position of the door's front face at its centre line
        "seen": Region(center=(0.66, 0.15), outer=(0.025, 0.05)),
        "unseen": Region(center=(0.66, 0.15), outer=(0.06, 0.12), inner=(0.04, 0.075)),
    }

    def __init__(self, task: DoorTask | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task or DoorTask()
        if self.task.handle not in ("pull", "round", "lever"):
            raise ValueError(f"unknown door handle {self.task.handle!r}")
        self.has_knob = self.task.handle != "pull"
        self.region = self.REGIONS[self.positions]
        self._setup(
            scene_xml(
                self._task_xml(),
                task_equality=self._equality_xml(),
                table=False,
                front_camera=((-0.45, -0.75, 1.45), (0.6, 0.1, 0.65)),  # over the arm's shoulder
            )
        )
        self._frame = self.model.body("door_frame").id
        self._hinge = self.model.joint("door_hinge")
        self._knob = self.model.joint("knob") if self.has_knob else None
        self._grasp = self.model.site("grasp").id
        self._latch = self.model.equality("latch").id if self.has_knob else None
        verb = {"pull": "pull the handle", "round": "turn the knob", "lever": "turn the lever"}[
            self.task.handle
        ]
        self._instruction = f"{verb} and open the door"

    def _task_xml(self) -> str:
        lo, hi = self.task.knob_range
        if self.task.handle == "pull":
            handle = (
                f'<body name="handle" pos="0 {HANDLE_Y} {HANDLE_Z}">'
                f'<geom type="capsule" size="0.012 0.06" pos="{-STANDOFF} 0 0" rgba="0.7 0.7 0.75 1"/>'
                f'<geom type="box" size="{STANDOFF / 2} 0.008 0.008" pos="{-STANDOFF / 2} 0 0.05"/>'
                f'<geom type="box" size="{STANDOFF / 2} 0.008 0.008" pos="{-STANDOFF / 2} 0 -0.05"/>'
                f'<site name="grasp" pos="{GRASP_DEPTH - STANDOFF} 0 0" size="0.01"/></body>'
            )
        else:
            # A spindle along the door normal; its spring returns it to 0 so it must be held while pulling.
            joint = (
                f'<joint name="knob" axis="1 0 0" range="{lo} {hi}" stiffness="0.3" damping="0.05" '
                'armature="0.002"/>'
            )
            if self.task.handle == "round":
                shape = (
                    '<geom type="cylinder" size="0.008 0.02" pos="-0.02 0 0" euler="0 1.5708 0"/>'
                    '<geom type="cylinder" size="0.025 0.015" pos="-0.055 0 0" euler="0 1.5708 0" '
                    'rgba="0.75 0.6 0.2 1"/>'
                )
            else:  # lever: a hub grasped like a knob, with a bar at its door end pointing towards the hinge
                shape = (
                    '<geom type="cylinder" size="0.018 0.035" pos="-0.035 0 0" euler="0 1.5708 0" '
                    'rgba="0.7 0.7 0.75 1"/>'
                    '<geom type="box" size="0.008 0.055 0.01" pos="-0.012 0.06 0" rgba="0.7 0.7 0.75 1"/>'
                )
            handle = (
                f'<body name="handle" pos="0 {HANDLE_Y} {HANDLE_Z}">{joint}'
                '<inertial pos="-0.03 0 0" mass="0.1" diaginertia="5e-5 5e-5 5e-5"/>'
                f'{shape}<site name="grasp" pos="{GRASP_DEPTH - STANDOFF} 0 0" size="0.01"/></body>'
            )
        # The frame is a static body moved per episode; the door hangs on its hinge at the frame's +y edge,
        # with a little friction so that an unlatched door does not drift open by itself.
        return f"""
<body name="door_frame" pos="0.7 0 0">
  <geom type="box" size="0.03 0.02 0.6" pos="0.015 0.23 0.4" rgba="0.4 0.3 0.25 1"/>
  <geom type="box" size="0.03 0.02 0.6" pos="0.015 -0.23 0.4" rgba="0.4 0.3 0.25 1"/>
  <geom type="box" size="0.03 0.25 0.02" pos="0.015 0 1.02" rgba="0.4 0.3 0.25 1"/>
  <body name="door" pos="0 0.2 0">
    <joint name="door_hinge" axis="0 0 -1" range="0 1.57" damping="{self.task.damping}" frictionloss="0.3"
           armature="0.05"/>
    <geom type="box" size="0.015 0.2 0.59" pos="0.015 -0.2 0.4" density="300" rgba="0.6 0.45 0.3 1"/>
    {handle}
  </body>
</body>"""

    def _equality_xml(self) -> str:
        # The latch pins the hinge at 0; step() switches it off while the knob/lever is turned far enough.
        return '<joint name="latch" joint1="door_hinge" solref="0.01 1"/>' if self.has_knob else ""

    # ------------------------------------------------------------------------------------------ episode
    def _reset_task(self) -> None:
        xy = self.region.sample(self.np_random)
        self.model.body_pos[self._frame] = (xy[0], xy[1], 0.0)
        grasp = np.array([xy[0] + GRASP_DEPTH - STANDOFF, xy[1] + 0.2 + HANDLE_Y, HANDLE_Z])
        start = grasp - np.array([0.10, 0.0, 0.0])
        self._set_arm(self.solve_ik(start, FORWARD_ROT, self.Q_REST), gripper_open=True)
        self._update_latch()

    def _update_latch(self) -> None:
        if self._latch is None:
            return
        knob = self.data.qpos[self._knob.qposadr[0]]
        door = self.data.qpos[self._hinge.qposadr[0]]
        self.data.eq_active[self._latch] = abs(knob) < UNLOCK and door < LATCH_ANGLE

    def _apply_action(self, action: np.ndarray) -> None:
        self._update_latch()  # a function of (door, knob) angles, so the env stays Markov in its state
        super()._apply_action(action)

    def _object_state(self) -> np.ndarray:
        hinge_q, hinge_v = self.data.qpos[self._hinge.qposadr[0]], self.data.qvel[self._hinge.dofadr[0]]
        knob_q = self.data.qpos[self._knob.qposadr[0]] if self._knob is not None else 0.0
        knob_v = self.data.qvel[self._knob.dofadr[0]] if self._knob is not None else 0.0
        return np.array([*self.data.site_xpos[self._grasp], hinge_q, hinge_v, knob_q, knob_v])

    # ------------------------------------------------------------------------------------------- reward
    def success_fn(self, state: Any) -> Any:
        """Door angle at least ``SUCCESS_ANGLE`` (batched, pure)."""
        return state[..., DOOR_ANGLE] >= SUCCESS_ANGLE

    def reward_terms(self, state: Any, action: Any, next_state: Any) -> dict[str, Any]:
        """HyperCRL's door reward and its terms (batched, pure); only ``next_state`` matters."""
        xp = R.xp(next_state)
        door, knob = next_state[..., DOOR_ANGLE], next_state[..., KNOB_ANGLE]
        dist = R.norm(next_state[..., EE_POS] - next_state[..., HANDLE_POS])
        # The door's inward normal turns with the door: Rot_z(-angle) applied to +x.
        normal = R.stack([xp.cos(door), -xp.sin(door), door * 0])
        axis = R.tool_axis_from_quat(next_state[..., EE_QUAT])
        tilt = xp.arccos(xp.clip((axis * normal).sum(-1), -1.0, 1.0))
        opening = 50 * abs(door) + (20 * abs(knob) if self.has_knob else 0 * knob)
        reach = -dist - xp.log(dist**2 + 0.005)
        return {"reward": opening + reach - 5 - tilt, "opening": opening, "reach": reach, "tilt": tilt}


def task_id(name: str) -> str:
    return f"robocl/Door-{name}-v0"


def register() -> dict[str, list[str]]:
    """Register the door tasks; returns ``{"door": [HyperCRL T1..T5], "door_extra": [...]}``."""
    families: dict[str, list[str]] = {"door": [], "door_extra": []}
    named = [("door", name, task) for name, task in TASKS.items()]
    named += [("door_extra", name, task) for name, task in EXTRA_TASKS.items()]
    for family, name, task in named:
        env_id = task_id(name)
        # A second call (tests, reloads) keeps the first registration instead of overriding it.
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="robocl_envs.door:DoorEnv",
                kwargs={"task": task},
                max_episode_steps=200,
            )
        families[family].append(env_id)
    return families


DoorEnv.__doc__ = (DoorEnv.__doc__ or "").replace("{proprio}", PROPRIO_DOC)
