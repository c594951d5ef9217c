"""The robocl Panda: Franka kinematics and limits, the differential-IK controller, regions, reward helpers."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import robocl_envs
import torch
from robocl_envs import rewards as R
from robocl_envs.door import DoorEnv
from robocl_envs.panda import PROPRIO_DIM, Q_READY, Region, scene_xml
from robocl_envs.pick_place import PickPlaceEnv
from robocl_envs.push import PushEnv

# refs/panda.md, typed in independently of envs/panda.py: (a_{i-1}, d_i, alpha_{i-1}) for joints 1..7, flange.
PANDA_MDH = [
    (0, 0.333, 0),
    (0, 0, -np.pi / 2),
    (0, 0.316, np.pi / 2),
    (0.0825, 0, np.pi / 2),
    (-0.0825, 0.384, -np.pi / 2),
    (0, 0, np.pi / 2),
    (0.088, 0, np.pi / 2),
    (0, 0.107, 0),
]
PANDA_Q_MIN = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]
PANDA_Q_MAX = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]
PANDA_MASSES = [4.970684, 0.646926, 3.228604, 3.587895, 1.225946, 1.666555, 0.735522]


def mdh_tcp(q: np.ndarray) -> np.ndarray:
    """Tool-centre-point pose (4x4) by Craig's modified DH: Rx(alpha) Tx(a) Rz(theta) Tz(d) per joint."""
    pose = np.eye(4)
    for (a, d, alpha), theta in zip(PANDA_MDH, [*q, 0.0], strict=True):
        ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
        pose = pose @ np.array(
            [[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]]
        )
    c, s = np.cos(-np.pi / 4), np.sin(-np.pi / 4)  # Franka Hand TCP: 0.1034 m along z, rotated -pi/4 about z
    return pose @ np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0.1034], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def arm() -> tuple[mujoco.MjModel, mujoco.MjData]:
    model = mujoco.MjModel.from_xml_string(scene_xml(""))
    return model, mujoco.MjData(model)


@pytest.mark.parametrize(
    "q",
    [
        Q_READY,
        np.array([0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0]),
        np.array([0.3, -0.5, 0.2, -2.0, 0.4, 1.8, -0.6]),
        np.array([-1.2, 0.9, -2.1, -0.3, 2.5, 3.2, 2.0]),
    ],
)
def test_forward_kinematics_match_panda_modified_dh(arm, q):
    model, data = arm
    data.qpos[:7] = q
    mujoco.mj_kinematics(model, data)
    expected = mdh_tcp(q)
    tcp = model.site("tcp").id
    np.testing.assert_allclose(data.site_xpos[tcp], expected[:3, 3], atol=1e-6)
    np.testing.assert_allclose(data.site_xmat[tcp].reshape(3, 3), expected[:3, :3], atol=1e-6)


def test_ready_pose_puts_the_tool_down_in_front_of_the_base(arm):
    model, data = arm
    data.qpos[:7] = Q_READY
    mujoco.mj_kinematics(model, data)
    np.testing.assert_allclose(data.site_xpos[model.site("tcp").id], [0.306891, 0.0, 0.486882], atol=1e-6)
    np.testing.assert_allclose(
        data.site_xmat[model.site("tcp").id].reshape(3, 3), np.diag([1, -1, -1]), atol=1e-6
    )


def test_joint_limits_torques_and_masses_are_the_panda_s(arm):
    model, _ = arm
    for i in range(7):
        joint = model.joint(f"joint{i + 1}")
        np.testing.assert_allclose(joint.range, [PANDA_Q_MIN[i], PANDA_Q_MAX[i]], atol=1e-4)
        assert model.body(f"link{i + 1}").mass[0] == pytest.approx(PANDA_MASSES[i], abs=1e-5)
    np.testing.assert_allclose(model.actuator_forcerange[:7, 1], [87, 87, 87, 87, 12, 12, 12])
    np.testing.assert_allclose(model.jnt_range[model.joint("finger_left").id], [0.0, 0.04])
    assert model.opt.timestep == 0.005
    primitives = {
        mujoco.mjtGeom.mjGEOM_PLANE,
        mujoco.mjtGeom.mjGEOM_BOX,
        mujoco.mjtGeom.mjGEOM_CAPSULE,
        mujoco.mjtGeom.mjGEOM_CYLINDER,
        mujoco.mjtGeom.mjGEOM_SPHERE,
    }
    assert {int(t) for t in model.geom_type} <= {int(t) for t in primitives}  # no meshes


