"""A Franka Panda built from MuJoCo primitives, its differential-IK controller and the shared task base class.

The arm's kinematic chain is the Panda's published modified-DH table (Craig's convention), so forward
kinematics match the real robot; link masses are the identified values; collision/visual shapes are capsules
and boxes (no meshes). The hand is a parallel gripper with two coupled fingers that open 0 to 0.08 m.

Control follows real VLA setups: the policy runs at 10 Hz and commands an end-effector delta (position, twist
about the tool axis) plus a gripper value, all in [-1, 1]. Once per control step one damped-least-squares
differential-IK solve (one ``mj_jacSite`` and a 6x7 system) turns the delta into joint position targets, and
MuJoCo's position actuators track them at the physics rate with gravity compensation. The IK target is taken
relative to the MEASURED pose, so the next state depends only on (qpos, qvel, action): the environment is
Markov in its flat state vector, which model-based learners such as HyperCRL rely on.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

# Modified DH rows (a_{i-1} m, d_i m, alpha_{i-1} rad) for joints 1..7 (refs/panda.md).
DH_TABLE: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -np.pi / 2),
    (0.0, 0.316, np.pi / 2),
    (0.0825, 0.0, np.pi / 2),
    (-0.0825, 0.384, -np.pi / 2),
    (0.0, 0.0, np.pi / 2),
    (0.088, 0.0, np.pi / 2),
)
FLANGE_D = 0.107  # flange offset along joint-7 z
TCP_D = 0.1034  # Franka Hand tool centre point beyond the flange, rotated -pi/4 about z
Q_MIN = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
Q_MAX = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
QD_MAX = np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100])
TAU_MAX = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
LINK_MASS = (4.970684, 0.646926, 3.228604, 3.587895, 1.225946, 1.666555, 0.735522)
HAND_MASS = 0.73
Q_READY = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])
FINGER_MAX = 0.04  # each finger travels 0..0.04 m

# Joint-space position gains (Nm/rad) and damping (Nms/rad), tuned so that a commanded end-effector delta is
# covered within one 0.1 s control step (measured 0.94-1.05 of the command) without overshoot. Torques stay
# capped at TAU_MAX.
KP = (2400.0, 2400.0, 2000.0, 2000.0, 1000.0, 800.0, 480.0)
KV = (110.0, 110.0, 85.0, 85.0, 35.0, 28.0, 17.0)

# kg m^2 on every arm joint, standing in for reflected rotor inertia. With 0.1, the 5 ms step let grasped
# objects creep out of the fingers during fast transport (gone at 2.5 ms or with 0.3); 0.3 keeps the
# cheaper 5 ms step.
ARMATURE = 0.3
TIMESTEP = 0.005  # s; stable with implicitfast + armature, and keeps 20 substeps per 10 Hz control step
CONTROL_HZ = 10
POS_SCALE = 0.05  # m per step at |a| = 1 (robosuite's OSC scaling)
ROT_SCALE = 0.5  # rad per step at |a| = 1
INSTRUCTION_CHARSET = string.ascii_lowercase + string.digits + " ,.'-"

#: Per-dimension names of the proprioception (the store's ``Feature.names``); ``<entity>.x/y/z`` names a
#: position in metres, world frame, which robocl's policies can turn into relative positions.
PROPRIO_NAMES = (
    *(f"joint{i}.pos" for i in range(1, 8)),
    *(f"joint{i}.vel" for i in range(1, 8)),
    *(f"tcp.{axis}" for axis in "xyz"),
    *(f"tcp.q{part}" for part in "wxyz"),
    "twist.cos",
    "twist.sin",
    "gripper.width",
)
PROPRIO_DIM = len(PROPRIO_NAMES)
PROPRIO_DOC = """
| index | proprio entry | unit |
|---|---|---|
| 0-6 | arm joint positions q1..q7 | rad |
| 7-13 | arm joint velocities | rad/s |
| 14-16 | tool-centre-point position (world) | m |
| 17-20 | tool-centre-point quaternion (w, x, y, z, world) | - |
| 21-22 | (cos, sin) of the twist about the tool axis, relative to the task's nominal grasp orientation | - |
| 23 | gripper opening (distance between the finger pads) | m |
"""


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _fmt(values: Any) -> str:
    return " ".join(f"{float(v):.9g}" for v in np.ravel(values))


def _quat_of(mat: np.ndarray) -> np.ndarray:
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(mat).ravel())
    return quat


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` with world z up in the image."""
    forward = (target - pos) / np.linalg.norm(target - pos)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return _fmt(np.concatenate([right, np.cross(right, forward)]))


