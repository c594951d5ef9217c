"""Policies read what the store has (state keys from feature kinds), and every method checks the store
before its first update, failing at once with the fix."""

from __future__ import annotations

import numpy as np
import pytest

from robocl.algos.bc import BC, BCConfig
from robocl.algos.co_rft import CORFT
from robocl.algos.co_rft_config import CORFTConfig
from robocl.features import check_training_data, normalization_stats, state_keys, world_mismatches
from robocl.run.loop import LoopConfig, checkpoint_header
from robocl.run.train import train_co_rft
from robocl.store import CameraCalibration, Feature, TrajectoryStore

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "language_model": None, "gripper": False, "horizon": 2}


def robot_store(path, *, success: bool | None = None, object_state: bool = False) -> TrajectoryStore:
    """A real arm's recording (6 joints, no privileged object state), success as given for every episode."""
    feats = {
        "observation.images.laptop": Feature("rgb", "uint8", (8, 8, 3)),
        "observation.state": Feature("state", "float32", (6,)),
        "action": Feature("action", "float32", (6,)),
    }
    if object_state:  # what robocl's simulated tasks add, sorted before the proprioception
        feats = {"observation.object": Feature("state", "float32", (3,)), **feats}
    store = TrajectoryStore.create(path, feats, fps=30)
    rng = np.random.default_rng(0)
    for _ in range(4):
        steps = {k: rng.normal(size=(6, *f.shape)).astype(f.dtype) for k, f in feats.items()}
        store.add_episode(steps, success=success, task="pick the cube")
    return store


def test_state_keys_come_from_feature_kinds_proprioception_first(tmp_path):
    with (
        robot_store(tmp_path / "real.zarr") as real,
        robot_store(tmp_path / "sim.zarr", object_state=True) as sim,
    ):
        assert state_keys(real) == ("observation.state",)
        assert state_keys(sim) == ("observation.state", "observation.object")
        algo = BC.from_store(BCConfig(), real)
        assert algo.config.obs_keys == ("observation.state",)
        assert checkpoint_header(algo)["config"]["obs_keys"] == ("observation.state",)


def test_input_statistics_leave_out_an_episode_that_alone_sets_a_scale(tmp_path):
    """Six episodes with objects within centimetres (std 0.05 m); the one whose object rolls away (x to
    -4 m: alone it makes x's std ~20x) is left out of the statistics with a warning naming it and the
    feature, the numbers are the plain ones over the other episodes' steps, and BC normalises with them."""
    feats = {
        "observation.state": Feature("state", "float32", (2,)),
        "observation.object": Feature("state", "float32", (3,)),
        "action": Feature("action", "float32", (2,)),
    }
    store = TrajectoryStore.create(tmp_path / "s.zarr", feats, fps=10)
    rng = np.random.default_rng(0)
    episodes = [
        {k: rng.normal(size=(8, *f.shape)).astype("float32") for k, f in feats.items()} for _ in range(6)
    ]
    for i, steps in enumerate(episodes):
        steps["observation.object"] *= 0.05
        # A dimension the other episodes hold constant (a gripper never used but in one) excludes nothing.
        steps["observation.state"][:, 1] = rng.normal(scale=1e-3, size=8) if i == 2 else 0.0
    episodes[4]["observation.object"][:, 0] = np.linspace(0.0, -4.0, 8)  # off the table, rolling away
    for steps in episodes:
        store.add_episode(steps, success=True)
    keys = ("observation.state", "observation.object")
    with pytest.warns(UserWarning, match=r"leave out episode 4 of 6: .* observation\.object \(episode 4\)"):
        stats, steps = normalization_stats(store, keys)
    assert steps.tolist() == [True] * 32 + [False] * 8 + [True] * 8
    others = np.concatenate([e["observation.object"] for i, e in enumerate(episodes) if i != 4]).astype(float)
    np.testing.assert_allclose(stats["observation.object"]["std"], others.std(0))
    np.testing.assert_allclose(stats["observation.object"]["mean"], others.mean(0))
    assert stats["observation.object"]["std"][0] < 0.1 and store.stats["observation.object"]["std"][0] > 0.5
    with pytest.warns(UserWarning, match="leave out episode 4"):
        bc = BC.from_store(BCConfig(obs_keys=keys), store)
    np.testing.assert_allclose(bc.net.normalizer.observation__object_scale.numpy(), others.std(0), rtol=1e-6)
    with pytest.warns(UserWarning, match="leave out episode 4"):
        co_rft = CORFT.from_store(CORFTConfig(state_keys=keys, **TINY), store)
    scale = co_rft.policy_net.normalizer.observation__object_scale.numpy()
    np.testing.assert_allclose(scale, others.std(0), rtol=1e-6)
    # Without the outlier nothing is left out and the store's own statistics come back as they are.
    clean = TrajectoryStore.create(tmp_path / "c.zarr", feats, fps=10)
    for i, steps in enumerate(episodes):
        if i != 4:
            clean.add_episode(steps, success=True)
    stats, steps = normalization_stats(clean, keys)
    assert steps.all() and all(np.array_equal(stats[k]["std"], clean.stats[k]["std"]) for k in keys)
    two = TrajectoryStore.create(tmp_path / "two.zarr", feats, fps=10)  # too few episodes to single one out
    for steps in (episodes[0], episodes[4]):
        two.add_episode(steps, success=True)
    assert normalization_stats(two, keys)[1].all()


