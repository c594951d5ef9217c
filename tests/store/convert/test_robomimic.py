from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from robocl.store import Feature
from robocl.store.convert import ConversionError, export, ingest
from tests.store.convert.builders import (
    action_of,
    assert_same_episodes,
    grey_frames,
    make_store,
    state_of,
    write_robomimic,
)


def test_ingest_demos_masks_and_next_obs(tmp_path):
    path = write_robomimic(tmp_path / "lift_ph.hdf5")
    with ingest("robomimic", path, tmp_path / "s.zarr", progress=False) as store:
        assert store.fps == 20.0
        assert store.meta == {
            "robomimic": {"env_args": {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}}
        }
        assert store.features == {
            "observation.images.agentview_image": Feature("rgb", "uint8", (32, 32, 3)),
            "observation.robot0_eef_pos": Feature("state", "float64", (3,)),
            "action": Feature("action", "float64", (2,)),
            "reward": Feature("reward", "float64"),  # robomimic's own dtype, kept
            "done": Feature("flag", "bool"),
            "sim_state": Feature("state", "float64", (4,)),
        }
        assert store.episodes["length"].tolist() == [3, 5, 2]
        assert store.episodes["has_final_obs"].all()
        first = 0
        for n, length in enumerate((3, 5, 2)):
            ep = store.episode(n)
            assert ep.tags == (("train",) if n < 2 else ("valid",))
            assert (
                ep.terminated
                and ep.success
                and (ep.source, ep.source_episode) == ("robomimic:lift_ph.hdf5", n)
            )
            np.testing.assert_array_equal(ep["observation.robot0_eef_pos"], state_of(n, length))
            np.testing.assert_array_equal(ep["action"], action_of(n, length))
            np.testing.assert_array_equal(ep["done"], np.arange(length) == length - 1)
            # The final observation is the last next_obs row: what obs would be at t = length.
            np.testing.assert_array_equal(
                ep.final_obs["observation.robot0_eef_pos"], state_of(n, length + 1)[-1]
            )
            np.testing.assert_array_equal(
                ep.final_obs["observation.images.agentview_image"], grey_frames(first + length, 1)[0]
            )
            first += length


def test_round_trip_is_exact_and_tags_become_filter_keys(tmp_path):
    store = make_store(tmp_path / "a.zarr")
    path = export("robomimic", store, tmp_path / "out.hdf5", progress=False)
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == 20
        assert json.loads(f["data"].attrs["env_args"]) == {
            "env_name": "RobotPush-v0",
            "type": 2,
            "env_kwargs": {},
        }
        assert [n.decode() for n in f["mask/train"][:]] == ["demo_0", "demo_1", "demo_2"]
        assert [n.decode() for n in f["mask/hard"][:]] == ["demo_3"]
        demo = f["data/demo_2"]
        assert demo.attrs["num_samples"] == 9 and demo["dones"][:].tolist() == [0] * 8 + [1]
        np.testing.assert_array_equal(demo["next_obs/state"][:-1], demo["obs/state"][1:])
        assert demo["obs/front"].shape == (9, 48, 64, 3)
    with ingest("robomimic", path, tmp_path / "b.zarr", progress=False) as back:
        assert back.features == store.features and back.meta == store.meta and back.fps == store.fps
        assert_same_episodes(store, back)
    store.close()


def test_bad_files(tmp_path):
    with h5py.File(tmp_path / "nodata.hdf5", "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(ConversionError, match=r"nodata.hdf5: data: missing group"):
        ingest("robomimic", tmp_path / "nodata.hdf5", tmp_path / "s.zarr", progress=False)
    path = write_robomimic(tmp_path / "r.hdf5")
    with h5py.File(path, "a") as f:
        actions = f["data/demo_1/actions"][:-1]
        del f["data/demo_1/actions"]
        f["data/demo_1/actions"] = actions
    with pytest.raises(
        ConversionError, match=r"data/demo_1.num_samples: says 5, but its actions hold 4 steps"
    ):
        ingest("robomimic", path, tmp_path / "s.zarr", progress=False)
    with h5py.File(path, "a") as f:  # declared counts agree again: the per-array check still applies
        f["data"].attrs["total"] = 9
        f["data/demo_1"].attrs["num_samples"] = 4
    with pytest.raises(
        ConversionError,
        match=r"r.hdf5: data/demo_1/obs/agentview_image: shape \(5, 32, 32, 3\) does not hold 4 steps",
    ):
        ingest("robomimic", path, tmp_path / "s.zarr", progress=False)
    with ingest(
        "robomimic", write_robomimic(tmp_path / "ok.hdf5"), tmp_path / "t.zarr", progress=False
    ) as store:
        assert store.n_episodes == 3


def test_declared_totals_and_masks_must_match_the_demos(tmp_path):
    path = write_robomimic(tmp_path / "r.hdf5")
    with h5py.File(path, "a") as f:
        f["data"].attrs["total"] = 11
    with pytest.raises(ConversionError, match=r"data.total: says 11, but the demos hold 10 steps"):
        ingest("robomimic", path, tmp_path / "s.zarr", progress=False)
    path = write_robomimic(tmp_path / "m.hdf5")
    with h5py.File(path, "a") as f:
        del f["mask/valid"]
        f["mask/valid"] = np.array(["demo_2", "demo_7"], dtype="S")
    with pytest.raises(ConversionError, match=r"mask/valid: names demo_7, which data holds no group for"):
        ingest("robomimic", path, tmp_path / "s.zarr", progress=False)
