"""The command line reports failures as one line naming the problem, never as a traceback."""

from __future__ import annotations

import pytest

from robocl import cli
from robocl.run.loop import TrainingDiverged


def test_dead_env_worker_is_one_line(tmp_path, capsys):
    args = ["collect", "--env", "tests.eval.dying_robot:DyingArm-v0", "--episodes", "2", "--policy", "random"]
    assert cli.main([*args, "--num-envs", "2", "--out", str(tmp_path / "s.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DyingArm-v0: an env worker process died mid-episode" in err


def test_diverged_training_is_one_line(monkeypatch, capsys):
    def diverge(args):
        raise TrainingDiverged("non-finite value at update 7: loss is nan; last good state saved to X")

    monkeypatch.setattr(cli, "_cmd_info", diverge)
    assert cli.main(["info", "anything"]) == 2
    assert capsys.readouterr().err == (
        "robocl info: error: non-finite value at update 7: loss is nan; last good state saved to X\n"
    )


def test_unknown_failures_still_raise(monkeypatch):
    monkeypatch.setattr(cli, "_cmd_info", lambda args: [][0])
    with pytest.raises(IndexError):  # a bug, not bad input: keep the traceback
        cli.main(["info", "anything"])


def test_env_id_from_store_metadata_never_imports(tmp_path, capsys, monkeypatch):
    import argparse
    import sys

    from robocl.eval.rollout import expand_env_ids
    from robocl.store import Feature, TrajectoryStore

    # What evaluate() does with the env id before anything else, without needing a trained policy.
    monkeypatch.setattr("robocl.eval.evaluate.evaluate", lambda policy, env_id, **kw: expand_env_ids(env_id))

    env_id = "tests.eval.imported_by_metadata:Nope-v0"
    TrajectoryStore.create(
        tmp_path / "s.zarr", {"action": Feature("action")}, fps=10, meta={"env_id": env_id}
    ).close()
    args = argparse.Namespace(eval_env=None, data=str(tmp_path / "s.zarr"), eval_episodes=1)
    assert cli._eval_env(args) is None
    assert "tests.eval.imported_by_metadata" not in sys.modules
    assert f"pass --eval-env {env_id} to evaluate on it" in capsys.readouterr().out
