"""The Symphony benchmark's --resume: which finished runs it keeps, and what it refuses."""

import argparse
import json

import pytest

from benchmarks import symphony


def _args(**over):
    base = dict(name="bench", steps=1000, eval_every=500, eval_episodes=2, n_explore=100, tile=8,
                hidden=128, n_q=32, batch_size=96, swaddle_weight=1.0, advantage_baseline="per_sample",
                no_sac=False)  # fmt: skip
    return argparse.Namespace(**(base | over))


def _run(value):
    return {
        "curve": {"100": value, "600": value + 1},
        "diagnostics": {"strength": {"600": 0.4}},
        "wall_s": 1.0,
    }


def test_resume_keeps_seeds_both_methods_finished_with_their_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(symphony, "RESULTS", tmp_path)
    old = {"commit": "abc1234", "args": vars(_args()),
           "results": {"Walker2d-v5": {"symphony": [_run(1.0), _run(2.0)], "sac": [_run(3.0)]}}}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(old))
    kept = symphony._finished_runs(_args())["Walker2d-v5"]
    assert [len(kept["symphony"]), len(kept["sac"])] == [1, 1]  # seed 1's SAC never finished: rerun it
    assert kept["symphony"][0]["curve"] == {100: 1.0, 600: 2.0}
    assert kept["symphony"][0]["diagnostics"] == {"strength": {600: 0.4}}
    assert kept["sac"][0]["commit"] == "abc1234"


def test_resume_refuses_runs_of_another_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(symphony, "RESULTS", tmp_path)
    (tmp_path / "bench.json").write_text(json.dumps({"commit": "x", "args": vars(_args()), "results": {}}))
    with pytest.raises(SystemExit, match="steps"):
        symphony._finished_runs(_args(steps=2000))
    assert symphony._finished_runs(_args(name="other")) == {}


def test_resume_with_every_seed_finished_reports_them_without_training(tmp_path, monkeypatch, capsys):
    from benchmarks import common

    monkeypatch.setattr(symphony, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(symphony, "run_symphony", lambda *a: pytest.fail("trained a finished seed"))
    logged = {name: {"100": 0.5, "600": 0.4} for name in symphony.DIAGNOSTICS}
    runs = {"symphony": [{**_run(1.0), "diagnostics": logged}], "sac": [_run(3.0)]}
    (tmp_path / "bench.json").write_text(
        json.dumps({"commit": "abc1234", "args": vars(_args()), "results": {"Walker2d-v5": runs}})
    )
    argv = "--envs Walker2d-v5 --name bench --steps 1000 --seeds 1 --eval-every 500 --eval-episodes 2"
    argv += " --n-explore 100 --tile 8 --hidden 128 --n-q 32 --batch-size 96 --resume"
    monkeypatch.setattr("sys.argv", ["symphony", *argv.split()])
    symphony.main()
    assert "Walker2d-v5" in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "bench.json").read_text())["results"]["Walker2d-v5"]["sac"][0]["commit"]
        == "abc1234"
    )


def test_the_table_compares_training_time_without_the_evaluations(tmp_path, monkeypatch):
    """Symphony evaluates twice per mark and SAC once, so speed is compared on train_s; runs recorded before
    train_s existed leave that column empty rather than guessing."""
    from benchmarks import common

    monkeypatch.setattr(symphony, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    logged = {name: {"100": 0.5, "600": 0.4} for name in symphony.DIAGNOSTICS}
    new = {**symphony._int_keys({**_run(1.0), "diagnostics": logged}), "wall_s": 30.0, "train_s": 20.0}
    old = {**symphony._int_keys(_run(3.0)), "wall_s": 25.0}
    table = symphony._report(_args(), {"Walker2d-v5": {"symphony": [new], "sac": [old]}}, None)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| Walker2d-v5 | ")]
    assert rows[0][1:3] == ["symphony", "100"] and rows[0][-2:] == ["30", "20 |"]  # s / 1k of 1,000 steps
    assert rows[2][1] == "sac" and rows[2][-2:] == ["25", " |"]
