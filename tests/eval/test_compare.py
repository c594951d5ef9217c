"""robocl compare reads run.json: groups by method and stage, seeds are runs, final evaluations by default."""

from __future__ import annotations

import pytest

from robocl.eval.compare import compare
from robocl.eval.summary import episode_result, summarize, write_eval_info
from robocl.run.layout import RunDir


def fake_run(path, method: str, stages: dict[str, dict[int, float]], tasks=("seen", "unseen")) -> RunDir:
    """A run whose stages were evaluated at the given steps with the given success rates (10 episodes)."""
    run = RunDir(path)
    for stage, history in stages.items():
        run.begin(method, {"seed": 0}, stage=stage, seed=0)
        for step, rate in history.items():
            for positions in tasks:
                rows = [episode_result(i, i, [0.0], [i < rate * 10], 0.1) for i in range(10)]
                meta = {"env_id": "robocl/PickPlace-v0", "positions": positions}
                info = run.eval_dir(stage, step, f"robocl/PickPlace-v0_{positions}") / "eval_info.json"
                write_eval_info(info, rows, summarize(rows), meta)
    return run


def test_stages_are_groups_seeds_are_runs_and_the_final_evaluation_counts(tmp_path):
    for seed, final in enumerate([0.6, 0.7, 0.8]):
        fake_run(
            tmp_path / "co-rft" / f"seed{seed}", "co-rft", {"il": {100: 0.1, 200: 0.5}, "rl": {50: final}}
        )
    table, summary = compare([tmp_path / "co-rft"], out_dir=tmp_path / "plots")
    assert set(summary) == {"co-rft il", "co-rft rl"}
    assert summary["co-rft il"]["n_seeds"] == 3 and summary["co-rft rl"]["n_seeds"] == 3
    assert summary["co-rft il"]["success_rate"]["iqm"] == pytest.approx(0.5)  # step 200, not 100
    assert summary["co-rft rl"]["success_rate"]["iqm"] == pytest.approx(0.7)
    assert summary["co-rft rl"]["tasks"] == ["robocl/PickPlace-v0 [seen]", "robocl/PickPlace-v0 [unseen]"]
    assert "| co-rft rl | robocl/PickPlace-v0 [unseen] | 0.7 |" in table  # a row per task
    assert "warning" not in summary
    for name in ("compare_bars.png", "compare_curves.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    best = compare([tmp_path / "co-rft"], step="best")[1]
    assert best["co-rft il"]["success_rate"]["iqm"] == pytest.approx(0.5)


def test_methods_on_different_tasks_are_flagged(tmp_path):
    fake_run(tmp_path / "bc" / "s0", "bc", {"bc": {10: 0.5}}, tasks=("seen",))
    fake_run(tmp_path / "co-rft" / "s0", "co-rft", {"rl": {10: 0.5}})
    table, summary = compare([tmp_path / "bc", tmp_path / "co-rft"])
    assert set(summary) == {"bc: bc bc", "co-rft: co-rft rl", "warning"}
    assert "evaluated on different tasks" in table


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no run\.json under"):
        compare([tmp_path / "empty"])
    run = RunDir(tmp_path / "r")
    run.begin("bc", {"seed": 0}, stage="bc", seed=0)
    with pytest.raises(FileNotFoundError, match="no evaluations under"):
        compare([tmp_path / "r"])
