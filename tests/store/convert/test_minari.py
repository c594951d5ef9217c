from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest

from robocl.store import Feature
from robocl.store.convert import export, ingest
from tests.store.convert.builders import assert_same_episodes, grey_frames, make_store, state_of

minari = pytest.importorskip("minari")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # minari warns about unset authors etc.

SPACE = gym.spaces.Dict(
    {
        "pixels": gym.spaces.Box(0, 255, (32, 32, 3), np.uint8),
        "state": gym.spaces.Box(-np.inf, np.inf, (3,), np.float64),
    }
)
ACTIONS = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _buffers() -> list:
    from minari.data_collector.episode_buffer import EpisodeBuffer

    out, first = [], 0
    for e, length in enumerate((4, 2)):
        obs = {"pixels": grey_frames(first, length + 1), "state": state_of(e, length + 1).astype(np.float64)}
        first += length + 1
        out.append(
            EpisodeBuffer(
                observations=obs,
                actions=np.full((length, 2), e / 4, np.float32),
                rewards=np.arange(length, dtype=np.float64) + 10 * e,
                terminations=np.arange(length) == length - 1 if e == 0 else np.zeros(length, bool),
                truncations=np.zeros(length, bool) if e == 0 else np.arange(length) == length - 1,
                # Python bools, as DataCollector gathers them (minari's arrow reader fails on 1-d arrays).
                infos={"success": [e == 0 and t == length for t in range(length + 1)]},
            )
        )
    return out


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_ingest_dataset_made_by_minari(tmp_path, monkeypatch, data_format):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    minari.create_dataset_from_buffers(
        "test/pixels-v0",
        _buffers(),
        observation_space=SPACE,
        action_space=ACTIONS,
        data_format=data_format,
        jpeg_encoding=False,
    )
    with ingest("minari", "test/pixels-v0", tmp_path / "s.zarr", progress=False) as store:  # by dataset id
        assert store.features == {
            "observation.images.pixels": Feature("rgb", "uint8", (32, 32, 3)),
            "observation.state": Feature("state", "float64", (3,)),
            "action": Feature("action", "float32", (2,)),
            "reward": Feature("reward", "float64"),  # as Minari stores it: round trips stay exact
            "info.success": Feature("flag", "bool"),
        }
        assert store.meta["minari"]["dataset_id"] == "test/pixels-v0" and store.fps == 10.0
        assert store.episodes["terminated"].tolist() == [True, False]
        assert store.episodes["truncated"].tolist() == [False, True]
        assert store.episodes["has_final_obs"].all()
        ep = store.episode(0)
        assert (ep.source, ep.source_episode, len(ep)) == ("minari:test/pixels-v0", 0, 4)
        np.testing.assert_array_equal(ep["observation.state"], state_of(0, 4))
        np.testing.assert_array_equal(
            ep.final_obs["observation.state"], state_of(0, 5)[-1]
        )  # minari's T + 1 row
        np.testing.assert_array_equal(ep.final_obs["observation.images.pixels"], grey_frames(4, 1)[0])
        np.testing.assert_array_equal(ep["reward"], [0, 1, 2, 3])
        # infos row t + 1 belongs to step t: success is set by the last step.
        np.testing.assert_array_equal(ep["info.success"], [False, False, False, True])


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_export_loads_in_minari_and_round_trips(tmp_path, monkeypatch, data_format):
    store = make_store(tmp_path / "a.zarr")
    root = export(
        "minari",
        store,
        tmp_path / "datasets",
        dataset_id="robocl/push-v0",
        data_format=data_format,
        progress=False,
    )
    assert root == tmp_path / "datasets/robocl/push-v0"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    dataset = minari.load_dataset("robocl/push-v0")
    assert dataset.total_episodes == 4 and dataset.total_steps == 20
    episode = dataset[2]
    np.testing.assert_array_equal(episode.observations["state"][:-1], store.episode(2)["observation.state"])
    np.testing.assert_array_equal(episode.observations["state"][-1], store.final_obs("observation.state")[2])
    np.testing.assert_array_equal(
        episode.observations["images"]["front"][:-1], store.episode(2)["observation.images.front"]
    )
    assert episode.terminations.tolist() == [False] * 8 + [True]
    with ingest("minari", root, tmp_path / "b.zarr", progress=False) as back:
        assert back.features == store.features and back.meta == store.meta
        assert_same_episodes(store, back)
    store.close()


def test_data_collector_dataset(tmp_path, monkeypatch):
    pytest.importorskip("jax")  # minari's DataCollector needs jax (minari[create])
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    env = minari.DataCollector(gym.make("CartPole-v1", max_episode_steps=20))
    env.action_space.seed(0)
    for seed in range(2):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    env.create_dataset("cartpole/random-v0")
    dataset = minari.load_dataset("cartpole/random-v0")
    with ingest("minari", "cartpole/random-v0", tmp_path / "s.zarr", progress=False) as store:
        assert store.n_episodes == 2 and store.features["action"] == Feature("action", "int64")
        for i, episode in enumerate(dataset):
            np.testing.assert_array_equal(store.episode(i)["observation.state"], episode.observations[:-1])
            np.testing.assert_array_equal(store.final_obs("observation.state")[i], episode.observations[-1])


