"""The run contract, the same for every method: train from the command line, SIGKILL mid-run and resume to
the uninterrupted run's weights bit for bit, load the policy in a fresh process, ``robocl eval`` it, and
``robocl compare`` two seeds from their run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robocl.checkpoint import load_checkpoint
from robocl.run.layout import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY_VLA = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--language-model", "none",
            "--horizon", "4", "--head-hidden", "32", "--critic-hidden", "32,32"]  # fmt: skip
HYPERCRL = ["--family", "push", "--n-tasks", "2", "--hidden", "16,16", "--hnet-hidden", "8,8", "--n-random",
            "12", "--n-mpc", "4", "--retrain-every", "2", "--grad-steps", "10", "--batch-size", "8",
            "--horizon", "3", "--n-samples", "16", "--n-elites", "4", "--n-iters", "1", "--eval-every", "50",
            "--eval-episodes", "1", "--eval-max-steps", "2"]  # fmt: skip
# method -> (train arguments without --run-dir/--seed, the stage a kill waits for, env for robocl eval)
METHODS = {
    "bc": (["--n-updates", "200", "--batch-size", "16", "--checkpoint-every", "10", "--hidden", "32",
            "--obs-keys", "observation.state,observation.object", "--eval-env", "robocl/PickPlace-v0",
            "--eval-episodes", "1"], "bc", "robocl/PickPlace-v0"),
    "co-rft": (["--il-updates", "60", "--rl-updates", "60", "--batch-size", "16", "--checkpoint-every",
                "10", "--eval-env", "robocl/PickPlace-v0", "--eval-episodes", "1", *TINY_VLA], "il",
               "robocl/PickPlace-v0"),
    "symphony": (["--env", "Walker2d-v5", "--steps", "200", "--n-explore", "64", "--tile", "4", "--hidden",
                  "32", "--n-q", "8", "--batch-size", "16", "--eval-every", "0", "--eval-episodes", "1",
                  "--checkpoint-every", "10", "--log-every", "10"], "online", "Walker2d-v5"),
    "hypercrl": (HYPERCRL, "task0", "robocl/Push-Density1-v0"),
}  # fmt: skip


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    from robocl.collect import collect

    out = tmp_path_factory.mktemp("contract") / "demos.zarr"
    collect("robocl/PickPlace-v0", 8, out, noise=0.1, progress=False, seed=0).close()
    return str(out)


def robocl(*args: str, background: bool = False) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "robocl.cli", *args]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def train_args(method: str, run: Path, seed: int, demos: str) -> list[str]:
    args, _, _ = METHODS[method]
    data = [] if method in ("symphony", "hypercrl") else ["--data", demos]
    return ["train", method, "--run-dir", str(run), "--seed", str(seed), "--quiet", *data, *args]


def first_action(env_id: str, checkpoint: str) -> list:
    """The action a policy loaded for inference takes at the first observation of a seeded episode."""
    import gymnasium as gym
    import robocl_envs  # noqa: F401  (registers the robocl/ ids)

    import robocl
    from robocl.features import FeatureObs

    env = FeatureObs(gym.make(env_id))
    obs, info = env.reset(seed=3)
    policy = robocl.load_policy(checkpoint)
    policy.reset()
    return np.asarray(policy.predict({**obs, "task": info["instruction"] or ""})).tolist()


def last_checkpoints(run: RunDir) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: load_checkpoint(run.checkpoint(stage)).tensors for stage in run.info()["stages"]}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_meets_the_run_contract(method, demos, tmp_path):
    full, killed, other = RunDir(tmp_path / "seed0"), RunDir(tmp_path / "killed"), RunDir(tmp_path / "seed1")
    done = robocl(*train_args(method, full.path, 0, demos))
    assert done.returncode == 0, done.stderr

    # SIGKILL once the first checkpoint is on disk, then resume.
    stage = METHODS[method][1]
    proc = robocl(*train_args(method, killed.path, 0, demos), background=True)
    deadline = time.monotonic() + 300
    # (config.json is written last: its presence means a complete checkpoint; nothing here touches the run)
    while not (killed.checkpoint(stage) / "config.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = robocl(*train_args(method, killed.path, 0, demos), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    want, got = last_checkpoints(full), last_checkpoints(killed)
    assert want.keys() == got.keys()
    for stage_name, tensors in want.items():
        assert all(torch.equal(t, got[stage_name][k]) for k, t in tensors.items()), stage_name

    # The policy loads for inference in a fresh process (no trainer state) and acts like this process's.
    final = full.checkpoint(full.info()["stages"][-1])
    env_id = METHODS[method][2]
    code = "import json, sys\nfrom tests.test_contract import first_action as f\n"
    code += "print(json.dumps(f(*sys.argv[1:])))"
    code_args = [env_id, str(final)]
    fresh = subprocess.run([sys.executable, "-c", code, *code_args], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "MUJOCO_GL": "egl"}, timeout=300)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr
    np.testing.assert_allclose(
        json.loads(fresh.stdout), first_action(env_id, str(final)), rtol=1e-5, atol=1e-6
    )

    # robocl eval scores it with the shared evaluator.
    evaluated = robocl("eval", "--policy", str(final), "--env", env_id, "--episodes", "1", "--max-steps", "3",
                       "--out", str(tmp_path / "eval"), "--quiet")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "eval" / "eval_info.json").read_text())["aggregate"]["n_episodes"] == 1

    # robocl compare reads both seeds' run.json: one group per stage, two seeds each.
    assert robocl(*train_args(method, other.path, 1, demos)).returncode == 0
    (tmp_path / "runs").mkdir()
    for run in (full, other):
        run.path.rename(tmp_path / "runs" / run.path.name)
    compared = robocl("compare", str(tmp_path / "runs"))
    assert compared.returncode == 0, compared.stderr
    stages = RunDir(tmp_path / "runs" / "seed0").info()["stages"]
    for stage_name in stages:
        assert f"| {method} {stage_name} | 2 |" in compared.stdout, compared.stdout
