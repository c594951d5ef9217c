"""robocl/PickPlace-v0: API conformance, seeding, regions, success, reward function, images and the expert."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import robocl_envs  # noqa: F401  (registers the tasks)
import torch
from gymnasium.utils.env_checker import check_env
from robocl_envs.experts import PickPlaceExpert, make_expert
from robocl_envs.pick_place import COLOURS, SHAPES, PickPlaceEnv

ENV_ID = "robocl/PickPlace-v0"


def place_object(env: PickPlaceEnv, xy: np.ndarray, z: float) -> np.ndarray:
    """Put the object at (xy, z) at rest and return the resulting flat state."""
    adr = env._obj_qpos
    env.data.qpos[adr : adr + 7] = (*xy, z, 1.0, 0.0, 0.0, 0.0)
    env.data.qvel[env._obj_dof : env._obj_dof + 6] = 0.0
    mujoco.mj_forward(env.model, env.data)
    return env.get_state()


def test_check_env_state_mode():
    check_env(gym.make(ENV_ID).unwrapped)


def test_check_env_image_mode(can_render):
    if not can_render:
        pytest.skip("no offscreen OpenGL here")
    check_env(gym.make(ENV_ID, images=True, image_size=32).unwrapped)


def test_observation_spaces():
    env = gym.make(ENV_ID)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"proprio", "object", "instruction"}
    assert obs["proprio"].shape == (24,) and obs["object"].shape == (13,)
    assert obs["proprio"].dtype == np.float32 and obs["object"].dtype == np.float32
    assert env.action_space.shape == (5,) and info == {"success": False}
    assert env.unwrapped.get_state().shape == (37,) and env.unwrapped.get_state().dtype == np.float32
    assert obs in env.observation_space


def test_same_seed_gives_the_same_episode(rollout):
    obs_a, rewards_a = rollout(gym.make(ENV_ID), seed=7, n_steps=25)
    obs_b, rewards_b = rollout(gym.make(ENV_ID), seed=7, n_steps=25)
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
        np.testing.assert_array_equal(a["object"], b["object"])
        assert a["instruction"] == b["instruction"]
    assert rewards_a == rewards_b
    obs_c, _ = rollout(gym.make(ENV_ID), seed=8, n_steps=0)
    assert not np.array_equal(obs_a[0]["object"], obs_c[0]["object"])


@pytest.mark.parametrize("positions", ["seen", "unseen"])
def test_objects_start_inside_their_region(positions):
    env = PickPlaceEnv(positions=positions)
    other = env.REGIONS["unseen" if positions == "seen" else "seen"]
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        assert env.region.contains(obs["object"][:2]) and not other.contains(obs["object"][:2])
        assert np.linalg.norm(obs["object"][:2] - obs["object"][10:12]) > 0.08  # never starts on its plate
        assert not info["success"]


def test_instruction_names_the_object_and_the_target_plate():
    env = PickPlaceEnv()
    seen_shapes = set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        assert obs["instruction"] == f"put the {env.colour} {env.shape} on the {env.target_colour} plate"
        assert env.colour in COLOURS and env.target_colour in COLOURS
        target_rgba = env.model.geom_rgba[env._plate_geoms[0][0]][:3]
        np.testing.assert_allclose(target_rgba, COLOURS[env.target_colour], atol=1e-6)
        seen_shapes.add(env.shape)
    assert seen_shapes == set(SHAPES)


def test_success_detection_on_hand_built_states():
    env = PickPlaceEnv()
    env.reset(seed=0)
    zone = env.get_state()[34:37]
    placed = place_object(env, zone[:2] + np.array([0.02, -0.01]), 0.02)
    assert bool(env.success_fn(placed))
    assert env.reward_fn(placed, np.zeros(5), placed) == pytest.approx(1.0)
    beside = place_object(env, zone[:2] + np.array([0.09, 0.0]), 0.02)
    assert not bool(env.success_fn(beside))
    held_above = place_object(env, zone[:2], 0.12)
    assert not bool(env.success_fn(held_above))
    # Lifted over the plate, not yet placed: 0.2 reach + 0.2 lift + 0.4 place, all < 0.8.
    assert 0.4 < float(env.reward_fn(held_above, np.zeros(5), held_above)) < 0.8
    batch = np.stack([placed, beside, held_above])
    assert env.success_fn(batch).tolist() == [True, False, False]


def test_an_object_off_the_table_comes_to_rest_on_the_floor():
    """The floor 0.8 m below the table top collides: a demonstration that knocks the object off the table
    must not leave it falling for the rest of the episode (one reached z = -312 m)."""
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=0)
    place_object(env, np.array([-0.3, 0.0]), 0.05)  # behind the table's back edge (x = -0.1)
    for _ in range(30):  # 3 s
        env.step(np.zeros(env.action_space.shape, np.float32))
    obj = env.data.xpos[env._obj]
    assert -0.8 < obj[2] < -0.7, obj


@pytest.mark.parametrize("reward_type", ["dense", "sparse"])
def test_reward_fn_on_torch_batches_equals_the_env_reward(reward_type):
    env = PickPlaceEnv(reward_type=reward_type)
    env.reset(seed=1)
    expert = make_expert(env, noise=0.3, seed=1)  # noisy expert: visits reach, lift and place states
    states, actions, next_states, rewards = [], [], [], []
    obs, _ = env.reset(seed=1)
    for _ in range(60):
        state = env.get_state()
        action = expert(obs)
        obs, reward, *_ = env.step(action)
        states.append(state)
        actions.append(action)
        next_states.append(env.get_state())
        rewards.append(reward)
    s, a, s2 = (torch.from_numpy(np.stack(x)) for x in (states, actions, next_states))
    batched = env.reward_fn(s.reshape(3, 20, -1), a.reshape(3, 20, -1), s2.reshape(3, 20, -1))
    assert batched.shape == (3, 20) and isinstance(batched, torch.Tensor)
    np.testing.assert_allclose(batched.reshape(-1).numpy(), rewards, atol=1e-5)
    np.testing.assert_allclose(
        env.reward_fn(np.stack(states), np.stack(actions), np.stack(next_states)), rewards, atol=1e-6
    )
    assert len(set(np.round(rewards, 4))) > (3 if reward_type == "dense" else 1)


def test_images_are_not_blank_and_differ_between_cameras(can_render):
    if not can_render:
        pytest.skip("no offscreen OpenGL here")
    env = gym.make(ENV_ID, images=True, image_size=64)
    obs, _ = env.reset(seed=0)
    front, wrist = obs["image_front"], obs["image_wrist"]
    assert front.shape == (64, 64, 3) and front.dtype == np.uint8 and wrist.shape == (64, 64, 3)
    assert front.std() > 10 and wrist.std() > 10
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    obs2, *_ = env.step(np.array([0.0, 0.0, -1.0, 0.0, -1.0], np.float32))
    assert not np.array_equal(obs2["image_wrist"], wrist)  # the wrist camera moves with the hand
    assert env.unwrapped.render() is None  # no render_mode given
    rendered = gym.make(ENV_ID, render_mode="rgb_array")
    rendered.reset(seed=0)
    assert rendered.render().shape == (256, 256, 3)


def test_the_front_camera_calibration_projects_onto_the_rendered_object(can_render):
    """The recorded pinhole model (OpenCV conventions) puts the camera's look-at point at the image centre
    and the object where it is drawn: the centroid of the pixels that change when the object is hidden."""
    if not can_render:
        pytest.skip("no offscreen OpenGL here")
    from robocl.nets.vision import PinholeCamera
    from robocl.store import CameraCalibration

    env = gym.make(ENV_ID, images=True, image_size=64).unwrapped
    obs, _ = env.reset(seed=0)
    calibration = CameraCalibration.from_dict(env.camera_calibrations["image_front"])
    assert set(env.camera_calibrations) == {"image_front"}  # the wrist camera moves: none
    camera = PinholeCamera(calibration)
    centre = camera.project(torch.tensor([0.45, 0.0, 0.05]))  # scene_xml's default look-at point
    torch.testing.assert_close(centre, torch.tensor([31.5, 31.5]))
    model = env.model
    for geom in np.flatnonzero(model.geom_bodyid == model.body("object").id):
        model.geom_rgba[geom, 3] = 0.0
    hidden = env._render_camera("front", 64)
    rows, cols = np.nonzero(np.abs(obs["image_front"].astype(int) - hidden.astype(int)).sum(-1) > 30)
    drawn = torch.tensor([cols.mean(), rows.mean()], dtype=torch.float32)
    where = camera.project(torch.as_tensor(obs["object"][:3]))
    assert (where - drawn).abs().max() < 1.5, (where, drawn)


def test_expert_knobs_change_its_actions():
    env = gym.make(ENV_ID)
    obs, _ = env.reset(seed=0)
    clean, noisy = make_expert(env), make_expert(env, noise=0.2, seed=3)
    assert isinstance(clean, PickPlaceExpert)
    a_clean, a_noisy = clean(obs), noisy(obs)
    assert a_clean.shape == (5,) and a_clean.dtype == np.float32 and np.all(np.abs(a_noisy) <= 1)
    assert not np.allclose(a_clean, a_noisy)
    hesitant = make_expert(env, hesitation=1.0, seed=0)
    assert np.all(hesitant(obs)[:4] == 0.0) and hesitant(obs)[4] == -1.0  # paused, gripper held open
    with pytest.raises(ValueError):
        make_expert(env, detour=1.5)
    with pytest.raises(ValueError):
        make_expert(gym.make(ENV_ID, action_mode="joint_delta"))


def test_degraded_expert_still_finishes_but_takes_longer():
    def episode_length(**knobs):
        env = gym.make(ENV_ID)
        expert = make_expert(env, seed=0, **knobs)
        obs, _ = env.reset(seed=2)
        expert.reset()
        for t in range(120):
            obs, _, _, _, info = env.step(expert(obs))
            if info["success"]:
                return t
        return 120

    clean, degraded = episode_length(), episode_length(hesitation=0.1, detour=1.0)
    assert clean < 60 and clean < degraded


def test_expert_succeeds_on_20_seen_seeds(expert_successes):
    assert expert_successes(ENV_ID, range(20)) >= 19


@pytest.mark.slow
@pytest.mark.parametrize("positions", ["seen", "unseen"])
def test_expert_succeeds_on_100_seeds(expert_successes, positions):
    assert expert_successes(ENV_ID, range(100), positions=positions) >= 95