def _link_inertial(mass: float, seg: np.ndarray) -> str:
    # A solid cylinder of radius 6 cm along the link's main segment: an approximation, the identified inertia
    # tensors are not part of the published facts we use.
    length = max(float(np.linalg.norm(seg)), 0.1)
    ixx = mass * (3 * 0.06**2 + length**2) / 12
    izz = mass * 0.06**2 / 2
    return f'<inertial pos="{_fmt(seg / 2)}" mass="{mass:.6g}" diaginertia="{ixx:.5g} {ixx:.5g} {izz:.5g}"/>'


def arm_xml() -> str:
    """Bodies of the arm, hand and fingers (MJCF fragment to place in ``worldbody``; base at the origin)."""
    # Child frame i in frame i-1 under modified DH: Rot_x(alpha) Trans_x(a) Rot_z(q) Trans_z(d), so the body
    # sits at Rot_x(alpha) (a, 0, d) with orientation Rot_x(alpha), and the hinge is its local z axis.
    offsets = [(_rot_x(alpha) @ np.array([a, 0.0, d]), alpha) for a, d, alpha in DH_TABLE]
    # Segment from each link's origin to the next joint's origin (the flange for link 7), in the link's frame:
    # where its capsule and its inertia go.
    segments = [pos for pos, _ in offsets[1:]] + [np.array([0.0, 0.0, FLANGE_D])]

    xml = [
        '<body name="link0" pos="0 0 0">',
        '<geom class="arm" type="cylinder" size="0.07 0.06" pos="0 0 0.06" rgba="0.9 0.9 0.9 1"/>',
    ]
    for i, ((pos, alpha), seg) in enumerate(zip(offsets, segments, strict=True)):
        quat = _quat_of(_rot_x(alpha))
        xml.append(f'<body name="link{i + 1}" pos="{_fmt(pos)}" quat="{_fmt(quat)}" gravcomp="1">')
        xml.append(_link_inertial(LINK_MASS[i], seg))
        xml.append(f'<joint name="joint{i + 1}" range="{Q_MIN[i]:.4f} {Q_MAX[i]:.4f}"/>')
        xml.append('<geom class="arm" type="sphere" size="0.06"/>')
        if np.linalg.norm(seg) > 1e-6:
            xml.append(f'<geom class="arm" type="capsule" size="0.05" fromto="0 0 0 {_fmt(seg)}"/>')
    # Hand at the flange: the TCP frame is rotated -pi/4 about the flange z; fingers slide along its y axis.
    hand_quat = _fmt([np.cos(-np.pi / 8), 0.0, 0.0, np.sin(-np.pi / 8)])
    xml.append(f'<body name="hand" pos="0 0 {FLANGE_D}" quat="{hand_quat}" gravcomp="1">')
    xml.append(f'<inertial pos="0 0 0.03" mass="{HAND_MASS}" diaginertia="0.002 0.0005 0.002"/>')
    # The palm is thinner than the finger pads, so a hand pushing with closed fingers touches with the pads
    # only.
    xml.append('<geom class="arm" type="box" size="0.008 0.1 0.025" pos="0 0 0.035" rgba="0.9 0.9 0.9 1"/>')
    xml.append('<geom class="arm" type="cylinder" size="0.04 0.01" pos="0 0 0.005" rgba="0.3 0.3 0.3 1"/>')
    xml.append(f'<site name="tcp" pos="0 0 {TCP_D}" size="0.005" rgba="1 0 0 0"/>')
    xml.append('<camera name="wrist" pos="0.07 0 0.02" xyaxes="0 1 0 0.94 0 0.34" fovy="80"/>')
    for side, sign in (("left", 1.0), ("right", -1.0)):
        xml.append(f'<body name="finger_{side}" pos="0 0 0.0584" gravcomp="1">')
        xml.append('<inertial pos="0 0 0.03" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>')
        xml.append(
            f'<joint name="finger_{side}" type="slide" axis="0 {sign:g} 0" range="0 {FINGER_MAX}" '
            'armature="0.05" damping="5"/>'
        )
        xml.append(
            f'<geom class="finger" type="box" size="0.0125 0.006 0.026" pos="0 {sign * 0.006:g} 0.028"/>'
        )
        xml.append("</body>")
    xml.append("</body>")  # hand
    xml.extend(["</body>"] * 7)
    xml.append("</body>")  # link0
    return "\n".join(xml)


