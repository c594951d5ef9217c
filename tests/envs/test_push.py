"""robocl push family: HyperCRL's five density tasks plus extras; API, physics set-up, reward and expert."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import robocl_envs
import torch
from gymnasium.utils.env_checker import check_env
from robocl_envs.push import GOAL_OFFSET, PUSH_Z, PushEnv, PushTask

PUSH_IDS = robocl_envs.FAMILIES["push"] + robocl_envs.FAMILIES["push_extra"]
HALF_VOLUME = 0.16 * 0.08 * 0.08  # m^3, one 16 x 8 x 8 cm half


def set_block(env: PushEnv, xy: np.ndarray, yaw: float) -> np.ndarray:
    adr = env._block_qpos
    env.data.qpos[adr : adr + 7] = (*xy, 0.04, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
    mujoco.mj_forward(env.model, env.data)
    return env.get_state()


@pytest.mark.parametrize("env_id", PUSH_IDS)
def test_check_env(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=env_id != PUSH_IDS[0])


def test_density_family_is_hypercrl_s_in_order():
    expected = [(500, 500), (100, 500), (500, 100), (500, 250), (250, 500)]
    assert robocl_envs.FAMILIES["push"] == [f"robocl/Push-Density{i}-v0" for i in range(5)]
    for env_id, (left, right) in zip(robocl_envs.FAMILIES["push"], expected, strict=True):
        env = gym.make(env_id).unwrapped
        assert env.model.geom("left").pos[1] > 0 > env.model.geom("right").pos[1]  # left half is +y
        masses = [env.model.body("block").mass[0]]
        assert masses[0] == pytest.approx((left + right) * HALF_VOLUME, rel=1e-6)
        # Centre of mass shifts towards the denser half.
        com_y = env.model.body("block").ipos[1]
        assert com_y == pytest.approx(0.04 * (left - right) / (left + right), abs=1e-6)
        assert gym.spec(env_id).max_episode_steps == 100


def test_observation_and_action_spaces():
    env = gym.make(PUSH_IDS[0])
    obs, _ = env.reset(seed=0)
    assert obs["proprio"].shape == (24,) and obs["object"].shape == (12,)
    assert env.action_space.shape == (2,)  # HyperCRL's planar (dx, dy)
    assert gym.make(PUSH_IDS[0], planar=False).action_space.shape == (5,)
    assert obs["instruction"] == "push the block onto the target outline"
    # Reset places the tool 5 cm behind the middle of the block's rear face, at pushing height.
    np.testing.assert_allclose(
        obs["proprio"][14:17], [obs["object"][0] - 0.13, obs["object"][1], PUSH_Z], atol=0.02
    )
    np.testing.assert_allclose(
        obs["object"][8:10], obs["object"][:2] + np.array([GOAL_OFFSET, 0.0]), atol=0.01
    )


def test_same_seed_gives_the_same_episode(rollout):
    obs_a, rewards_a = rollout(gym.make(PUSH_IDS[1]), seed=3, n_steps=20)
    obs_b, rewards_b = rollout(gym.make(PUSH_IDS[1]), seed=3, n_steps=20)
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a["object"], b["object"])
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
    assert rewards_a == rewards_b


@pytest.mark.parametrize("positions", ["seen", "unseen"])
def test_block_starts_inside_its_region(positions):
    env = PushEnv(positions=positions)
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        assert env.region.contains(obs["object"][:2])
        assert not env.REGIONS["seen" if positions == "unseen" else "unseen"].contains(obs["object"][:2])


def test_hypercrl_reward_and_success_on_hand_built_states():
    env = PushEnv()
    env.reset(seed=0)
    goal = env.get_state()[32:34]
    action = np.array([0.6, -0.8], np.float32)  # |a| = 1
    at_goal = set_block(env, goal, 0.0)
    terms = env.reward_terms(at_goal, action, at_goal)
    assert float(terms["closeness"]) == pytest.approx(4.0, abs=1e-5)
    assert float(env.reward_fn(at_goal, action, at_goal)) == pytest.approx(4.0 - 0.25, abs=1e-5)
    assert bool(env.success_fn(at_goal))
    short = set_block(env, goal - [0.05, 0.0], 0.0)
    assert float(env.reward_terms(short, action, short)["closeness"]) == pytest.approx(
        4 * (1 - np.tanh(0.5)), abs=1e-5
    )
    assert not bool(env.success_fn(short))
    turned = set_block(env, goal, 0.5)  # right place, wrong heading: corners 3.9 cm off
    assert not bool(env.success_fn(turned))
    assert float(env.reward_terms(turned, action, turned)["closeness"]) < 3.0
    sparse = PushEnv(reward_type="sparse")
    assert float(sparse.reward_fn(at_goal, action, at_goal)) == 1.0


def test_reward_fn_on_torch_batches_equals_the_env_reward():
    env = gym.make(PUSH_IDS[2])
    u = env.unwrapped
    env.reset(seed=4)
    env.action_space.seed(4)
    states, actions, next_states, rewards = [], [], [], []
    for _ in range(24):
        states.append(u.get_state())
        actions.append(env.action_space.sample())
        _, reward, *_ = env.step(actions[-1])
        next_states.append(u.get_state())
        rewards.append(reward)
    s, a, s2 = (torch.from_numpy(np.stack(x)).reshape(4, 6, -1) for x in (states, actions, next_states))
    np.testing.assert_allclose(u.reward_fn(s, a, s2).reshape(-1).numpy(), rewards, atol=1e-5)
    full = PushEnv(planar=False)  # the gripper channel is left out of the action penalty
    state = full.reset(seed=0)[0]
    flat = full.get_state()
    penalty = full.reward_terms(flat, np.array([0.0, 0.0, 0.0, 0.0, 1.0]), flat)["action_penalty"]
    assert float(penalty) == 0.0 and state["proprio"].shape == (24,)


def test_extra_tasks_differ_in_shape_and_friction():
    cylinder = gym.make("robocl/Push-Cylinder-v0").unwrapped
    assert cylinder.model.geom("left").type == mujoco.mjtGeom.mjGEOM_CYLINDER
    slippery = gym.make("robocl/Push-SlipperyLeft-v0").unwrapped
    assert slippery.model.geom("left").friction[0] == pytest.approx(0.2)
    assert slippery.model.geom("right").friction[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        PushEnv(task=PushTask(shape="sphere"))


def test_expert_succeeds_on_20_seeds(expert_successes):
    assert expert_successes("robocl/Push-Density1-v0", range(20)) >= 19


@pytest.mark.slow
@pytest.mark.parametrize("env_id", PUSH_IDS)
def test_expert_succeeds_on_100_seeds(expert_successes, env_id):
    assert expert_successes(env_id, range(100)) >= 95


@pytest.mark.slow
def test_expert_on_unseen_positions(expert_successes):
    assert expert_successes("robocl/Push-Density2-v0", range(100), positions="unseen") >= 95