def test_bc_names_a_missing_feature_and_what_the_store_has(tmp_path):
    with robot_store(tmp_path / "s.zarr") as store, pytest.raises(ValueError) as err:
        BC.from_store(BCConfig(obs_keys=("observation.object",)), store)
    assert str(err.value).endswith(
        "feature 'observation.object' is not in the store (its state features: ['observation.state'], "
        "cameras: ['observation.images.laptop'])"
    )


def test_co_rft_fails_before_stage_1_when_success_is_unknown(tmp_path):
    robot_store(tmp_path / "s.zarr").close()
    loops = {
        "il_loop": LoopConfig(n_updates=2, batch_size=4),
        "rl_loop": LoopConfig(n_updates=2, batch_size=4),
    }
    with pytest.raises(ValueError) as err:
        train_co_rft(CORFTConfig(**TINY), tmp_path / "s.zarr", tmp_path / "run", progress=False, **loops)
    message = str(err.value)
    assert (
        "episodes 0-3 do not record" in message and "robocl edit" in message and "--rl-updates 0" in message
    )
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was trained
    # Imitation alone needs no rewards.
    paths = train_co_rft(
        CORFTConfig(**TINY), tmp_path / "s.zarr", tmp_path / "run", il_loop=loops["il_loop"], rl_loop=None,
        progress=False,
    )  # fmt: skip
    assert set(paths) == {"il"}


def test_marked_episodes_pass_and_all_failures_do_not(tmp_path):
    with robot_store(tmp_path / "s.zarr", success=False) as store:
        with pytest.raises(ValueError, match="no training episode is marked successful"):
            check_training_data(store, method="co-rft", state=("observation.state",), reward="step_penalty")
        store.edit_episodes([1, 3], success=True)
        check_training_data(store, method="co-rft", state=("observation.state",), reward="step_penalty")
        with pytest.raises(ValueError, match="reward='store' needs a 'reward' feature"):
            check_training_data(store, method="co-rft", state=("observation.state",), reward="store")
        with pytest.raises(ValueError, match=r"'observation\.state' is state, not a camera"):
            check_training_data(store, method="co-rft", state=(), images=("observation.state",))


def test_a_camera_moved_from_where_the_data_had_it_is_a_mismatch():
    """The env's calibration of a camera the policy reads is compared with the data's: a re-calibration
    (a few mm, a fraction of a degree) fits; 3 cm and a 5 degree turn do not, and the message says how far."""
    down = ((0, 1, 0), (1, 0, 0), (0, 0, -1))
    turn = np.radians(5)
    turned = np.asarray(down, float) @ np.array(
        [[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]]
    )
    data = CameraCalibration((100.0, 100.0, 47.5, 47.5), (0.5, 0.0, 1.0), down)
    world = {
        "fps": 10,
        "observation": {
            "observation.images.front": Feature("rgb", "uint8", (96, 96, 3), camera=data).to_dict()
        },
        "action": Feature("action", "float32", (2,)).to_dict(),
    }

    def mismatches(camera: CameraCalibration) -> list[str]:
        features = {
            "observation.images.front": Feature("rgb", "uint8", (96, 96, 3), camera=camera),
            "action": Feature("action", "float32", (2,)),
        }
        return world_mismatches(
            world,
            env_id="e",
            robot="",
            fps=10,
            features=features,
            action_low=-np.ones(2),
            action_high=np.ones(2),
        )

    assert mismatches(CameraCalibration((100.4, 100.0, 47.5, 47.5), (0.503, 0.0, 1.0), down)) == []
    assert mismatches(CameraCalibration((100.0, 100.0, 47.5, 47.5), (0.53, 0.0, 1.0), turned)) == [
        "observation.images.front camera: expected the calibration the policy learnt with, got one "
        "3.0 cm, 5.0 deg and 0.0 px away"
    ]
