from __future__ import annotations

import numpy as np
import pytest
import torch

from robocl.store import TrajectoryStore, WindowSampler
from robocl.store.frames import FrameReader
from tests.store.conftest import FEATURES, LENGTHS, final_of, make_episode

OBS = ("observation.state", "observation.images.front")


def reference_window(e: int, t: int, n_obs: int, h: int, gamma: float, terminated: bool) -> dict:
    """Brute force, one step at a time, straight from the definitions in the sampler's docstring."""
    length = LENGTHS[e]
    steps = make_episode(e, length)
    final = final_of(e, length)

    def obs_at(i: int) -> dict:
        i = max(i, 0)
        return {k: (final[k] if i == length else steps[k][i]) for k in OBS}

    ref = {
        "obs": [obs_at(t - k) for k in reversed(range(n_obs))],
        "obs_is_pad": [t - k < 0 for k in reversed(range(n_obs))],
    }
    ref["action"] = [steps["action"][min(t + k, length - 1)] for k in range(h)]
    ref["action_is_pad"] = [t + k >= length for k in range(h)]
    ref["reward"] = [steps["reward"][t + k] if t + k < length else 0.0 for k in range(h)]
    h_eff = min(h, length - t)
    ref["reward_sum"] = sum(gamma**k * steps["reward"][t + k] for k in range(h_eff))
    ref["next_obs"] = [obs_at(t + h_eff - k) for k in reversed(range(n_obs))]
    ref["discount"] = gamma**h_eff
    ref["done"] = terminated and t + h >= length
    return ref


@pytest.mark.parametrize(("n_obs", "h"), [(2, 4), (1, 1), (3, 16)])
def test_every_window_matches_brute_force(filled_store, n_obs, h):
    gamma = 0.9
    sampler = WindowSampler(filled_store, n_obs=n_obs, horizon=h, gamma=gamma)
    assert len(sampler) == sum(LENGTHS)
    batch = sampler.get_batch(np.arange(len(sampler)))
    terminated = filled_store.episodes["terminated"]
    w = 0
    for e, length in enumerate(LENGTHS):
        for t in range(length):
            ref = reference_window(e, t, n_obs, h, gamma, bool(terminated[e]))
            assert (batch["episode"][w], batch["t"][w]) == (e, t)
            for key in OBS:
                np.testing.assert_array_equal(batch["obs"][key][w], np.stack([o[key] for o in ref["obs"]]))
                np.testing.assert_array_equal(
                    batch["next_obs"][key][w], np.stack([o[key] for o in ref["next_obs"]])
                )
            np.testing.assert_array_equal(batch["obs_is_pad"][w], ref["obs_is_pad"])
            np.testing.assert_array_equal(batch["action"][w], np.stack(ref["action"]))
            np.testing.assert_array_equal(batch["action_is_pad"][w], ref["action_is_pad"])
            np.testing.assert_allclose(batch["reward"][w], ref["reward"])
            np.testing.assert_allclose(batch["reward_sum"][w], ref["reward_sum"], rtol=1e-5)
            np.testing.assert_allclose(batch["discount"][w], ref["discount"], rtol=1e-6)
            assert batch["done"][w] == ref["done"], (e, t)
            w += 1


def test_boundaries_terminal_versus_timeout(filled_store):
    sampler = WindowSampler(filled_store, n_obs=2, horizon=4, gamma=0.5)
    batch = sampler.get_batch(np.arange(len(sampler)))
    last_of = np.cumsum(LENGTHS) - 1
    # Episode 0 terminated: its last window is done; episode 3 was truncated: it bootstraps from o_L.
    assert batch["done"][last_of[0]] and not batch["done"][last_of[3]]
    np.testing.assert_array_equal(
        batch["next_obs"]["observation.state"][last_of[3], -1], final_of(3, LENGTHS[3])["observation.state"]
    )
    # h = 1 reduces to one-step TD: reward_sum = r_t, discount = gamma, next_obs = o_{t+1}.
    one = WindowSampler(filled_store, n_obs=1, horizon=1, gamma=0.5).get_batch(np.arange(len(sampler)))
    np.testing.assert_array_equal(one["reward_sum"], filled_store.steps("reward"))
    np.testing.assert_array_equal(one["discount"], np.full(len(sampler), 0.5, np.float32))


def test_views_sample_only_their_episodes_and_seeding_reproduces(filled_store):
    view = filled_store.view(tags="train", task="task 0")  # episodes 0 and 2
    a = WindowSampler(view, horizon=3, seed=7)
    assert len(a) == LENGTHS[0] + LENGTHS[2]
    batch = a.sample(64)
    assert set(batch["episode"].tolist()) <= {0, 2}
    assert set(batch["task_index"].tolist()) == {0}
    b = WindowSampler(view, horizon=3, seed=7)
    np.testing.assert_array_equal(b.sample(64)["action"], batch["action"])
    state = a.state_dict()
    first = a.sample(16)
    a.load_state_dict(state)
    np.testing.assert_array_equal(a.sample(16)["t"], first["t"])


def test_torch_dataloader_with_workers_matches_get_batch(filled_store):
    sampler = WindowSampler(filled_store, n_obs=2, horizon=3)
    loader = torch.utils.data.DataLoader(sampler, batch_size=8, shuffle=False, num_workers=2)
    rows = [b["obs"]["observation.images.front"] for b in loader]
    expected = sampler.get_batch(np.arange(len(sampler)))["obs"]["observation.images.front"]
    np.testing.assert_array_equal(torch.cat(rows).numpy(), expected)
    single = sampler[5]
    assert single["action"].shape == (3, 2) and single["t"] == 0


def _image_store(tmp_path, n_frames: int) -> TrajectoryStore:
    store = TrajectoryStore.create(tmp_path / "img.zarr", FEATURES, fps=10)
    store.add_episode(make_episode(0, n_frames), final_obs=final_of(0, n_frames))
    return store


def test_frame_reader_direct_decode_equals_zarr_and_lru_equals_mirror(tmp_path):
    store = _image_store(tmp_path, 150)  # three shards, the last one partial
    array = store.zarr_array("observation.images.front")
    ids = np.random.default_rng(0).integers(0, 150, size=300)
    mirror = FrameReader(array, 150, cache_bytes=1 << 30, local_root=tmp_path / "img.zarr")
    assert mirror._direct and mirror._mirror is not None
    np.testing.assert_array_equal(mirror.gather(ids), array[:][ids])
    assert mirror.shards_read == 3
    mirror.gather(ids)
    assert mirror.shards_read == 3  # cached
    lru = FrameReader(array, 150, cache_bytes=1, local_root=None)  # no mirror, one shard at a time
    assert lru._mirror is None
    np.testing.assert_array_equal(lru.gather(ids), array[:][ids])
    with pytest.raises(IndexError):
        mirror.gather(np.array([150]))


def test_sampler_rejects_bad_arguments(filled_store):
    with pytest.raises(ValueError, match="n_obs and horizon must be >= 1"):
        WindowSampler(filled_store, horizon=0)
    with pytest.raises(KeyError, match="unknown feature 'nope'"):
        WindowSampler(filled_store, obs_keys=["nope"])
    with pytest.raises(ValueError, match="no episodes"):
        WindowSampler(filled_store.view(tags="unknown"))
    with pytest.raises(IndexError):
        WindowSampler(filled_store).get_batch(np.array([10_000]))
