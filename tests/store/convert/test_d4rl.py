from __future__ import annotations

import h5py
import numpy as np
import pytest

from robocl.store import Feature
from robocl.store.convert import ConversionError, export, ingest
from robocl.store.convert.d4rl import REF_SCORES, normalized_score, reference_scores
from tests.store.convert.builders import (
    D4RL_LENGTHS,
    STORE_LENGTHS,
    action_of,
    assert_same_episodes,
    make_store,
    reward_of,
    state_of,
    write_d4rl,
)


def test_ingest_splits_at_terminals_and_timeouts(tmp_path):
    path = write_d4rl(tmp_path / "hopper-medium-v2.hdf5")
    with ingest("d4rl", path, tmp_path / "s.zarr", progress=False) as store:
        assert store.fps == 10.0
        assert store.features == {
            "observation.state": Feature("state", "float32", (3,)),
            "action": Feature("action", "float32", (2,)),
            "reward": Feature("reward", "float32"),
            "info.goal_reached": Feature("flag", "bool"),
            "info.qpos": Feature("state", "float32", (2,)),
        }
        assert store.meta["d4rl"] == {
            "env": "hopper",
            "dataset": "hopper-medium-v2",
            "ref_min_score": -20.272305,
            "ref_max_score": 3234.3,
        }
        table = store.episodes
        assert table["length"].tolist() == list(D4RL_LENGTHS)
        assert table["terminated"].tolist() == [True, False, False]
        assert table["truncated"].tolist() == [False, True, False]  # the tail is neither
        assert not table["has_final_obs"].any()  # D4RL stores no observation after the last action
        for e, length in enumerate(D4RL_LENGTHS):
            ep = store.episode(e)
            np.testing.assert_array_equal(ep["observation.state"], state_of(e, length))
            np.testing.assert_array_equal(ep["action"], action_of(e, length))
            np.testing.assert_array_equal(ep["info.qpos"], state_of(e, length)[:, :2] * 2)
            assert (ep.source, ep.source_episode) == ("hopper-medium-v2.hdf5".join(["d4rl:", ""]), e)
            np.testing.assert_allclose(ep.episode_return, reward_of(e, length).sum())


def test_next_observations_give_the_final_observation(tmp_path):
    path = write_d4rl(tmp_path / "walker2d-expert-v2.hdf5", next_observations=True)
    with ingest("d4rl", path, tmp_path / "s.zarr", fps=50, progress=False) as store:
        assert store.fps == 50 and store.episodes["has_final_obs"].all()
        np.testing.assert_array_equal(store.final_obs("observation.state")[1], state_of(1, 3)[-1] + 1000)
        assert store.meta["d4rl"]["ref_max_score"] == 4592.3


def test_normalized_score():
    assert (
        reference_scores("halfcheetah-medium-replay-v2")
        == REF_SCORES["halfcheetah"]
        == (-280.178953, 12135.0)
    )
    assert reference_scores("ant-medium-v2") is None
    lo, hi = REF_SCORES["hopper"]
    np.testing.assert_allclose(normalized_score([lo, hi, (lo + hi) / 2], lo, hi), [0.0, 100.0, 50.0])
    assert normalized_score(1627.0, 0.0, 3254.0) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="must differ"):
        normalized_score(1.0, 2.0, 2.0)


def test_round_trip_is_exact(tmp_path):
    store = make_store(tmp_path / "a.zarr")
    path = export("d4rl", store, tmp_path / "out.hdf5", progress=False)
    with h5py.File(path) as f:
        assert f["observations"].shape == (20, 3) and f["rewards"].dtype == np.float32
        # Episode ends: 0 terminated, 1 unfinished (a timeout keeps it apart), 2 terminated, 3 truncated.
        ends = np.cumsum(STORE_LENGTHS) - 1
        assert np.flatnonzero(f["terminals"][:]).tolist() == [ends[0], ends[2]]
        assert np.flatnonzero(f["timeouts"][:]).tolist() == [ends[1], ends[3]]
    with ingest("d4rl", path, tmp_path / "b.zarr", progress=False) as back:
        assert back.features == store.features and back.meta == store.meta
        assert_same_episodes(store, back)
    store.close()


def test_corrupt_file(tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ConversionError, match=r"broken.hdf5: file: not a readable HDF5 file"):
        ingest("d4rl", path, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_missing_and_mismatched_fields(tmp_path):
    path = write_d4rl(tmp_path / "a.hdf5")
    with h5py.File(path, "a") as f:
        del f["actions"]
    with pytest.raises(ConversionError, match=r"a.hdf5: actions: missing dataset"):
        ingest("d4rl", path, tmp_path / "s.zarr", progress=False)
    path = write_d4rl(tmp_path / "b.hdf5")
    with h5py.File(path, "a") as f:
        rewards = f["rewards"][:-1]
        del f["rewards"]
        f["rewards"] = rewards
    with pytest.raises(ConversionError, match=r"b.hdf5: rewards: has 8 rows, observations has 9"):
        ingest("d4rl", path, tmp_path / "s.zarr", progress=False)
