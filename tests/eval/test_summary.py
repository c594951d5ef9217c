from __future__ import annotations

import json

import numpy as np
import pytest

from robocl.eval.compare import compare
from robocl.eval.summary import episode_result, summarize, write_eval_info
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


def test_compare_aggregates_seeds_and_writes_plots(tmp_path):
    for method, rates in {"il": [0.4, 0.5, 0.6], "co-rft": [0.7, 0.8, 0.9]}.items():
        for seed, rate in enumerate(rates):
            rows = [episode_result(i, i, [0.0], [i < rate * 10], 0.1) for i in range(10)]
            write_eval_info(
                tmp_path / method / f"seed{seed}" / "eval_info.json",
                rows,
                summarize(rows),
                {"env_id": "robocl/PickPlace-v0", "positions": "seen"},
            )
    table, summary = compare([tmp_path / "il", tmp_path / "co-rft"], out_dir=tmp_path / "plots")
    assert summary["il"]["success_rate"]["iqm"] == pytest.approx(0.5)
    assert summary["co-rft"]["success_rate"]["iqm"] == pytest.approx(0.8)
    assert summary["co-rft"]["n_seeds"] == 3
    assert "| co-rft | 3 | 1 | 0.8 [" in table
    assert (tmp_path / "plots" / "compare_bars.png").stat().st_size > 1000
    info = json.loads((tmp_path / "il" / "seed0" / "eval_info.json").read_text())
    assert len(info["episodes"]) == 10 and info["aggregate"]["success_rate"] == pytest.approx(0.4)
