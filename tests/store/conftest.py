"""Small stores built by the tests themselves: every value encodes where it came from."""

from __future__ import annotations

import numpy as np
import pytest

from robocl.store import Feature, TrajectoryStore

FEATURES = {
    "observation.state": Feature("state", "float32", (3,), names=("x", "y", "z")),
    "observation.images.front": Feature("rgb", "uint8", (6, 5, 3)),
    "action": Feature("action", "float32", (2,)),
    "reward": Feature("reward", "float32"),
    "success": Feature("flag", "bool"),
}


def make_episode(episode: int, length: int) -> dict[str, np.ndarray]:
    """Steps whose values identify (episode, t), so any mis-gathered row shows up."""
    t = np.arange(length)
    state = np.stack([np.full(length, episode), t, t * 0.5], axis=1).astype(np.float32)
    images = np.zeros((length, 6, 5, 3), np.uint8)
    images[..., 0] = episode
    images[..., 1] = t[:, None, None]
    images[..., 2] = 7
    return {
        "observation.state": state,
        "observation.images.front": images,
        "action": np.stack([np.full(length, episode), t], axis=1).astype(np.float32) + 0.25,
        "reward": (t + 1).astype(np.float32) + 100 * episode,
        "success": t == length - 1,
    }


def final_of(episode: int, length: int) -> dict[str, np.ndarray]:
    """The observation after the last action: what step ``length`` would have held."""
    nxt = make_episode(episode, length + 1)
    return {k: nxt[k][length] for k in ("observation.state", "observation.images.front")}


LENGTHS = (5, 1, 12, 7, 3)


@pytest.fixture
def filled_store(tmp_path) -> TrajectoryStore:
    """Five episodes of varied length; episodes 0, 2 terminated, 3 truncated, 1 and 4 neither."""
    store = TrajectoryStore.create(tmp_path / "demo.zarr", FEATURES, fps=10, meta={"robot": "panda"})
    flags = [(True, False), (False, False), (True, False), (False, True), (False, False)]
    for e, (length, (term, trunc)) in enumerate(zip(LENGTHS, flags, strict=True)):
        store.add_episode(
            make_episode(e, length),
            task=f"task {e % 2}",
            success=term,
            terminated=term,
            truncated=trunc,
            final_obs=final_of(e, length),
            tags=("train" if e < 4 else "val",),
            source="test",
            source_episode=e,
        )
    return store
