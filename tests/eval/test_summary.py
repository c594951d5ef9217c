from __future__ import annotations

import numpy as np
import pytest

from robocl.eval.summary import episode_result, summarize
from robocl.eval.video import count_frames, side_by_side, write_mp4


def test_episode_result_cycle_time_counts_until_success_first_holds():
    r = episode_result(
        3, 103, rewards=[-1, -1, -1, 0, 0], successes=[False, False, True, True, False], control_dt=0.1
    )
    assert r.success and r.first_success_step == 2
    assert r.cycle_time == pytest.approx(0.3)
    assert r.episode_return == -3 and r.length == 5
    fail = episode_result(0, 100, rewards=[-1] * 4, successes=[False] * 4, control_dt=0.1)
    assert not fail.success and fail.cycle_time is None


def test_summary_aggregates():
    rows = [episode_result(i, i, [1.0] * (i + 1), [False] * i + [i % 2 == 0], 0.05) for i in range(6)]
    s = summarize(rows)
    assert s["success_rate"] == pytest.approx(0.5)  # episodes 0, 2, 4
    assert s["cycle_time_mean"] == pytest.approx(np.mean([0.05, 0.15, 0.25]))
    assert s["cycle_time_std"] == pytest.approx(np.std([0.05, 0.15, 0.25]))
    assert s["mean_return"] == pytest.approx(3.5)
    assert s["iqm_return"] == pytest.approx(3.5)  # returns 1..6: middle four are 2..5
    lo, hi = s["success_rate_ci95"]
    assert lo == pytest.approx(0.1876, abs=1e-3) and hi == pytest.approx(0.8124, abs=1e-3)


def test_video_has_one_frame_per_step(tmp_path):
    frames = [
        side_by_side([np.full((96, 96, 3), t, np.uint8), np.zeros((96, 96, 3), np.uint8)]) for t in range(12)
    ]
    assert frames[0].shape == (96, 192, 3)
    path = write_mp4(tmp_path / "v.mp4", frames, fps=10)
    assert count_frames(path) == 12
