from __future__ import annotations

import numpy as np
import pytest
import zarr

from robocl.store import CameraCalibration, Feature, StoreLockedError, TrajectoryStore
from tests.store.conftest import FEATURES, LENGTHS, final_of, make_episode

ALL_DTYPES = ["bool", "uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]


def _values(dtype: str, shape: tuple[int, ...], length: int, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random((length, *shape)) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=(length, *shape), dtype=dt, endpoint=True)
    return rng.standard_normal((length, *shape)).astype(dt)


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_round_trip_every_dtype_and_kind(tmp_path, backend):
    rng = np.random.default_rng(0)
    features = {f"v_{d}": Feature("state", d, (2, 3)) for d in ALL_DTYPES}
    features |= {
        "rgb": Feature("rgb", "uint8", (4, 5, 3)),
        "depth": Feature("depth", "float32", (4, 5)),
        "depth16": Feature("depth", "uint16", (4, 5, 1)),
        "instruction": Feature("language"),
        "action": Feature("action", "float64", (7,)),
        "reward": Feature("reward", "float32"),
        "flag": Feature("flag", "bool"),
    }
    location = tmp_path / "s.zarr" if backend == "local" else zarr.storage.MemoryStore()
    store = TrajectoryStore.create(
        location, features, fps=15, meta={"robot": "panda", "nested": {"a": [1, 2]}}
    )
    written = []
    for e, length in enumerate([4, 9, 1]):
        steps = {
            k: _values(f.dtype, f.shape, length, rng) for k, f in features.items() if f.kind != "language"
        }
        steps["instruction"] = [f"do {e}-{t % 2}" for t in range(length)]
        final = {
            k: steps[k][-1] + 1 if features[k].dtype != "bool" else ~steps[k][-1]
            for k in store.observation_keys
            if k != "instruction"
        }
        final["instruction"] = "done"
        store.add_episode(steps, task=f"task {e}", final_obs=final, success=e == 1, tags=("a", "b")[: e + 1])
        written.append((steps, final))
    store.close()

    reader = TrajectoryStore.open(location, "r")
    assert reader.schema()["features"] == {k: f.to_dict() for k, f in features.items()}
    assert reader.fps == 15 and reader.meta == {"robot": "panda", "nested": {"a": [1, 2]}}
    assert reader.n_episodes == 3 and reader.n_steps == 14
    for e, (steps, final) in enumerate(written):
        ep = reader.episode(e)
        for key, value in steps.items():
            np.testing.assert_array_equal(ep[key], np.asarray(value), err_msg=key)
            assert ep[key].dtype == (object if key == "instruction" else np.dtype(features[key].dtype))
        for key, value in final.items():
            np.testing.assert_array_equal(ep.final_obs[key], value, err_msg=key)
        assert ep.task == f"task {e}" and ep.success == (e == 1)
        assert ep.tags == ("a", "b")[: e + 1]
        np.testing.assert_allclose(ep.episode_return, steps["reward"].sum(dtype=np.float64), rtol=1e-6)
    assert reader.episode(-1).index == 2


def test_episode_table_views_and_split(filled_store):
    table = filled_store.episodes
    np.testing.assert_array_equal(table["start"], np.cumsum((0, *LENGTHS[:-1])))
    np.testing.assert_array_equal(table["length"], LENGTHS)
    np.testing.assert_array_equal(table["terminated"], [1, 0, 1, 0, 0])
    np.testing.assert_array_equal(table["truncated"], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(table["source_episode"], range(5))
    assert filled_store.tasks == ["task 0", "task 1"]
    assert list(filled_store.view(task="task 1").episode_indices) == [1, 3]
    assert list(filled_store.view(success=True).episode_indices) == [0, 2]
    assert list(filled_store.view(tags="val").episode_indices) == [4]
    assert list(filled_store.view(tags=["train"], task=0).episode_indices) == [0, 2]
    assert len(filled_store.view(tags="unknown")) == 0
    assert len(filled_store.view(source="test")) == 5 and len(filled_store.view(source="other")) == 0
    assert filled_store.view(task="task 1").n_steps == LENGTHS[1] + LENGTHS[3]
    train, val = filled_store.view().split(0.4, seed=3)
    assert sorted([*train.episode_indices, *val.episode_indices]) == [0, 1, 2, 3, 4]
    assert len(val) == 2
    again = filled_store.view().split(0.4, seed=3)[1]
    np.testing.assert_array_equal(val.episode_indices, again.episode_indices)
    with pytest.raises(KeyError, match="unknown task"):
        filled_store.view(task="nope")


def test_statistics_match_numpy_over_all_steps(filled_store):
    stats = filled_store.stats
    state = np.concatenate([make_episode(e, n)["observation.state"] for e, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-6)
    np.testing.assert_array_equal(stats["observation.state"]["min"], state.min(0))
    np.testing.assert_array_equal(stats["observation.state"]["max"], state.max(0))
    assert stats["observation.state"]["count"] == sum(LENGTHS)
    # Quantiles: step-weighted mean of per-episode quantiles (LeRobot v3's aggregation).
    per_ep = [
        np.quantile(make_episode(e, n)["reward"].astype(np.float64), 0.5) for e, n in enumerate(LENGTHS)
    ]
    np.testing.assert_allclose(stats["reward"]["q50"], np.average(per_ep, weights=LENGTHS))
    assert stats["observation.images.front"]["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(stats["observation.images.front"]["mean"][2, 0, 0], 7 / 255)
    # statistics survive a reopen
    reopened = TrajectoryStore.open(filled_store.location)
    np.testing.assert_allclose(reopened.stats["action"]["std"], stats["action"]["std"])


def test_streaming_writer_commits_and_discards(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    steps = make_episode(0, 70)  # longer than the writer's initial buffer, so it must grow
    with store.episode_writer(task="pick", tags=("seen",)) as ep:
        for t in range(70):
            ep.add_step({k: v[t] for k, v in steps.items()})
        index = ep.commit(success=True, terminated=True, final_obs=final_of(0, 70))
    assert index == 0
    np.testing.assert_array_equal(
        store.episode(0)["observation.images.front"], steps["observation.images.front"]
    )

    with pytest.raises(ZeroDivisionError), store.episode_writer(task="pick") as ep:
        ep.add_step({k: v[0] for k, v in steps.items()})
        raise ZeroDivisionError
    assert store.n_episodes == 1 and store.n_steps == 70

    with pytest.raises(RuntimeError, match="without commit"), store.episode_writer() as ep:
        ep.add_step({k: v[0] for k, v in steps.items()})
    with pytest.raises(ValueError, match="no steps"):
        store.episode_writer().commit()
    assert store.n_episodes == 1


def test_invalid_episodes_raise_and_write_nothing(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    store.add_episode(make_episode(0, 4))
    good = make_episode(1, 6)
    cases = {
        r"missing feature\(s\) \['reward'\]": {k: v for k, v in good.items() if k != "reward"},
        r"unknown feature\(s\) \['extra'\]": good | {"extra": np.zeros(6)},
        r"feature 'action' has shape \(6, 3\), expected \(T, 2\)": good | {"action": np.zeros((6, 3))},
        r"feature 'reward' has 5 steps but other features have 6": good | {"reward": np.zeros(5)},
        r"feature 'observation.state' contains NaN or Inf at step 2": good
        | {"observation.state": np.where(np.arange(6)[:, None] == 2, np.nan, good["observation.state"])},
        r"feature 'action' contains NaN or Inf": good | {"action": np.full((6, 2), np.inf)},
        r"feature 'observation.images.front' has dtype float32, expected uint8": good
        | {"observation.images.front": good["observation.images.front"].astype(np.float32)},
        r"feature 'success' has dtype float64, expected bool": good | {"success": np.zeros(6)},
    }
    for pattern, steps in cases.items():
        with pytest.raises(ValueError, match=f"^episode 1: {pattern}"):
            store.add_episode(steps)
    with pytest.raises(ValueError, match=r"episode 1 final_obs: feature 'observation\.state' has shape"):
        store.add_episode(
            good,
            final_obs={
                "observation.state": np.zeros(4),
                "observation.images.front": np.zeros((6, 5, 3), np.uint8),
            },
        )
    with pytest.raises(ValueError, match="tag"):
        store.add_episode(good, tags=("",))
    with store.episode_writer() as ep:
        with pytest.raises(ValueError, match="step 0 of the episode being written: feature 'action'"):
            ep.add_step({k: v[0] for k, v in good.items()} | {"action": np.zeros(5)})
        ep.discard()
    # nothing was written: counts and array shapes are those of the one good episode
    assert store.n_episodes == 1 and store.n_steps == 4
    assert store.zarr_array("action").shape == (4, 2)
    reopened = TrajectoryStore.open(store.location)
    assert reopened.n_steps == 4


def test_same_kind_casts_are_accepted(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    steps = make_episode(0, 3)
    steps["observation.state"] = steps["observation.state"].astype(np.float64)
    steps["reward"] = [1, 2, 3]  # a list of ints for a float32 feature
    store.add_episode(steps)
    assert store.episode(0)["observation.state"].dtype == np.float32
    np.testing.assert_array_equal(store.episode(0)["reward"], [1.0, 2.0, 3.0])


def test_schema_errors():
    with pytest.raises(ValueError, match="unknown feature kind"):
        Feature("video", "uint8", (2,))
    with pytest.raises(ValueError, match="rgb features are"):
        Feature("rgb", "uint8", (4, 4))
    with pytest.raises(ValueError, match="unsupported dtype"):
        Feature("state", "complex64", (2,))
    with pytest.raises(ValueError, match="3 names given"):
        Feature("state", "float32", (2,), names=("a", "b", "c"))
    with pytest.raises(
        ValueError, match="a camera calibration belongs to an image feature, not a 'state' one"
    ):
        Feature("state", "float32", (2,), camera=CALIBRATION)


CALIBRATION = CameraCalibration(
    (100.0, 100.0, 15.5, 15.5), (1.0, 0.0, 0.5), ((0, 0, -1), (1, 0, 0), (0, -1, 0))
)


def test_a_camera_calibration_is_stored_with_its_feature(tmp_path):
    """Written into the header with the feature, read back equal; features without one keep the header
    they had (no "camera" key), so stores written before calibrations read as they did."""
    features = {
        "observation.images.front": Feature("rgb", "uint8", (32, 32, 3), camera=CALIBRATION),
        "observation.images.wrist": Feature("rgb", "uint8", (32, 32, 3)),
        "action": Feature("action", "float32", (2,)),
    }
    TrajectoryStore.create(tmp_path / "s.zarr", features, fps=10)
    store = TrajectoryStore.open(tmp_path / "s.zarr")
    assert store.features["observation.images.front"].camera == CALIBRATION
    assert store.features["observation.images.wrist"].camera is None
    assert "camera" not in features["observation.images.wrist"].to_dict()


def test_create_refuses_existing_and_open_refuses_non_stores(tmp_path):
    TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10).close()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    with pytest.raises(FileNotFoundError, match="no robocl store"):
        TrajectoryStore.open(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(ValueError, match="not a robocl store"):
        TrajectoryStore.open(tmp_path / "plain.zarr")


def test_one_writer_and_readers_see_new_episodes_after_refresh(tmp_path):
    writer = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    writer.add_episode(make_episode(0, 5))
    with pytest.raises(StoreLockedError, match="open for writing"):
        TrajectoryStore.open(tmp_path / "s.zarr", "a")
    reader = TrajectoryStore.open(tmp_path / "s.zarr", "r")
    assert reader.n_episodes == 1
    np.testing.assert_array_equal(reader.steps("reward"), make_episode(0, 5)["reward"])
    writer.add_episode(make_episode(1, 8))
    assert reader.n_episodes == 1  # a snapshot until refreshed
    reader.refresh()
    assert reader.n_episodes == 2
    np.testing.assert_array_equal(
        reader.episode(1)["observation.images.front"], make_episode(1, 8)["observation.images.front"]
    )
    np.testing.assert_array_equal(reader.steps("reward")[5:], make_episode(1, 8)["reward"])
    with pytest.raises(PermissionError, match="read-only"):
        reader.add_episode(make_episode(2, 2))
    writer.close()
    TrajectoryStore.open(tmp_path / "s.zarr", "a").close()  # the lock is free again


def test_memory_store_lock():
    location = zarr.storage.MemoryStore()
    store = TrajectoryStore.create(location, FEATURES, fps=10)
    with pytest.raises(StoreLockedError):
        TrajectoryStore.open(location, "a")
    store.close()
    TrajectoryStore.open(location, "a").close()


def test_uncommitted_rows_are_invisible_and_truncated_on_write_open(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    store.add_episode(make_episode(0, 5))
    # Simulate a writer that died after growing the arrays but before its commit record.
    for key in FEATURES:
        arr = store.zarr_array(key)
        arr.resize((9, *arr.shape[1:]))
        arr[5:9] = make_episode(1, 4)[key]
    store.close()
    reader = TrajectoryStore.open(tmp_path / "s.zarr")
    assert reader.n_steps == 5 and len(reader.steps("reward")) == 5
    TrajectoryStore.open(tmp_path / "s.zarr", "a").close()
    assert zarr.open_array(tmp_path / "s.zarr" / "data" / "action").shape == (5, 2)


def test_wrong_argument_types_are_refused_not_coerced(tmp_path):
    store = TrajectoryStore.create(
        tmp_path / "s.zarr", {"task": Feature("language"), "action": Feature("action")}, fps=10
    )
    steps = {"task": ["go"] * 3, "action": np.zeros(3)}
    cases = [
        (r"tags must be a sequence of strings like \('train',\), got 'train'", {"tags": "train"}),
        (r"success must be a bool, got 'no'", {"success": "no"}),
        (r"source_episode must be an integer, got 1.5", {"source_episode": 1.5}),
        (r"task must be a string, got 3", {"task": 3}),
    ]
    for pattern, kwargs in cases:
        with pytest.raises(TypeError, match=f"^episode 0: {pattern}"):
            store.add_episode(steps, **kwargs)
    with pytest.raises(ValueError, match="needs a sequence with one string per step, got 'go'"):
        store.add_episode(steps | {"task": "go"})
    with pytest.raises(TypeError, match="episode writer: tags must be a sequence"):
        store.episode_writer(tags="train")
    assert store.n_episodes == 0
    store.add_episode(steps, tags=["train"], success=np.bool_(True), source_episode=np.int64(4))
    assert store.episode(0).tags == ("train",) and store.episode(0).source_episode == 4
    with pytest.raises(ValueError, match="fps must be a positive number, got '10'"):
        TrajectoryStore.create(zarr.storage.MemoryStore(), {"action": Feature("action")}, fps="10")
    assert (
        TrajectoryStore.create(zarr.storage.MemoryStore(), {"a": Feature("action")}, fps=np.float32(5)).fps
        == 5
    )
