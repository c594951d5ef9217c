"""Block pushing with the robocl Panda: HyperCRL's pusher family plus shape and friction extras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from robocl_envs import rewards as R
from robocl_envs.panda import PROPRIO_DIM, PROPRIO_DOC, Q_READY, PandaEnv, Region, scene_xml, yaw_of_quat

HALF = 0.08  # m; the block is 16 x 16 x 8 cm: two 16 x 8 x 8 cm halves side by side in y (HyperCRL)
PUSH_Z = 0.05  # m; tool height while pushing: fingertips 4 cm up, the palm 1.3 cm above the 8 cm block top
GOAL_OFFSET = (
    0.25  # m; the goal is the start pose moved this far along +x, same heading (HyperCRL: -0.10 -> +0.15)
)
SUCCESS_DIST = 0.03  # m; every keypoint within this of its goal counterpart
KEYPOINTS = np.array([[-HALF, -HALF], [-HALF, HALF], [HALF, -HALF], [HALF, HALF]])  # block frame, (4, 2)

# Layout of the flat state (proprio first): object block.
BLOCK_POS, BLOCK_YAW, BLOCK_VEL, GOAL_XY, GOAL_YAW = (
    slice(PROPRIO_DIM + i, PROPRIO_DIM + j) for i, j in ((0, 3), (3, 5), (5, 8), (8, 10), (10, 12))
)


@dataclass(frozen=True)
class PushTask:
    """One pusher task: the block's shape, per-half densities (kg/m^3, left = +y) and sliding friction."""

    shape: str = "block"  # "block" (two halves), "cylinder" or "tee"
    density: tuple[float, float] = (500.0, 500.0)
    friction: tuple[float, float] = (1.0, 1.0)


# HyperCRL's five pusher tasks, in its order.
DENSITY_TASKS = [
    PushTask(density=d)
    for d in ((500.0, 500.0), (100.0, 500.0), (500.0, 100.0), (500.0, 250.0), (250.0, 500.0))
]
EXTRA_TASKS: dict[str, PushTask] = {
    "Cylinder": PushTask(shape="cylinder"),
    "Tee": PushTask(shape="tee"),
    "SlipperyLeft": PushTask(friction=(0.2, 1.0)),  # the project page's "different friction per side"
    "Slippery": PushTask(friction=(0.3, 0.3)),
}


def keypoints_xy(pos: Any, yaw_cs: Any) -> Any:
    """World xy of the four block-frame keypoints (+-8 cm, +-8 cm), shape (..., 4, 2); numpy or torch."""
    c, s = yaw_cs[..., 0:1], yaw_cs[..., 1:2]  # (..., 1)
    kx, ky = R.as_array(KEYPOINTS[:, 0], pos), R.as_array(KEYPOINTS[:, 1], pos)  # (4,)
    x = pos[..., 0:1] + c * kx - s * ky  # (..., 4)
    y = pos[..., 1:2] + s * kx + c * ky
    return R.stack([x, y])


