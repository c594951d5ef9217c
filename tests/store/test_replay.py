from __future__ import annotations

import numpy as np
import pytest

from robocl.store import Feature, OnlineReplay, TrajectoryStore

FEATURES = {
    "observation.state": Feature("state", "float32", (4,)),
    "action": Feature("action", "float32", (2,)),
    "reward": Feature("reward", "float32"),
}


def run_env(replay: OnlineReplay, n_steps: int, start: int = 0) -> None:
    """A fake environment: step k has obs k, episodes end every 7 steps, alternately terminated/truncated."""
    for k in range(start, start + n_steps):
        end = k % 7 == 6
        replay.add(
            np.full(4, k, np.float32),
            np.array([k, -k], np.float32),
            float(k),
            np.full(4, k + 1, np.float32),
            terminated=end and k % 2 == 0,
            truncated=end and k % 2 == 1,
        )


def test_ring_keeps_newest_in_order_and_flushes_episodes(tmp_path):
    store = TrajectoryStore.create(tmp_path / "r.zarr", FEATURES, fps=50)
    replay = OnlineReplay(store, capacity=20, flush_every=10)
    run_env(replay, 30)
    assert replay.size == 20 and replay.total_added == 30
    held = replay.get(np.arange(20))
    np.testing.assert_array_equal(held["reward"], np.arange(10, 30))  # oldest first after wrap-around
    np.testing.assert_array_equal(held["next_obs"]["observation.state"][:, 0], np.arange(11, 31))
    replay.flush()
    assert store.n_episodes == 4 and store.n_steps == 28  # 4 finished episodes of 7; 2 steps in progress
    ep = store.episode(1)
    np.testing.assert_array_equal(ep["reward"], np.arange(7, 14))
    np.testing.assert_array_equal(ep.final_obs["observation.state"], np.full(4, 14))
    assert ep.truncated and not ep.terminated and store.episode(0).terminated
    assert ep.tags == ("online",)


def test_resume_from_store_equals_uninterrupted(tmp_path):
    uninterrupted = OnlineReplay(TrajectoryStore.create(tmp_path / "a.zarr", FEATURES, fps=50), capacity=25)
    run_env(uninterrupted, 60)

    store = TrajectoryStore.create(tmp_path / "b.zarr", FEATURES, fps=50)
    first = OnlineReplay(store, capacity=25)
    run_env(first, 38)
    state = first.state_dict()  # at a checkpoint: flushes and keeps the unfinished episode
    store.close()  # the run is killed here

    store = TrajectoryStore.open(tmp_path / "b.zarr", "a")
    resumed = OnlineReplay.from_store(store, capacity=25, state=state)
    run_env(resumed, 22, start=38)
    a, b = uninterrupted.get(np.arange(25)), resumed.get(np.arange(25))
    for key in ("action", "reward", "terminated"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["obs"]["observation.state"], b["obs"]["observation.state"])
    resumed.flush()
    assert store.n_steps == 56  # 8 whole episodes, nothing duplicated


def test_weighted_sampling_follows_the_weights(tmp_path):
    replay = OnlineReplay(TrajectoryStore.create(tmp_path / "r.zarr", FEATURES, fps=50), capacity=4)
    run_env(replay, 4)
    rng = np.random.default_rng(0)
    draws = replay.sample(40_000, rng, weights=np.array([0.0, 1.0, 1.0, 2.0]))["reward"]
    freq = np.bincount(draws.astype(int), minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0, 0.25, 0.25, 0.5], atol=0.01)
    with pytest.raises(ValueError, match="weights has 3 entries"):
        replay.sample(4, rng, weights=np.ones(3))


def test_waiting_episodes_are_flushed_before_the_ring_overwrites_them(tmp_path):
    store = TrajectoryStore.create(tmp_path / "r.zarr", FEATURES, fps=50)
    replay = OnlineReplay(store, capacity=10, flush_every=1000)
    run_env(replay, 17)
    assert store.n_episodes == 1  # episode 1 (steps 7..13) can still wait: step 7 is in the ring
    run_env(replay, 1, start=17)  # this write would overwrite step 7
    assert store.n_episodes == 2  # written by add() itself, not by an explicit flush
    np.testing.assert_array_equal(store.episode(1)["reward"], np.arange(7, 14))


def test_episode_longer_than_the_ring_is_an_error(tmp_path):
    replay = OnlineReplay(
        TrajectoryStore.create(tmp_path / "r.zarr", FEATURES, fps=50), capacity=5, flush_every=100
    )
    run_env(replay, 7)
    with pytest.raises(RuntimeError, match="left the ring"):
        replay.flush()


def test_image_features_are_refused(tmp_path):
    store = TrajectoryStore.create(
        tmp_path / "r.zarr", FEATURES | {"cam": Feature("rgb", "uint8", (4, 4, 3))}, fps=50
    )
    with pytest.raises(ValueError, match="'cam' is not"):
        OnlineReplay(store, capacity=5)