def test_missing_minari_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(ImportError, match=r"pip install 'robocl\[minari\]'"):
        ingest("minari", tmp_path / "x", tmp_path / "s.zarr", progress=False)


def test_box_observations_and_discrete_actions(tmp_path, monkeypatch):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    buffer = EpisodeBuffer(
        observations=state_of(0, 4),
        actions=np.array([0, 2, 1]),
        rewards=[1.0, 0.5, 0.25],
        terminations=[False, False, True],
        truncations=[False] * 3,
    )
    minari.create_dataset_from_buffers(
        "grid/walk-v0",
        [buffer],
        observation_space=gym.spaces.Box(-9, 9, (3,), np.float32),
        action_space=gym.spaces.Discrete(3),
    )
    with ingest("minari", tmp_path / "datasets/grid/walk-v0", tmp_path / "s.zarr", progress=False) as store:
        assert store.features == {
            "observation.state": Feature("state", "float32", (3,)),
            "action": Feature("action", "int64"),
            "reward": Feature("reward", "float64"),
        }
        ep = store.episode(0)
        np.testing.assert_array_equal(ep["observation.state"], state_of(0, 3))
        np.testing.assert_array_equal(ep.final_obs["observation.state"], state_of(0, 4)[-1])
        assert ep["action"].tolist() == [0, 2, 1] and ep.terminated and ep.episode_return == 1.75
        root = export("minari", store, tmp_path / "out", dataset_id="grid/walk-v1", progress=False)
    exported = minari.MinariDataset(root / "data")
    assert exported.action_space == gym.spaces.Discrete(3)  # the recorded space, not a rebuilt Box
    assert exported.observation_space == gym.spaces.Box(-9, 9, (3,), np.float32)
    assert exported[0].actions.tolist() == [0, 2, 1]


def test_reference_scores_carry_over_from_d4rl(tmp_path):
    from tests.store.convert.builders import write_d4rl

    with ingest(
        "d4rl", write_d4rl(tmp_path / "hopper-medium-v2.hdf5"), tmp_path / "s.zarr", progress=False
    ) as store:
        root = export(
            "minari", store, tmp_path / "datasets", dataset_id="mujoco/hopper/medium-v0", progress=False
        )
    dataset = minari.MinariDataset(root / "data")
    # Minari's score is a fraction where D4RL's is a percentage: same references, different scale.
    scores = minari.get_normalized_score(dataset, np.array([-20.272305, 3234.3]))
    np.testing.assert_allclose(scores, [0.0, 1.0])
    with ingest("minari", root, tmp_path / "back.zarr", progress=False) as back:
        assert back.meta["d4rl"]["ref_max_score"] == 3234.3  # the store's metadata came back whole


def test_round_trip_keeps_float64_rewards_env_spec_and_card(tmp_path, monkeypatch):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    rewards = np.array([0.1, 1.0 + 1e-9, -2.0000001], np.float64)  # none of them survives float32
    buffer = EpisodeBuffer(
        observations=np.zeros((4, 3), np.float32),
        actions=np.zeros((3, 1), np.float32),
        rewards=rewards,
        terminations=np.zeros(3, bool),
        truncations=np.arange(3) == 2,
    )
    minari.create_dataset_from_buffers(
        "test/pendulum-v0",
        [buffer],
        env="Pendulum-v1",
        author="A. Roboticist",
        description="three steps of a pendulum",
        code_permalink="https://example.org/code",
    )
    monkeypatch.chdir(tmp_path)  # a relative destination, as `robocl export minari s.zarr out` gives
    with ingest("minari", "test/pendulum-v0", "s.zarr", progress=False) as store:
        assert store.features["reward"] == Feature("reward", "float64")
        root = export("minari", store, "out", dataset_id="test/pendulum-v1", progress=False)
    assert root == tmp_path / "out/test/pendulum-v1"
    exported = minari.MinariDataset(root / "data")
    np.testing.assert_array_equal(exported[0].rewards, rewards)  # bit for bit
    assert exported.recover_environment().spec.id == "Pendulum-v1"
    card = exported.storage.metadata
    assert card["author"] == {"A. Roboticist"} and card["description"] == "three steps of a pendulum"
    assert card["code_permalink"] == "https://example.org/code"


def test_failed_export_leaves_no_partial_dataset(tmp_path, monkeypatch):
    import robocl.store.convert.minari as minari_convert

    store = make_store(tmp_path / "a.zarr")
    calls = []

    def fail_on_second(buffer_cls, store, index, mapping):
        calls.append(index)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(buffer_cls, store, index, mapping)

    real = minari_convert._buffer
    monkeypatch.setattr(minari_convert, "_buffer", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        export("minari", store, tmp_path / "out", dataset_id="robocl/push-v0", progress=False)
    assert not (tmp_path / "out/robocl/push-v0").exists()
    store.close()
