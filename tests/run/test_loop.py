"""The shared loop: resume equals an uninterrupted run, the NaN guard, checkpoints round-trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import robocl
from robocl.algos.bc import BC, BCConfig
from robocl.checkpoint import CheckpointError, load_checkpoint
from robocl.run.layout import RunDir
from robocl.run.loop import LoopConfig, TrainingDiverged, fit
from robocl.store import Feature, TrajectoryStore, WindowSampler

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_store(tmp_path) -> TrajectoryStore:
    store = TrajectoryStore.create(
        tmp_path / "demo.zarr",
        {
            "observation.state": Feature("state", "float32", (4,)),
            "action": Feature("action", "float32", (2,)),
            "reward": Feature("reward", "float32"),
        },
        fps=10,
    )
    rng = np.random.default_rng(0)
    for _ in range(6):
        state = rng.normal(size=(20, 4)).astype(np.float32)
        action = np.tanh(state[:, :2] * 2.0)  # a learnable mapping
        store.add_episode(
            {"observation.state": state, "action": action, "reward": np.zeros(20)}, terminated=True
        )
    return store


def make(store: TrajectoryStore) -> tuple[BC, WindowSampler]:
    config = BCConfig(n_obs=2, horizon=4, n_action_steps=2, hidden=(64, 64), lr=3e-3, seed=3)
    return BC.from_store(config, store), WindowSampler(store, n_obs=2, horizon=4, seed=5)


def test_resume_equals_uninterrupted_run(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    full = fit(
        algo,
        sampler,
        LoopConfig(n_updates=40, batch_size=16, checkpoint_every=10, log_every=5),
        tmp_path / "full",
        stage="bc",
        progress=False,
    )

    algo, sampler = make(demo_store)
    first = fit(
        algo,
        sampler,
        LoopConfig(n_updates=17, batch_size=16, checkpoint_every=10, log_every=5),
        tmp_path / "split",
        stage="bc",
        progress=False,
    )
    # A new process would rebuild everything from scratch; so do we, with different initial RNG use.
    np.random.default_rng(99).normal(size=10)
    algo, sampler = make(demo_store)
    rest = fit(
        algo,
        sampler,
        LoopConfig(n_updates=40, batch_size=16, checkpoint_every=10, log_every=5),
        tmp_path / "split",
        resume=True,
        stage="bc",
        progress=False,
    )
    assert [m["loss"] for m in first + rest] == [m["loss"] for m in full]  # bit for bit
    losses = [m["loss"] for m in full]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])  # it learns
    info = RunDir(tmp_path / "split").info()
    assert info["method"] == "bc" and info["stages"] == ["bc"] and info["loops"]["bc"]["n_updates"] == 40
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(RunDir(tmp_path / "full").tb("bc")))
    events.Reload()
    assert {"train/loss", "train/grad_norm", "perf/updates_per_s", "lr/optimizer"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30, 35, 40]
    with pytest.raises(FileExistsError, match="already holds stage 'bc'"):
        fit(*make(demo_store), LoopConfig(n_updates=1), tmp_path / "split", stage="bc", progress=False)


class PoisonedSampler:
    """Returns a NaN observation at the given draw, like a corrupt sensor reading."""

    def __init__(self, sampler: WindowSampler, at: int) -> None:
        self.sampler, self.at, self.draws = sampler, at, 0

    def sample(self, n: int) -> dict:
        batch = self.sampler.sample(n)
        self.draws += 1
        if self.draws == self.at:
            batch["obs"]["observation.state"][0, 0, 0] = np.nan
        return batch

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def test_nan_guard_stops_with_step_and_batch_and_keeps_good_weights(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    with pytest.raises(
        TrainingDiverged, match=r"update 4: loss is nan; batch \(episode, t\) = \[\(\d+, \d+\)"
    ):
        fit(
            algo,
            PoisonedSampler(sampler, at=4),
            LoopConfig(n_updates=10, batch_size=8),
            tmp_path / "run",
            stage="bc",
            progress=False,
        )
    good = load_checkpoint(RunDir(tmp_path / "run").checkpoint("bc", "last_good"))
    assert good.step == 3
    assert all(np.isfinite(t.numpy()).all() for t in good.tensors.values())


def test_checkpoint_round_trip_in_a_fresh_process(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=20, batch_size=16), tmp_path / "run", stage="bc", progress=False)
    ckpt = RunDir(tmp_path / "run").checkpoint("bc")
    obs = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    policy = robocl.load_policy(str(ckpt))
    policy.reset()
    here = np.stack([policy.predict({"observation.state": obs}) for _ in range(3)])
    np.save(tmp_path / "obs.npy", obs)
    code = (
        "import numpy as np, robocl;"
        f"p = robocl.load_policy({str(ckpt)!r}); p.reset(); o = np.load({str(tmp_path / 'obs.npy')!r});"
        "a = np.stack([p.predict({'observation.state': o}) for _ in range(3)]);"
        f"np.save({str(tmp_path / 'there.npy')!r}, a)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    np.testing.assert_array_equal(np.load(tmp_path / "there.npy"), here)
    single = robocl.load_policy(str(ckpt))
    single.reset()
    assert single.predict({"observation.state": obs[0]}).shape == (2,)


def test_corrupt_and_foreign_checkpoints_give_clear_errors(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=2, batch_size=4), tmp_path / "run", stage="bc", progress=False)
    ckpt = RunDir(tmp_path / "run").checkpoint("bc")
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        robocl.load_policy(str(tmp_path))
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors fails its SHA-256 checksum"):
        robocl.load_policy(str(ckpt))
    weights.write_bytes(data)
    header = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(header | {"robocl_version": "0.0.1"}))
    with pytest.raises(CheckpointError, match=r"written by robocl 0\.0\.1"):
        robocl.load_policy(str(ckpt))
    (ckpt / "config.json").write_text(json.dumps(header | {"method": "alchemy"}))
    with pytest.raises(ValueError, match="unknown method 'alchemy'"):
        robocl.load_policy(str(ckpt))
    (ckpt / "config.json").write_text(json.dumps(header))
    (ckpt / "trainer.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"trainer\.pt fails its SHA-256 checksum"):
        load_checkpoint(ckpt).trainer_state()


def test_flipped_bytes_in_tensors_are_refused_not_loaded(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=2, batch_size=4), tmp_path / "run", stage="bc", progress=False)
    weights = RunDir(tmp_path / "run").checkpoint("bc") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: safetensors alone would load a slightly different weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its SHA-256 checksum"):
        robocl.load_policy(str(weights.parent))


def test_kill_between_the_renames_resumes_from_the_newest_complete_copy(demo_store, tmp_path, monkeypatch):
    loop = LoopConfig(n_updates=4, batch_size=4, checkpoint_every=2)
    algo, sampler = make(demo_store)
    fit(algo, sampler, loop, tmp_path / "run", stage="bc", progress=False)  # last: step 4
    last = RunDir(tmp_path / "run").checkpoint("bc")
    rename = Path.rename

    def killed_before_second_rename(self, target):
        if self.name == "last.tmp":
            raise KeyboardInterrupt("killed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_second_rename)
    algo, sampler = make(demo_store)
    with pytest.raises(KeyboardInterrupt):
        fit(algo, sampler, LoopConfig(n_updates=6, batch_size=4, checkpoint_every=2), tmp_path / "run",
            resume=True, stage="bc", progress=False)  # fmt: skip
    monkeypatch.undo()
    assert not last.exists() and (last.parent / "last.old").exists() and (last.parent / "last.tmp").exists()

    with pytest.warns(RuntimeWarning, match=r"using last\.tmp, the newest complete copy \(step 6\)"):
        assert load_checkpoint(last).step == 6
    assert last.exists() and not (last.parent / "last.tmp").exists()


def test_resume_refuses_another_methods_checkpoint(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=2, batch_size=4), tmp_path / "run", stage="bc", progress=False)
    config = RunDir(tmp_path / "run").checkpoint("bc") / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"method": "co-rft"}))
    algo, sampler = make(demo_store)
    with pytest.raises(CheckpointError, match="holds a co-rft checkpoint, not bc"):
        fit(
            algo,
            sampler,
            LoopConfig(n_updates=4, batch_size=4),
            tmp_path / "run",
            resume=True,
            stage="bc",
            progress=False,
        )


def test_checkpoint_files_and_folders_are_fsynced(demo_store, tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr("os.fsync", lambda fd: synced.append(Path(f"/proc/self/fd/{fd}").resolve().name))
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=1, batch_size=4), tmp_path / "run", stage="bc", progress=False)
    assert {"model.safetensors", "trainer.pt", "config.json", "last.tmp", "bc"} <= set(synced)


def test_checkpoints_from_before_checksums_still_resume(demo_store, tmp_path):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=2, batch_size=4), tmp_path / "run", stage="bc", progress=False)
    config = RunDir(tmp_path / "run").checkpoint("bc") / "config.json"
    header = json.loads(config.read_text())
    del header["sha256"]
    config.write_text(json.dumps(header | {"format": 1}))  # what robocl wrote before checksums
    algo, sampler = make(demo_store)
    fit(
        algo,
        sampler,
        LoopConfig(n_updates=3, batch_size=4),
        tmp_path / "run",
        resume=True,
        stage="bc",
        progress=False,
    )
    assert load_checkpoint(config.parent).step == 3


def test_the_run_prints_its_estimated_duration_after_timing_a_few_updates(demo_store, tmp_path, capsys):
    algo, sampler = make(demo_store)
    fit(algo, sampler, LoopConfig(n_updates=30, batch_size=8), tmp_path / "run", stage="bc")
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "more updates" in x]
    assert line.startswith("bc: 24 more updates, about ") and line.endswith(" updates/s)")
    fit(
        *make(demo_store),
        LoopConfig(n_updates=30, batch_size=8),
        tmp_path / "quiet",
        stage="bc",
        progress=False,
    )
    assert "more updates" not in capsys.readouterr().err  # --quiet: nothing


def test_evaluation_time_is_logged_apart_from_the_update_rate(demo_store, tmp_path):
    """perf/eval_s records each evaluation's seconds; perf/updates_per_s counts training alone, so a slow
    evaluation (here 0.3 s, against milliseconds for 5 updates) does not drag it down."""
    import time

    def slow_evaluation(policy, out):
        time.sleep(0.3)
        return {"score": 1.0}

    algo, sampler = make(demo_store)
    loop = LoopConfig(n_updates=20, batch_size=8, log_every=5, eval_every=5)
    fit(algo, sampler, loop, tmp_path / "run", stage="bc", progress=False, evaluate=slow_evaluation)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(RunDir(tmp_path / "run").tb("bc")))
    tb.Reload()
    eval_s = {e.step: e.value for e in tb.Scalars("perf/eval_s")}
    assert set(eval_s) == {5, 10, 15, 20} and min(eval_s.values()) >= 0.3
    # With the evaluations counted, the windows after steps 5, 10 and 15 could not exceed 5 / 0.3 = 17/s.
    assert min(e.value for e in tb.Scalars("perf/updates_per_s")[1:]) > 5 / 0.3


def test_wandb_logs_the_same_scalars_as_tensorboard_offline(demo_store, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[dict, int]] = []
    real_log = wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(
        wandb.sdk.wandb_run.Run,
        "log",
        lambda run, data, step=None: logged.append((data, step)) or real_log(run, data, step=step),
    )
    algo, sampler = make(demo_store)
    loop = LoopConfig(n_updates=10, batch_size=8, log_every=5, wandb=True)
    fit(
        algo,
        sampler,
        loop,
        tmp_path / "run",
        stage="bc",
        progress=False,
        evaluate=lambda policy, out: {"score": 1.5},
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "run" / "tb" / "bc"))
    tb.Reload()
    in_tensorboard = {e.step: e.value for e in tb.Scalars("train/loss")}
    in_wandb = {step: data["train/loss"] for data, step in logged if "train/loss" in data}
    assert set(in_wandb) == {5, 10} and in_wandb == pytest.approx(in_tensorboard, rel=1e-6)
    assert ({"eval/score": 1.5}, 10) in logged
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")  # recorded for `wandb sync`
    assert list(offline.glob("run-*.wandb"))


def test_wandb_without_the_package_is_refused_before_the_run(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"--wandb needs the wandb package: pip install 'robocl\[wandb\]'"):
        LoopConfig(wandb=True)
