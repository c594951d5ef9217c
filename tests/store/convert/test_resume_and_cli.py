from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from robocl.cli import build_parser
from robocl.store import TrajectoryStore
from robocl.store.convert import ingest
from tests.store.convert.builders import STORE_LENGTHS, make_store, write_d4rl

ROOT = Path(__file__).resolve().parents[3]
N_EPISODES, LENGTH = 120, 5

# Small commit batches and a slow reader, so the kill lands between commits of a running ingest.
WRITER = """
import sys, time
import robocl.store.convert.common as common
from robocl.store.convert import d4rl
common.BATCH_EPISODES = 4
read = d4rl.D4RLSource.read
def slow(self, skip):
    for ep in read(self, skip):
        time.sleep(0.02)
        yield ep
d4rl.D4RLSource.read = slow
d4rl.ingest_d4rl(sys.argv[1], sys.argv[2], progress=False).close()
"""


def _long_d4rl(path: Path) -> Path:
    n = N_EPISODES * LENGTH
    with h5py.File(path, "w") as f:
        f["observations"] = np.repeat(np.arange(N_EPISODES, dtype=np.float32), LENGTH)[:, None] * [1, 1]
        f["actions"] = np.zeros((n, 1), np.float32)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = np.arange(n) % LENGTH == LENGTH - 1
        f["timeouts"] = np.zeros(n, bool)
    return path


def test_killed_ingest_resumes_without_duplicates(tmp_path):
    src, dest = _long_d4rl(tmp_path / "long.hdf5"), tmp_path / "s.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(src), str(dest)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 120
    committed = 0
    while committed < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with TrajectoryStore.open(dest) as reader:
                committed = reader.n_episodes
        except (FileNotFoundError, ValueError):  # not created yet, or its header not yet written
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with TrajectoryStore.open(dest) as reader:
        at_kill = reader.n_episodes
    assert 12 <= at_kill < N_EPISODES
    with ingest("d4rl", src, dest, progress=False) as store:
        assert store.n_episodes == N_EPISODES
        assert store.episodes["source_episode"].tolist() == list(range(N_EPISODES))
        # Each episode's observations carry its source index: nothing duplicated or shifted.
        np.testing.assert_array_equal(
            store.steps("observation.state")[:, 0], np.repeat(np.arange(N_EPISODES), LENGTH)
        )


def _run(argv: list[str]) -> int:
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


def test_cli_ingest_and_export(tmp_path, capsys):
    src = write_d4rl(tmp_path / "hopper-random-v2.hdf5")
    assert _run(["ingest", "d4rl", str(src), str(tmp_path / "s.zarr"), "--fps", "25", "--quiet"]) == 0
    assert "s.zarr: 3 episodes, 9 steps" in capsys.readouterr().out
    with TrajectoryStore.open(tmp_path / "s.zarr") as store:
        assert store.fps == 25 and store.meta["d4rl"]["ref_min_score"] == -20.272305
    make_store(tmp_path / "a.zarr").close()
    assert (
        _run(["export", "lerobot", str(tmp_path / "a.zarr"), str(tmp_path / "ds"), "--images", "--quiet"])
        == 0
    )
    assert (tmp_path / "ds/meta/info.json").is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(["export", "lerobot", str(tmp_path / "a.zarr"), str(tmp_path / "ds"), "--quiet"])
    assert _run(["export", "robomimic", str(tmp_path / "a.zarr"), str(tmp_path / "r.hdf5"), "--quiet"]) == 0
    assert _run(["ingest", "robomimic", str(tmp_path / "r.hdf5"), str(tmp_path / "r.zarr"), "--quiet"]) == 0
    with TrajectoryStore.open(tmp_path / "r.zarr") as store:
        assert store.episodes["length"].tolist() == list(STORE_LENGTHS)


def test_cli_refuses_an_option_of_another_format(tmp_path):
    src = write_d4rl(tmp_path / "a.hdf5")
    with pytest.raises(ValueError, match="--repo-id applies to lerobot, not d4rl"):
        _run(["ingest", "d4rl", str(src), str(tmp_path / "s.zarr"), "--repo-id", "x/y"])
    with pytest.raises(ValueError, match="--images applies to lerobot, not robomimic"):
        _run(["export", "robomimic", str(tmp_path / "s.zarr"), str(tmp_path / "r.hdf5"), "--images"])
    assert not (tmp_path / "s.zarr").exists()


def test_unknown_format():
    with pytest.raises(ValueError, match=r"unknown format 'rlds'; expected one of \['d4rl', 'lerobot'"):
        ingest("rlds", "x", "y")


def test_cli_reports_a_missing_optional_dependency(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "minari", None)
    assert _run(["ingest", "minari", "some/dataset-v0", str(tmp_path / "s.zarr"), "--quiet"]) == 2
    assert "pip install 'robocl[minari]'" in capsys.readouterr().err


def test_dtypes_are_kept_unless_a_cast_is_asked_for(tmp_path):
    from tests.store.convert.builders import write_robomimic

    src = write_robomimic(tmp_path / "r.hdf5")  # float64 rewards, actions and states
    with ingest("robomimic", src, tmp_path / "kept.zarr", progress=False) as store:
        assert store.features["reward"].dtype == "float64"
    args = [
        "ingest",
        "robomimic",
        str(src),
        str(tmp_path / "cast.zarr"),
        "--cast",
        "reward=float32,action=float32",
    ]
    assert _run([*args, "--quiet"]) == 0
    with TrajectoryStore.open(tmp_path / "cast.zarr") as store:
        assert (store.features["reward"].dtype, store.features["action"].dtype) == ("float32", "float32")
        assert store.features["sim_state"].dtype == "float64"
    with pytest.raises(ValueError, match="cannot cast 'reward' from float64 to int32"):
        ingest("robomimic", src, tmp_path / "bad.zarr", cast={"reward": "int32"}, progress=False)
    with pytest.raises(ValueError, match=r"cast names unknown feature\(s\) \['rewards'\]"):
        ingest("robomimic", src, tmp_path / "bad.zarr", cast={"rewards": "float32"}, progress=False)
