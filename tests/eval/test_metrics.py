from __future__ import annotations

import numpy as np
import pytest

from robocl.eval.continual import ContinualEvaluator, ContinualLog, continual_metrics, plot_curves
from robocl.eval.metrics import bootstrap_ci, iqm, stratified_bootstrap_ci, wilson_interval


def test_wilson_interval_hand_computed():
    # 8/10 at 95%: z = 1.959964, centre = (0.8 + z^2/20)/(1 + z^2/10), half-width as in Wilson (1927).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901624, abs=1e-6) and hi == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 20)[
        1
    ] == pytest.approx(0.1611252, abs=1e-6)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_iqm_and_bootstrap():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # drops 2 values at each end
    assert iqm([5.0]) == 5.0
    lo, hi = bootstrap_ci(np.arange(100.0), seed=1)
    assert lo < 49.5 < hi and hi - lo == pytest.approx(11.3, abs=2.5)  # ~ 2 * 1.96 * 29/sqrt(100)
    assert bootstrap_ci(np.full(10, 3.0)) == (3.0, 3.0)
    lo, hi = stratified_bootstrap_ci(np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]]))
    assert lo == hi == pytest.approx(5.5)


def fixed_log() -> ContinualLog:
    """Three tasks of 10 iterations; evaluations every 5 iterations (hand-made numbers)."""
    log = ContinualLog(n_tasks=3)
    rows = [
        # step, training task, {eval task: value}
        (5, 0, {0: 0.5}),
        (10, 0, {0: 0.9}),
        (15, 1, {0: 0.2, 1: 0.4}),
        (20, 1, {0: 0.7, 1: 0.8}),
        (25, 2, {0: 0.6, 1: 0.1, 2: 0.3}),
        (30, 2, {0: 0.5, 1: 0.6, 2: 1.0}),
    ]
    for step, train, evals in rows:
        for task, value in evals.items():
            log.record(step, train, task, value)
    log.task_ends = [10, 20, 30]
    return log


def test_continual_metrics_equal_hand_computed_values(tmp_path):
    m = continual_metrics(fixed_log(), single_task=[0.9, 0.5, 0.8])
    np.testing.assert_allclose(
        np.array(m["after_task_matrix"]), [[0.9, np.nan, np.nan], [0.7, 0.8, np.nan], [0.5, 0.6, 1.0]]
    )
    assert m["average"] == pytest.approx((0.5 + 0.6 + 1.0) / 3)
    assert m["forgetting"] == pytest.approx([0.9 - 0.5, 0.8 - 0.6])
    assert m["forgetting_ratio"] == pytest.approx([0.5 / 0.9, 0.6 / 0.8])
    assert m["bwt"] == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)
    assert m["forward_transfer_ratio"] == pytest.approx([1.0, 0.8 / 0.5, 1.0 / 0.8])
    # min-ACC: task 0 after step 10 -> min(0.2, 0.7, 0.6, 0.5) = 0.2; task 1 after 20 -> min(0.1, 0.6) = 0.1
    assert m["min_acc"] == pytest.approx(0.15)
    assert m["wc_acc"] == pytest.approx(1.0 / 3 + (2 / 3) * 0.15)
    gaps = {(g["switch_to"], g["task"]): g["gap"] for g in m["stability_gaps"]}
    assert gaps == pytest.approx({(1, 0): 0.9 - 0.2, (2, 0): 0.7 - 0.5, (2, 1): 0.8 - 0.1})
    png = plot_curves(fixed_log(), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluator_schedules_every_seen_task():
    calls = []
    ev = ContinualEvaluator(2, lambda task: calls.append(task) or float(task), interval=4)
    for step in range(1, 9):
        ev.maybe_evaluate(step, current_task=0 if step <= 4 else 1)
        if step == 4:
            ev.end_task(step, 0)
    ev.end_task(8, 1)
    assert calls == [0, 0, 1]  # step 4: task 0 (end_task reuses it); step 8: tasks 0 and 1
    assert ev.log.task_ends == [4, 8]
    with pytest.raises(ValueError, match="interval"):
        ContinualEvaluator(2, float, interval=0)
