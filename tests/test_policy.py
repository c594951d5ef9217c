from __future__ import annotations

import numpy as np
import pytest

from robocl.policy import ChunkExecutor, ObsHistory


class Counter:
    """Chunk predictor whose chunk k holds actions 100*k + j (j = step within the chunk), per row."""

    def __init__(self, horizon: int) -> None:
        self.horizon, self.calls = horizon, 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.calls += 1
        base = 100.0 * self.calls
        chunk = base + np.arange(self.horizon, dtype=np.float64)
        return np.repeat(chunk[None, :, None], len(obs), axis=0)


def test_receding_horizon_runs_n_actions_per_chunk():
    pred = Counter(horizon=4)
    ex = ChunkExecutor(pred, 4, n_action_steps=3)
    actions = [float(ex(np.zeros((1, 1)), 1)[0, 0]) for _ in range(7)]
    assert actions == [100, 101, 102, 200, 201, 202, 300]
    assert pred.calls == 3
    ex.reset()
    assert float(ex(np.zeros((1, 1)), 1)[0, 0]) == 400


def test_row_reset_refreshes_only_that_row():
    pred = Counter(horizon=4)
    ex = ChunkExecutor(pred, 4)  # n_action_steps defaults to the whole chunk
    first = ex(np.zeros((2, 1)), 2)[:, 0]
    ex.reset(np.array([1]))
    second = ex(np.zeros((2, 1)), 2)[:, 0]
    np.testing.assert_array_equal(first, [100, 100])
    np.testing.assert_array_equal(second, [101, 200])  # row 0 continues its chunk, row 1 starts a new one


def test_temporal_ensembling_matches_act_weights():
    pred = Counter(horizon=3)
    m = 0.5
    ex = ChunkExecutor(pred, 3, ensemble_coef=m)
    got = [float(ex(np.zeros((1, 1)), 1)[0, 0]) for _ in range(4)]
    w = np.exp(-m * np.arange(3))  # oldest prediction gets w[0]
    # step 0: chunk 1 only; step 1: chunk 1 (step 1) and chunk 2 (step 0); step t>=2: three chunks.
    expected = [
        100.0,
        (w[0] * 101 + w[1] * 200) / w[:2].sum(),
        (w[0] * 102 + w[1] * 201 + w[2] * 300) / w.sum(),
        (w[0] * 202 + w[1] * 301 + w[2] * 400) / w.sum(),
    ]
    np.testing.assert_allclose(got, expected)
    with pytest.raises(ValueError, match="n_action_steps must be 1"):
        ChunkExecutor(pred, 3, n_action_steps=2, ensemble_coef=0.1)
    with pytest.raises(ValueError, match="n_action_steps must be in"):
        ChunkExecutor(pred, 3, n_action_steps=4)


def test_observation_history_pads_at_episode_start():
    hist = ObsHistory(3)
    out = hist.push({"s": np.array([[1.0], [10.0]])})
    np.testing.assert_array_equal(out["s"][:, :, 0], [[1, 1, 1], [10, 10, 10]])
    out = hist.push({"s": np.array([[2.0], [20.0]])})
    np.testing.assert_array_equal(out["s"][:, :, 0], [[1, 1, 2], [10, 10, 20]])
    hist.reset(np.array([1]))
    out = hist.push({"s": np.array([[3.0], [30.0]])})
    np.testing.assert_array_equal(out["s"][:, :, 0], [[1, 2, 3], [30, 30, 30]])