class PushEnv(PandaEnv):
    """Push a block to a goal pose on the table (HyperCRL's pusher, with the robocl Panda).

    ## Description
    The block (16 x 16 x 8 cm, two 16 x 8 x 8 cm halves side by side with per-task densities, or a cylinder /
    T shape in the extras) starts on the table with heading 0; the goal is the same pose 25 cm further along
    +x. Unequal halves need unequal pushing to keep the heading, which is what distinguishes the tasks.

    ## Action space
    ``planar=True`` (default, as HyperCRL's OSC_POSITION pusher): ``Box(-1, 1, (2,), float32)``, the tool's
    (dx, dy) scaled to +-5 cm per step; the controller holds the tool at 5 cm height, heading 0, gripper
    closed. ``planar=False``: the shared 5-d ``(dx, dy, dz, twist, gripper)`` action of the Panda tasks. The
    joint action modes of ``PandaEnv`` also apply. The policy runs at 10 Hz.

    ## Observation space
    ``Dict`` with ``"proprio"`` ``Box(24,)``, ``"object"`` ``Box(12,)`` (float32), ``"instruction"``
    ``Text(96)`` and, with ``images=True``, ``"image_front"`` / ``"image_wrist"`` ``Box(0, 255, (S, S, 3),
    uint8)``.
    {proprio}
    | index | object entry | unit |
    |---|---|---|
    | 0-2 | block centre position | m |
    | 3-4 | (cos, sin) of the block heading | - |
    | 5-7 | block velocity (vx, vy, yaw rate) | m/s, rad/s |
    | 8-9 | goal centre (x, y) | m |
    | 10-11 | (cos, sin) of the goal heading | - |

    ``env.unwrapped.get_state()`` returns ``concat(proprio, object)`` (36,), the input of ``reward_fn``.

    ## Rewards
    Dense (HyperCRL): ``sum_i [1 - tanh(10 |c_i - g_i|)] - 0.25 |a|`` over the four keypoints c_i of the block
    (its corners at +-8 cm) and their goal positions g_i; ``a`` is the action as passed to ``step`` (the first
    entries without the gripper in the other modes). Sparse: the success indicator.

    ## Success, starting state, episode end
    Success: every keypoint within 3 cm of its goal position. The arm starts by inverse kinematics with its
    tool 5 cm behind the middle of the block's rear face (HyperCRL's 20 reset steps, done in one go here, so
    no agent steps are spent on them). ``positions="seen"`` draws the block's start from a central box,
    ``"unseen"`` from a ring around it (``REGIONS``; disjoint). Truncation after 100 steps (HyperCRL's
    horizon).

    ## Arguments
    ``task`` (a ``PushTask``), ``planar``, plus the ``PandaEnv`` arguments (``images``, ``image_size``,
    ``reward_type``, ``positions``, ``action_mode``, ``terminate_on_success``, ``render_mode``).

    ## Version history
    v0: first version.
    """

    OBJECT_NAMES = (
        *(f"block.{axis}" for axis in "xyz"),
        "block.cos",
        "block.sin",
        "block.vx",
        "block.vy",
        "block.vyaw",
        "goal.x",
        "goal.y",
        "goal.cos",
        "goal.sin",
    )
    NOMINAL_ROT = np.diag([1.0, -1.0, -1.0])
    REGIONS: ClassVar[dict[str, Region]] = {
        "seen": Region(center=(0.45, 0.0), outer=(0.03, 0.06)),
        "unseen": Region(center=(0.45, 0.0), outer=(0.07, 0.14), inner=(0.045, 0.08)),
    }

    def __init__(self, task: PushTask | None = None, planar: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task or PushTask()
        if self.task.shape not in ("block", "cylinder", "tee"):
            raise ValueError(f"unknown push shape {self.task.shape!r}")
        self.planar = planar and self.action_mode == "ee_delta"
        self.region = self.REGIONS[self.positions]
        self._setup(scene_xml(self._task_xml()))
        if self.planar:
            self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._block = self.model.body("block").id
        self._block_qpos = self.model.jnt_qposadr[self.model.joint("block").id]
        self._block_dof = self.model.jnt_dofadr[self.model.joint("block").id]
        self._goal = self.model.body("goal").id
        self._instruction = "push the block onto the target outline"

    def _task_xml(self) -> str:
        (d_left, d_right), (f_left, f_right) = self.task.density, self.task.friction
        # priority="1" makes the block's own friction govern its contacts with the table (MuJoCo otherwise
        # takes the larger of the two geoms' coefficients, which would hide the per-task friction).
        common = 'priority="1" condim="3"'
        if self.task.shape == "block":
            geoms = (
                f'<geom name="left" type="box" size="{HALF} {HALF / 2} 0.04" pos="0 {HALF / 2} 0" '
                f'density="{d_left}" friction="{f_left} 0.005 0.0001" rgba="0.8 0.35 0.1 1" {common}/>'
                f'<geom name="right" type="box" size="{HALF} {HALF / 2} 0.04" pos="0 {-HALF / 2} 0" '
                f'density="{d_right}" friction="{f_right} 0.005 0.0001" rgba="0.9 0.6 0.2 1" {common}/>'
            )
        elif self.task.shape == "cylinder":
            geoms = (
                f'<geom name="left" type="cylinder" size="{HALF} 0.04" density="{d_left}" '
                f'friction="{f_left} 0.005 0.0001" rgba="0.8 0.35 0.1 1" {common}/>'
            )
        else:  # tee: a 16 cm crossbar at the front (+x), a stem back to the rear face
            geoms = (
                f'<geom name="left" type="box" size="0.03 {HALF} 0.04" pos="0.05 0 0" density="{d_left}" '
                f'friction="{f_left} 0.005 0.0001" rgba="0.8 0.35 0.1 1" {common}/>'
                f'<geom name="right" type="box" size="0.05 0.03 0.04" pos="-0.03 0 0" density="{d_right}" '
                f'friction="{f_right} 0.005 0.0001" rgba="0.9 0.6 0.2 1" {common}/>'
            )
        return f"""
<body name="block" pos="0.45 0 0.04"><freejoint name="block"/>{geoms}</body>
<body name="goal" pos="0.7 0 0">
  <geom type="box" size="{HALF} {HALF} 0.001" pos="0 0 0.001" rgba="0.2 0.8 0.3 0.35" contype="0"
  conaffinity="0"/>
</body>"""

    # ------------------------------------------------------------------------------------------ episode
    def _reset_task(self) -> None:
        xy = self.region.sample(self.np_random)
        self.data.qpos[self._block_qpos : self._block_qpos + 7] = (*xy, 0.04, 1.0, 0.0, 0.0, 0.0)
        self.model.body_pos[self._goal] = (xy[0] + GOAL_OFFSET, xy[1], 0.0)
        start = np.array([xy[0] - HALF - 0.05, xy[1], PUSH_Z])
        self._set_arm(self.solve_ik(start, self.NOMINAL_ROT, Q_READY), gripper_open=False)

    def _apply_action(self, action: np.ndarray) -> None:
        if self.planar:
            # HyperCRL's pusher commands only (dx, dy); height, heading and the closed gripper are held here.
            pos, rot = self._tcp_pose(self.data)
            dz = np.clip((PUSH_Z - pos[2]) / 0.05, -1.0, 1.0)
            turn = np.clip(-self._twist(rot) / 0.5, -1.0, 1.0)
            action = np.array([action[0], action[1], dz, turn, 1.0])
        super()._apply_action(action)

    def _object_state(self) -> np.ndarray:
        q = self.data.qpos[self._block_qpos : self._block_qpos + 7]
        v = self.data.qvel[self._block_dof : self._block_dof + 6]
        yaw = yaw_of_quat(q[3:7])
        goal = self.data.xpos[self._goal]
        return np.array([*q[:3], np.cos(yaw), np.sin(yaw), v[0], v[1], v[5], goal[0], goal[1], 1.0, 0.0])

    # ------------------------------------------------------------------------------------------- reward
    def keypoint_distances(self, state: Any) -> Any:
        """Distance of each block keypoint to its goal position, shape (..., 4)."""
        block = keypoints_xy(state[..., BLOCK_POS], state[..., BLOCK_YAW])
        goal = keypoints_xy(state[..., GOAL_XY], state[..., GOAL_YAW])
        return R.norm(block - goal)

    def success_fn(self, state: Any) -> Any:
        """All four keypoints within ``SUCCESS_DIST`` of the goal's (batched, pure)."""
        return R.max_last(self.keypoint_distances(state)) < SUCCESS_DIST

    def reward_terms(self, state: Any, action: Any, next_state: Any) -> dict[str, Any]:
        """HyperCRL's pusher reward and its two terms (batched, pure)."""
        closeness = (1 - R.xp(next_state).tanh(10 * self.keypoint_distances(next_state))).sum(-1)
        motion = action if self.planar else action[..., :-1]
        penalty = 0.25 * R.norm(R.as_array(motion, next_state))
        return {"reward": closeness - penalty, "closeness": closeness, "action_penalty": penalty}


def task_id(name: str) -> str:
    return f"robocl/Push-{name}-v0"


def register() -> dict[str, list[str]]:
    """Register the pusher tasks; returns ``{"push": [HyperCRL order], "push_extra": [...]}``."""
    families: dict[str, list[str]] = {"push": [], "push_extra": []}
    named = [("push", f"Density{i}", task) for i, task in enumerate(DENSITY_TASKS)]
    named += [("push_extra", name, task) for name, task in EXTRA_TASKS.items()]
    for family, name, task in named:
        env_id = task_id(name)
        # A second call (tests, reloads) keeps the first registration instead of overriding it.
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="robocl_envs.push:PushEnv",
                kwargs={"task": task},
                max_episode_steps=100,
            )
        families[family].append(env_id)
    return families


PushEnv.__doc__ = (PushEnv.__doc__ or "").replace("{proprio}", PROPRIO_DOC)
