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


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from robocl.collect import collect
    from robocl.run.layout import RunDir

    collect("robocl/Push-Density0-v0", 3, tmp_path / "s.zarr", seed=0, progress=False).close()
    run = RunDir(tmp_path / "run")
    argv = ["train", "bc", "--data", str(tmp_path / "s.zarr"), "--run-dir", str(run.path), "--n-updates",
            "100000", "--checkpoint-every", "5", "--batch-size", "8", "--quiet"]  # fmt: skip
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.Popen([sys.executable, "-m", "robocl.cli", *argv], cwd=Path(__file__).parents[1],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    while not (run.checkpoint("bc") / "config.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "robocl train: interrupted at update" in err and f"state saved to {run.checkpoint('bc')}" in err
    assert err.strip().endswith(" ".join(["robocl", *argv, "--resume"]))


def test_a_device_torch_cannot_use_is_one_line(capsys):
    assert cli.main(["eval", "--policy", "x", "--env", "robocl/PickPlace-v0", "--device", "cuda:7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda:7" in err


def test_co_rft_imitation_budget_scales_with_the_training_episodes(tmp_path):
    import argparse

    from robocl.algos.co_rft_config import IL_UPDATES_PER_EPISODE, il_updates_for
    from robocl.store import TrajectoryStore
    from tests.store.conftest import FEATURES, make_episode

    assert il_updates_for(60) == 30_000 and il_updates_for(30) == 15_000  # the two measured budgets
    with pytest.raises(ValueError, match="n_episodes=0"):
        il_updates_for(0)
    with TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10) as store:
        for e in range(5):
            store.add_episode(make_episode(e, 4), tags=("good",) if e < 3 else ())

    def il_updates(**given) -> int:
        return cli._il_updates(argparse.Namespace(**{"data": str(tmp_path / "s.zarr"), "tags": None} | given))

    assert il_updates(il_updates=None) == 5 * IL_UPDATES_PER_EPISODE
    assert il_updates(il_updates=None, tags="good") == 3 * IL_UPDATES_PER_EPISODE  # what --tags trains on
    assert il_updates(il_updates=0) == 0 and il_updates(il_updates=123) == 123  # given: as given
    parser = argparse.ArgumentParser()
    cli._add_train_co_rft(parser)
    assert parser.parse_args(["--data", "d", "--run-dir", "r"]).il_updates is None  # so the default scales
