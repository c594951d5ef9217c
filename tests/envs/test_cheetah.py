"""The half-cheetah body-size family: API contract, generated models, reward and determinism."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import robocl_envs
import torch
from gymnasium.utils.env_checker import check_env
from robocl_envs import cheetah

IDS = robocl_envs.FAMILIES["cheetah"]
SCALED_GEOMS = {
    "robocl/HalfCheetah-Standard-v0": set(),
    "robocl/HalfCheetah-BigTorso-v0": {"torso"},
    "robocl/HalfCheetah-BigThigh-v0": {"bthigh", "fthigh"},
    "robocl/HalfCheetah-BigShin-v0": {"bshin", "fshin"},
    "robocl/HalfCheetah-BigFoot-v0": {"bfoot", "ffoot"},
}


def _model(env_id: str) -> mujoco.MjModel:
    env = gym.make(env_id)
    model = env.unwrapped.model
    env.close()
    return model


def test_family_is_registered_in_hypercrl_order():
    assert list(SCALED_GEOMS) == IDS
    assert cheetah.register() == {"cheetah": IDS}  # a second call keeps the registrations
    for env_id in IDS:
        assert gym.spec(env_id).max_episode_steps == 1000


# gymnasium's checker warns about the unbounded observation Box, as it does for its own MuJoCo envs.
@pytest.mark.filterwarnings("ignore:.*observation space m.* value is")
@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space.shape == (18,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (6,)
    assert env.unwrapped.dt == pytest.approx(0.05)
    env.close()


def test_standard_is_gymnasiums_v5_model(tmp_path, monkeypatch):
    # The stock file still uses settotalmass, whose deprecation warning MuJoCo logs to ./MUJOCO_LOG.TXT.
    monkeypatch.chdir(tmp_path)
    stock = gym.make("HalfCheetah-v5").unwrapped.model
    ours = _model("robocl/HalfCheetah-Standard-v0")
    fields = ("geom_size", "geom_pos", "body_pos", "body_mass", "body_inertia", "jnt_pos", "actuator_gear")
    for field in fields:
        np.testing.assert_array_equal(getattr(ours, field), getattr(stock, field), err_msg=field)


@pytest.mark.parametrize("env_id", IDS[1:])
def test_named_parts_are_scaled_and_others_unchanged(env_id):
    stock, scaled = _model(IDS[0]), _model(env_id)
    parts = SCALED_GEOMS[env_id]
    assert stock.ngeom == scaled.ngeom
    for g in range(stock.ngeom):
        name = stock.geom(g).name
        factor = 1.25 if name in parts else 1.0
        # Capsule size is (radius, half-length); MuJoCo fills the unused third entry with 0.
        np.testing.assert_allclose(scaled.geom_size[g], factor * stock.geom_size[g], rtol=1e-12, err_msg=name)
    assert scaled.geom("torso").size[0] == pytest.approx(0.046 * (1.25 if "torso" in parts else 1.0))
    # The parts stay attached: children of a scaled body sit 1.25x further out along the scaled part.
    for b in range(1, stock.nbody):
        parent = stock.body(stock.body_parentid[b]).name
        factor = 1.25 if parent in parts else 1.0
        np.testing.assert_allclose(scaled.body_pos[b], factor * stock.body_pos[b], rtol=1e-12)
    assert scaled.body_mass.sum() == pytest.approx(14.0)  # stock total mass is kept


@pytest.mark.parametrize("env_id", IDS)
def test_random_rollout_stays_physical(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(300):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(obs).all()
        assert not (terminated or truncated)
        assert info["success"] is False
        assert np.abs(obs[9:]).max() < 100.0  # a detached or exploding body shows up as huge velocities
        assert obs[1] > -0.7  # rootz is relative to the 0.7 m start height: the torso stays above the floor
    env.close()


def test_observation_layout_and_reward_terms():
    env = gym.make("robocl/HalfCheetah-BigShin-v0")
    obs, info = env.reset(seed=1)
    data = env.unwrapped.data
    assert obs[0] == 0.0 and info["success"] is False
    np.testing.assert_array_equal(obs[1:9], data.qpos[1:].astype(np.float32))
    np.testing.assert_array_equal(obs[9:], data.qvel.astype(np.float32))
    action = np.full(6, 0.5, dtype=np.float32)
    x_before = data.qpos[0]
    obs, reward, *_, info = env.step(action)
    assert obs[0] == pytest.approx((data.qpos[0] - x_before) / 0.05, rel=1e-6)
    assert info["reward_ctrl"] == pytest.approx(-0.1 * 6 * 0.25)
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"], rel=1e-6)
    np.testing.assert_array_equal(env.unwrapped.get_state(), obs)


def test_seeded_resets_and_steps_are_deterministic():
    def rollout(seed):
        env = gym.make("robocl/HalfCheetah-BigTorso-v0")
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in np.random.default_rng(0).uniform(-1, 1, size=(50, 6)):
            obs, reward, *_ = env.step(a)
            out.append(np.append(obs, reward))
        return np.concatenate(out)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


def test_reward_fn_matches_env_reward_in_numpy_and_torch():
    env = gym.make("robocl/HalfCheetah-BigFoot-v0")
    obs, _ = env.reset(seed=2)
    rng = np.random.default_rng(2)
    states, actions, next_states, rewards = [], [], [], []
    for _ in range(40):
        action = rng.uniform(-1, 1, size=6).astype(np.float32)
        next_obs, reward, *_ = env.step(action)
        states.append(obs), actions.append(action), next_states.append(next_obs), rewards.append(reward)
        obs = next_obs
    s, a, s2 = (np.stack(x).reshape(4, 10, -1) for x in (states, actions, next_states))  # (4, 10, D)
    expected = np.array(rewards).reshape(4, 10)
    reward_fn = env.unwrapped.reward_fn
    np.testing.assert_allclose(reward_fn(s, a, s2), expected, rtol=1e-6, atol=1e-6)
    got = reward_fn(torch.from_numpy(s), torch.from_numpy(a), torch.from_numpy(s2))
    assert isinstance(got, torch.Tensor) and got.shape == (4, 10)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_episode_truncates_after_1000_steps():
    env = gym.make("robocl/HalfCheetah-Standard-v0")
    env.reset(seed=0)
    for t in range(1, 1001):
        *_, terminated, truncated, _ = env.step(np.zeros(6, dtype=np.float32))
        assert not terminated
        assert truncated == (t == 1000)


def test_unknown_part_is_rejected():
    with pytest.raises(ValueError, match="unknown half-cheetah parts"):
        cheetah.scaled_cheetah_xml(("tail",))