def scene_xml(
    task_bodies: str,
    *,
    task_equality: str = "",
    table: bool = True,
    front_camera: tuple[tuple[float, float, float], tuple[float, float, float]] = (
        (1.35, 0.0, 0.65),
        (0.45, 0.0, 0.05),
    ),
) -> str:
    """A full MJCF model: arm at the origin on a table (top at z = 0) or, with ``table=False``, on a 20 cm
    pedestal over the floor; two cameras ("front", "wrist"), the task's bodies and the actuators."""
    cam_pos, cam_target = (np.asarray(v, dtype=float) for v in front_camera)
    if table:
        support = (
            # The floor collides: an object knocked off the table comes to rest on it, as in a real cell,
            # instead of falling for the rest of the episode (a demo that did reached z = -312 m and
            # inflated the store's object statistics a hundredfold).
            '<geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.8" material="floor"/>'
            '<geom name="table" type="box" size="0.55 0.6 0.4" pos="0.45 0 -0.4" material="table"/>'
        )
    else:
        support = (
            '<geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.2" material="floor"/>'
            '<geom name="pedestal" type="box" size="0.15 0.15 0.1" pos="0 0 -0.1" material="table"/>'
        )
    actuators = "\n".join(
        f'<position name="a{i + 1}" joint="joint{i + 1}" kp="{KP[i]}" kv="{KV[i]}" '
        f'ctrlrange="{Q_MIN[i]:.4f} {Q_MAX[i]:.4f}" forcerange="{-TAU_MAX[i]:g} {TAU_MAX[i]:g}"/>'
        for i in range(7)
    )
    return f"""
<mujoco model="robocl_panda">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual><global offwidth="640" offheight="640"/><quality shadowsize="0"/></visual>
  <asset>
    <material name="table" rgba="0.55 0.4 0.3 1"/>
    <material name="floor" rgba="0.25 0.27 0.3 1"/>
  </asset>
  <default>
    <joint axis="0 0 1" armature="{ARMATURE}" damping="1"/>
    <geom contype="1" conaffinity="3" friction="1 0.005 0.0001" solref="0.01 1"/>
    <default class="arm"><geom contype="2" conaffinity="0" rgba="0.95 0.95 0.95 1" density="0"/></default>
    <default class="finger">
      <geom contype="2" conaffinity="0" rgba="0.2 0.2 0.2 1" friction="1.5 0.03 0.001" condim="4"
            density="0"/>
    </default>
  </default>
  <worldbody>
    <light pos="0.4 -0.6 1.8" dir="0 0.3 -1" diffuse="0.6 0.6 0.6"/>
    <light pos="1.2 0.6 1.5" dir="-0.5 -0.3 -1" diffuse="0.4 0.4 0.4"/>
    {support}
    <camera name="front" pos="{_fmt(cam_pos)}" xyaxes="{look_at_xyaxes(cam_pos, cam_target)}" fovy="50"/>
    {arm_xml()}
    {task_bodies}
  </worldbody>
  <equality>
    <joint name="finger_coupling" joint1="finger_right" joint2="finger_left" solref="0.005 1"/>
    {task_equality}
  </equality>
  <actuator>
    {actuators}
    <position name="gripper" joint="finger_left" kp="1500" kv="40" ctrlrange="0 {FINGER_MAX}"
              forcerange="-70 70"/>
  </actuator>
</mujoco>"""


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle on the table, optionally with a rectangular hole (a ring), in world metres.

    ``seen`` regions are boxes and ``unseen`` ones are rings around them whose hole contains the box, so the
    two are disjoint by construction (``contains`` never holds for both).
    """

    center: tuple[float, float]
    outer: tuple[float, float]  # half extents (m)
    inner: tuple[float, float] = (0.0, 0.0)  # half extents of the hole (m)

    def contains(self, xy: np.ndarray) -> bool:
        dx, dy = np.abs(np.asarray(xy, dtype=float)[:2] - np.asarray(self.center))
        in_outer = dx <= self.outer[0] and dy <= self.outer[1]
        in_hole = dx < self.inner[0] and dy < self.inner[1]
        return bool(in_outer and not in_hole)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        # Rejection sampling; the holes used here cover under 60 % of the outer box, so this ends quickly.
        while True:
            xy = np.asarray(self.center) + rng.uniform(-1.0, 1.0, size=2) * np.asarray(self.outer)
            if self.contains(xy):
                return xy


def yaw_of_quat(quat: np.ndarray) -> float:
    """Heading (rotation about world z) of a body whose quaternion is (w, x, y, z)."""
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class PandaEnv(gym.Env[dict[str, Any], np.ndarray]):
    """Shared machinery of the robocl Panda tasks; subclasses add the scene, reset, object state and reward.

    Subclasses set ``OBJECT_NAMES`` (one name per object-state dimension) and ``NOMINAL_ROT`` (the grasp
    orientation that zero twist means, 3x3), build the model with ``_setup(xml)``, set ``self._instruction``,
    and implement ``_reset_task``, ``_object_state``, ``reward_terms`` (a dict with at least ``"reward"``)
    and ``success_fn``, both pure and batched.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    robot: ClassVar[str] = "panda"  # recorded in the metadata of stores collected from these tasks
    OBJECT_NAMES: tuple[str, ...] = ()
    NOMINAL_ROT: np.ndarray = np.eye(3)
    Q_REST: np.ndarray = Q_READY  # posture the IK's nullspace term pulls the redundant elbow towards
    WORKSPACE_LOW = np.array([0.15, -0.45, 0.005])  # bounds on commanded tool positions (m)
    WORKSPACE_HIGH = np.array([0.8, 0.45, 0.6])

    def __init__(
        self,
        *,
        images: bool = False,
        image_size: int = 96,
        reward_type: str = "dense",
        positions: str = "seen",
        action_mode: str = "ee_delta",
        terminate_on_success: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if reward_type not in ("dense", "sparse"):
            raise ValueError(f"reward_type must be 'dense' or 'sparse', got {reward_type!r}")
        if positions not in ("seen", "unseen"):
            raise ValueError(f"positions must be 'seen' or 'unseen', got {positions!r}")
        if action_mode not in ("ee_delta", "joint_delta", "joint_pos"):
            raise ValueError(
                f"action_mode must be 'ee_delta', 'joint_delta' or 'joint_pos', got {action_mode!r}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.images, self.image_size, self.reward_type = images, image_size, reward_type
        self.positions, self.action_mode, self.render_mode = positions, action_mode, render_mode
        self.terminate_on_success = terminate_on_success
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._instruction = ""

    # ----------------------------------------------------------------------------------------------- set-up
    def _setup(self, xml: str) -> None:
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)  # scratch data for reset-time IK, never stepped
        self.n_substeps = round(1.0 / (CONTROL_HZ * self.model.opt.timestep))
        self.dt = self.n_substeps * self.model.opt.timestep
        self._arm_qpos = np.array(
            [self.model.jnt_qposadr[self.model.joint(f"joint{i}").id] for i in range(1, 8)]
        )
        self._arm_dof = np.array(
            [self.model.jnt_dofadr[self.model.joint(f"joint{i}").id] for i in range(1, 8)]
        )
        self._finger_qpos = np.array(
            [self.model.jnt_qposadr[self.model.joint(f"finger_{s}").id] for s in ("left", "right")]
        )
        self._tcp = self.model.site("tcp").id
        self._jacp = np.zeros((3, self.model.nv))
        self._jacr = np.zeros((3, self.model.nv))
        n_act = 5 if self.action_mode == "ee_delta" else 8
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_act,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space[Any]] = {
            "proprio": spaces.Box(-np.inf, np.inf, shape=(PROPRIO_DIM,), dtype=np.float32),
            "object": spaces.Box(-np.inf, np.inf, shape=(len(self.OBJECT_NAMES),), dtype=np.float32),
            "instruction": spaces.Text(max_length=96, charset=INSTRUCTION_CHARSET),
        }
        if self.images:
            for key in ("image_front", "image_wrist"):
                obs_spaces[key] = spaces.Box(
                    0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8
                )
        self.observation_space = spaces.Dict(obs_spaces)

    @property
    def observation_names(self) -> dict[str, tuple[str, ...]]:
        """Per-dimension names of the low-dimensional observation keys (recorded in collected stores)."""
        return {"proprio": PROPRIO_NAMES, "object": self.OBJECT_NAMES}

    @property
    def camera_calibrations(self) -> dict[str, dict[str, list]]:
        """The fixed cameras' pinhole models at ``image_size`` in OpenCV's conventions (recorded in collected
        stores): ``intrinsics`` (fx, fy, cx, cy) in pixels, (0, 0) the top-left pixel's centre;
        ``position`` of the optical centre and the world-from-camera ``rotation`` of a frame with x right,
        y down, z forward. The wrist camera moves with the arm and has none."""
        cam = self.model.camera("front")
        data = mujoco.MjData(self.model)
        mujoco.mj_kinematics(self.model, data)  # the front camera hangs from the world body: any pose will do
        mujoco.mj_camlight(self.model, data)
        f = (self.image_size / 2) / math.tan(math.radians(float(cam.fovy[0])) / 2)
        c = (self.image_size - 1) / 2  # MuJoCo's principal point is the image centre
        # MuJoCo's camera frame is x right, y up, looking along -z: flip y and z for OpenCV's.
        rotation = data.cam_xmat[cam.id].reshape(3, 3) * np.array([1.0, -1.0, -1.0])
        calibration = {
            "intrinsics": [f, f, c, c],
            "position": data.cam_xpos[cam.id].tolist(),
            "rotation": rotation.tolist(),
        }
        return {"image_front": calibration} if self.images else {}

    # ------------------------------------------------------------------------------------------ kinematics
    def _tcp_pose(self, data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
        return data.site_xpos[self._tcp].copy(), data.site_xmat[self._tcp].reshape(3, 3).copy()

    def _twist(self, rot: np.ndarray) -> float:
        # Angle of NOMINAL_ROT^T @ rot, which is ~ Rot_z(twist) while the tool axis stays at its nominal
        # direction; only its first column is needed.
        nominal_x, nominal_y = self.NOMINAL_ROT[:, 0], self.NOMINAL_ROT[:, 1]
        return math.atan2(float(nominal_y @ rot[:, 0]), float(nominal_x @ rot[:, 0]))

    def _ik_step(
        self,
        data: mujoco.MjData,
        pos_target: np.ndarray,
        rot_target: np.ndarray,
        q_rest: np.ndarray,
        null_gain: float,
    ) -> np.ndarray:
        """One damped-least-squares step towards the target pose; returns the joint change (7,)."""
        pos, rot = self._tcp_pose(data)
        err_rot = np.empty(3)
        mujoco.mju_subQuat(err_rot, _quat_of(rot_target), _quat_of(rot))
        err = np.concatenate([pos_target - pos, rot @ err_rot])  # orientation error rotated to world
        mujoco.mj_jacSite(self.model, data, self._jacp, self._jacr, self._tcp)
        jac = np.vstack([self._jacp[:, self._arm_dof], self._jacr[:, self._arm_dof]])  # (6, 7)
        # pinv = J^T (J J^T + lambda^2 I)^-1, computed as the transpose of one 6x6 solve with 7 right-hand
        # sides.
        pinv = np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), jac).T  # (7, 6)
        q = data.qpos[self._arm_qpos]
        # The nullspace term pulls the redundant elbow towards a rest posture so long episodes stay away from
        # limits.
        return pinv @ err + null_gain * (np.eye(7) - pinv @ jac) @ (q_rest - q)

    def solve_ik(self, pos: np.ndarray, rot: np.ndarray, q_init: np.ndarray, n_iter: int = 60) -> np.ndarray:
        """Joint configuration whose TCP is at (pos, rot), by iterating the DLS step on scratch data."""
        data = self._ik_data
        q = q_init.copy()
        for _ in range(n_iter):
            data.qpos[self._arm_qpos] = q
            mujoco.mj_kinematics(self.model, data)
            mujoco.mj_comPos(self.model, data)
            q = np.clip(q + self._ik_step(data, pos, rot, q_init, 0.1), Q_MIN, Q_MAX)
        return q

    # --------------------------------------------------------------------------------------------- control
    def _apply_action(self, action: np.ndarray) -> None:
        a = np.clip(action, -1.0, 1.0)
        q = self.data.qpos[self._arm_qpos]
        if self.action_mode == "ee_delta":
            pos, rot = self._tcp_pose(self.data)
            pos_target = np.clip(pos + POS_SCALE * a[:3], self.WORKSPACE_LOW, self.WORKSPACE_HIGH)
            twist = self._twist(rot) + ROT_SCALE * a[3]
            c, s = np.cos(twist), np.sin(twist)
            rot_target = self.NOMINAL_ROT @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
            dq = self._ik_step(self.data, pos_target, rot_target, self.Q_REST, 0.2)
        elif self.action_mode == "joint_delta":
            dq = 0.1 * a[:7]  # rad per step at |a| = 1
        else:  # joint_pos: absolute targets, [-1, 1] mapped onto each joint's range
            dq = Q_MIN + (a[:7] + 1) / 2 * (Q_MAX - Q_MIN) - q
        # Respect the Panda's joint speed limits: no target further than one control step at full speed.
        limit = QD_MAX * self.dt
        self.data.ctrl[:7] = np.clip(q + np.clip(dq, -limit, limit), Q_MIN, Q_MAX)
        # Gripper: -1 fully open (0.04 m per finger), +1 closed, as in robosuite.
        self.data.ctrl[7] = FINGER_MAX * (1.0 - a[-1]) / 2

    def _set_arm(self, q: np.ndarray, gripper_open: bool = True) -> None:
        self.data.qpos[self._arm_qpos] = q
        self.data.qvel[self._arm_dof] = 0.0
        self.data.ctrl[:7] = q
        width = FINGER_MAX if gripper_open else 0.0
        self.data.qpos[self._finger_qpos] = width
        self.data.ctrl[7] = width

    # ---------------------------------------------------------------------------------------------- state
    def _proprio(self) -> np.ndarray:
        pos, rot = self._tcp_pose(self.data)
        twist = self._twist(rot)
        return np.concatenate(
            [
                self.data.qpos[self._arm_qpos],
                self.data.qvel[self._arm_dof],
                pos,
                _quat_of(rot),
                [np.cos(twist), np.sin(twist), self.data.qpos[self._finger_qpos].sum()],
            ]
        )

    def _object_state(self) -> np.ndarray:
        raise NotImplementedError

    def get_state(self) -> np.ndarray:
        """The flat state vector ``concat(proprio, object)`` (float32) that ``reward_fn`` reads."""
        return np.concatenate([self._proprio(), self._object_state()]).astype(np.float32)

    def reward_terms(self, state: Any, action: Any, next_state: Any) -> dict[str, Any]:
        raise NotImplementedError

    def success_fn(self, state: Any) -> Any:
        raise NotImplementedError

    def reward_fn(self, state: Any, action: Any, next_state: Any) -> Any:
        """Reward of a batch of transitions (numpy or torch, leading batch dims); pure in its inputs."""
        if self.reward_type == "sparse":
            return self.success_fn(next_state) * 1.0
        return self.reward_terms(state, action, next_state)["reward"]

    # ----------------------------------------------------------------------------------------- gym API
    def _reset_task(self) -> None:
        raise NotImplementedError

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self._reset_task()
        mujoco.mj_forward(self.model, self.data)
        self._state = self.get_state()
        return self._obs(), {"success": bool(self.success_fn(self._state))}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float32)
        self._apply_action(action.astype(np.float64))
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        # mj_step leaves positions-dependent quantities one substep stale; refresh them for the observation
        # and the next IK solve (kinematics + com positions are what mj_jacSite needs).
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        state, self._state = self._state, self.get_state()
        # reward_fn's two cases, spelled out so the dense terms are computed once and also go into info.
        terms = self.reward_terms(state, action, self._state)
        success = bool(self.success_fn(self._state))
        reward = float(terms["reward"]) if self.reward_type == "dense" else float(success)
        info = {k: float(v) for k, v in terms.items() if k != "reward"}
        info["success"] = success
        return self._obs(), reward, success and self.terminate_on_success, False, info

    def _render_camera(self, camera: str, size: int) -> np.ndarray:
        if size not in self._renderers:
            self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer = self._renderers[size]
        renderer.update_scene(self.data, camera)
        return renderer.render().copy()

    def _obs(self) -> dict[str, Any]:
        n = PROPRIO_DIM
        obs: dict[str, Any] = {
            "proprio": self._state[:n].copy(),
            "object": self._state[n:].copy(),
            "instruction": self._instruction,
        }
        if self.images:
            mujoco.mj_forward(self.model, self.data)  # camera poses are only updated by a full forward pass
            obs["image_front"] = self._render_camera("front", self.image_size)
            obs["image_wrist"] = self._render_camera("wrist", self.image_size)
        return obs

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode != "rgb_array":
            return None
        mujoco.mj_forward(self.model, self.data)
        return self._render_camera("front", 256)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
