"""robocl door family: HyperCRL's T1..T5 plus damping extras; API, latch, success, reward and expert."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import robocl_envs
import torch
from gymnasium.utils.env_checker import check_env
from robocl_envs.door import TASKS, UNLOCK, DoorEnv

DOOR_IDS = robocl_envs.FAMILIES["door"] + robocl_envs.FAMILIES["door_extra"]


def set_joints(env: DoorEnv, door: float, knob: float = 0.0) -> np.ndarray:
    env.data.qpos[env._hinge.qposadr[0]] = door
    if env._knob is not None:
        env.data.qpos[env._knob.qposadr[0]] = knob
    mujoco.mj_forward(env.model, env.data)
    return env.get_state()


@pytest.mark.parametrize("env_id", DOOR_IDS)
def test_check_env(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=env_id != DOOR_IDS[0])


def test_family_order_is_hypercrl_s():
    assert robocl_envs.FAMILIES["door"] == [
        f"robocl/Door-{n}-v0" for n in ("Pull", "RoundCW", "LeverCW", "RoundCCW", "LeverCCW")
    ]
    ranges = [gym.make(i).unwrapped.task.knob_range for i in robocl_envs.FAMILIES["door"]]
    assert ranges == [(0.0, 0.0), (-1.57, 0.0), (-1.57, 0.0), (0.0, 1.57), (0.0, 1.57)]
    heavy = gym.make("robocl/Door-PullHeavy-v0").unwrapped
    assert heavy.model.dof_damping[heavy._hinge.dofadr[0]] == pytest.approx(8.0)
    assert gym.spec(DOOR_IDS[0]).max_episode_steps == 200


def test_observation_layout():
    env = gym.make("robocl/Door-RoundCW-v0")
    obs, _ = env.reset(seed=0)
    assert obs["object"].shape == (7,) and obs["object"].dtype == np.float32
    assert env.unwrapped.get_state().shape == (31,)
    # The arm starts 10 cm in front of the grasp point with the tool pointing at the door.
    np.testing.assert_allclose(obs["proprio"][14:17], obs["object"][:3] - [0.10, 0.0, 0.0], atol=0.01)
    assert np.arctan2(obs["proprio"][22], obs["proprio"][21]) == pytest.approx(0.0, abs=0.02)
    assert obs["instruction"] == "turn the knob and open the door"


def test_same_seed_gives_the_same_episode(rollout):
    obs_a, rewards_a = rollout(gym.make("robocl/Door-LeverCCW-v0"), seed=5, n_steps=20)
    obs_b, rewards_b = rollout(gym.make("robocl/Door-LeverCCW-v0"), seed=5, n_steps=20)
    for a, b in zip(obs_a, obs_b, strict=True):
        np.testing.assert_array_equal(a["object"], b["object"])
        np.testing.assert_array_equal(a["proprio"], b["proprio"])
    assert rewards_a == rewards_b


@pytest.mark.parametrize("positions", ["seen", "unseen"])
def test_door_position_is_drawn_from_its_region(positions):
    env = DoorEnv(positions=positions)
    for seed in range(30):
        env.reset(seed=seed)
        xy = env.model.body_pos[env._frame][:2]
        assert env.region.contains(xy)
        assert not env.REGIONS["seen" if positions == "unseen" else "unseen"].contains(xy)


def test_success_detection_on_hand_built_states():
    env = DoorEnv(task=TASKS["RoundCCW"])
    env.reset(seed=0)
    open_state, ajar_state = set_joints(env, 0.25, 0.3), set_joints(env, 0.12, 0.3)
    assert bool(env.success_fn(open_state)) and not bool(env.success_fn(ajar_state))
    assert env.success_fn(np.stack([open_state, ajar_state])).tolist() == [True, False]
    terms = env.reward_terms(open_state, np.zeros(5), open_state)
    assert float(terms["opening"]) == pytest.approx(50 * 0.25 + 20 * 0.3, abs=1e-4)
    pull = DoorEnv(task=TASKS["Pull"])
    pull.reset(seed=0)
    state = set_joints(pull, 0.25)
    assert float(pull.reward_terms(state, np.zeros(5), state)["opening"]) == pytest.approx(12.5, abs=1e-4)


def test_latch_holds_the_door_until_the_knob_is_turned():
    env = DoorEnv(task=TASKS["RoundCW"])
    env.reset(seed=0)
    latch = env._latch
    set_joints(env, 0.0, 0.0)
    env._update_latch()
    assert env.data.eq_active[latch]
    door_dof = env._hinge.dofadr[0]
    for _ in range(5):  # pull on the latched door
        env.data.qfrc_applied[door_dof] = 20.0
        env.step(np.zeros(5, np.float32))
    assert env.get_state()[27] < 0.01
    set_joints(env, 0.0, -(UNLOCK + 0.05))
    env._update_latch()
    assert not env.data.eq_active[latch]
    set_joints(env, 0.1, 0.0)  # an open door does not re-latch when the knob springs back
    env._update_latch()
    assert not env.data.eq_active[latch]


def test_reward_fn_on_torch_batches_equals_the_env_reward():
    env = gym.make("robocl/Door-LeverCW-v0")
    u = env.unwrapped
    env.reset(seed=2)
    env.action_space.seed(2)
    states, actions, next_states, rewards = [], [], [], []
    for _ in range(20):
        states.append(u.get_state())
        actions.append(env.action_space.sample())
        _, reward, *_ = env.step(actions[-1])
        next_states.append(u.get_state())
        rewards.append(reward)
    s, a, s2 = (torch.from_numpy(np.stack(x)).reshape(2, 10, -1) for x in (states, actions, next_states))
    np.testing.assert_allclose(u.reward_fn(s, a, s2).reshape(-1).numpy(), rewards, atol=1e-4)


def test_expert_succeeds_on_20_seeds(expert_successes):
    assert expert_successes("robocl/Door-RoundCCW-v0", range(20)) >= 19


@pytest.mark.slow
@pytest.mark.parametrize("env_id", DOOR_IDS)
def test_expert_succeeds_on_100_seeds(expert_successes, env_id):
    assert expert_successes(env_id, range(100)) >= 95