def test_end_effector_actions_move_the_tool_by_the_commanded_delta():
    env = PickPlaceEnv()
    obs, _ = env.reset(seed=0)
    assert env.dt == pytest.approx(0.1)  # 10 Hz control
    start = obs["proprio"][14:17].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0, -1.0], np.float32))
    moved = obs["proprio"][14:17] - start
    assert 0.135 < moved[0] < 0.165  # 3 steps of +5 cm, tracked to within 10 %
    assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01
    twist = np.arctan2(obs["proprio"][22], obs["proprio"][21])
    obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 1.0, 1.0], np.float32))
    turned = np.arctan2(obs["proprio"][22], obs["proprio"][21]) - twist
    assert 0.15 < turned <= 0.262  # 0.5 rad asked, capped by joint 7's 2.61 rad/s over 0.1 s
    for _ in range(2):
        obs, *_ = env.step(np.array([0.0, 0.0, 0.0, 0.0, 1.0], np.float32))
    assert obs["proprio"][23] < 0.002  # closed on nothing
    assert np.hypot(obs["proprio"][21], obs["proprio"][22]) == pytest.approx(1.0, abs=1e-5)


def test_proprio_layout_matches_the_simulator():
    env = PickPlaceEnv()
    obs, _ = env.reset(seed=3)
    proprio = obs["proprio"]
    assert proprio.shape == (PROPRIO_DIM,) and proprio.dtype == np.float32
    np.testing.assert_allclose(proprio[:7], env.data.qpos[:7], atol=1e-6)
    np.testing.assert_allclose(proprio[14:17], env.data.site_xpos[env._tcp], atol=1e-6)
    assert proprio[23] == pytest.approx(0.08, abs=1e-4)  # gripper starts open
    np.testing.assert_allclose(env.get_state()[:PROPRIO_DIM], proprio)


def test_joint_action_modes():
    env = PickPlaceEnv(action_mode="joint_pos")
    assert env.action_space.shape == (8,)
    env.reset(seed=0)
    lo, hi = env.model.jnt_range[:7].T
    hold_ready = np.append(2 * (Q_READY - lo) / (hi - lo) - 1, -1.0).astype(np.float32)
    for _ in range(5):
        obs, *_ = env.step(hold_ready)
    np.testing.assert_allclose(obs["proprio"][:7], Q_READY, atol=0.05)
    env = PickPlaceEnv(action_mode="joint_delta")
    obs, _ = env.reset(seed=0)
    before = obs["proprio"][:7].copy()
    obs, *_ = env.step(np.array([1, 0, 0, 0, 0, 0, 0, -1], np.float32))
    assert 0.08 < obs["proprio"][0] - before[0] < 0.12  # +0.1 rad on joint 1
    np.testing.assert_allclose(obs["proprio"][1:7], before[1:7], atol=0.02)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reward_type": "shaped"},
        {"positions": "all"},
        {"action_mode": "torque"},
        {"render_mode": "human"},
        {"image_size": 8},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        PickPlaceEnv(**kwargs)


@pytest.mark.parametrize("env_cls", [PickPlaceEnv, PushEnv, DoorEnv])
def test_seen_and_unseen_regions_are_disjoint(env_cls):
    seen, unseen = env_cls.REGIONS["seen"], env_cls.REGIONS["unseen"]
    xs, ys = np.meshgrid(np.arange(-0.2, 1.2, 0.004), np.arange(-0.6, 0.6, 0.004))
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    in_seen = np.array([seen.contains(p) for p in grid])
    in_unseen = np.array([unseen.contains(p) for p in grid])
    assert in_seen.sum() > 100 and in_unseen.sum() > 100
    assert not np.any(in_seen & in_unseen)
    rng = np.random.default_rng(0)
    for region, other in ((seen, unseen), (unseen, seen)):
        samples = [region.sample(rng) for _ in range(200)]
        assert all(region.contains(p) and not other.contains(p) for p in samples)


def test_region_ring_excludes_its_hole():
    ring = Region(center=(0.5, 0.0), outer=(0.2, 0.2), inner=(0.1, 0.1))
    assert not ring.contains(np.array([0.55, 0.05]))
    assert ring.contains(np.array([0.65, 0.0]))
    assert not ring.contains(np.array([0.75, 0.0]))


def test_reward_helpers_agree_between_numpy_and_torch():
    rng = np.random.default_rng(0)
    quat = rng.normal(size=(6, 4)).astype(np.float32)
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    yaw_np, yaw_torch = R.yaw_from_quat(quat), R.yaw_from_quat(torch.from_numpy(quat))
    np.testing.assert_allclose(yaw_torch.numpy(), yaw_np, atol=1e-6)
    axis = R.tool_axis_from_quat(quat)
    for q, z in zip(quat, axis, strict=True):
        mat = np.zeros(9)
        mujoco.mju_quat2Mat(mat, q.astype(np.float64))
        np.testing.assert_allclose(z, mat.reshape(3, 3)[:, 2], atol=1e-5)
    assert R.max_last(torch.tensor([[1.0, 3.0], [2.0, 0.5]])).tolist() == [3.0, 2.0]


def test_every_arm_task_is_registered_in_its_family():
    families = robocl_envs.FAMILIES
    assert families["pick_place"] == ["robocl/PickPlace-v0"]
    assert len(families["push"]) == 5 and len(families["push_extra"]) == 4
    assert len(families["door"]) == 5 and len(families["door_extra"]) == 2
    assert gym.spec("robocl/PickPlace-v0").max_episode_steps == 120
