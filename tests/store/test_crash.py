"""A writer killed with SIGKILL at any moment loses at most the episode it was writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robocl.store import TrajectoryStore
from robocl.store.validate import validate_store
from tests.store.conftest import make_episode

WRITER = """
import sys
from robocl.store import TrajectoryStore
from tests.store.conftest import FEATURES, make_episode, final_of
path, first = sys.argv[1], int(sys.argv[2])
store = (TrajectoryStore.create(path, FEATURES, fps=10) if first == 0 else TrajectoryStore.open(path, "a"))
e = store.n_episodes
while True:
    length = 40 + e % 50
    steps = make_episode(e, length)
    if e % 2:
        store.add_episode(steps, final_obs=final_of(e, length), task=f"t{e % 3}", tags=("a",))
    else:
        with store.episode_writer(task=f"t{e % 3}") as ep:
            for t in range(length):
                ep.add_step({k: v[t] for k, v in steps.items()})
            ep.commit(final_obs=final_of(e, length), success=True)
    print(e, flush=True)
    e += 1
"""

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(path: Path, first: int, commits_before_kill: int, delay: float) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(first)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    last = -1
    assert proc.stdout is not None
    for _ in range(commits_before_kill):
        line = proc.stdout.readline()
        if not line:
            break
        last = int(line)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read()  # commits printed between our last read and the kill
    proc.wait()
    for line in rest.split():
        last = int(line)
    return last


def test_sigkill_mid_append_keeps_every_committed_episode(tmp_path):
    path = tmp_path / "crash.zarr"
    last_reported = -1
    # Different delays land the kill in different phases (step writes, table rows, commit record).
    for round_, delay in enumerate([0.0, 0.003, 0.011, 0.023, 0.037, 0.05]):
        last_reported = max(last_reported, _run_and_kill(path, round_, commits_before_kill=2, delay=delay))
        report = validate_store(path)
        assert report.ok, report.as_text()
        store = TrajectoryStore.open(path, "a")  # the dead writer's lock is gone; truncates leftovers
        assert store.n_episodes >= last_reported + 1
        store.close()

    store = TrajectoryStore.open(path)
    assert store.n_episodes >= 12
    for e in range(store.n_episodes):
        ep = store.episode(e)
        expected = make_episode(e, 40 + e % 50)
        for key, value in expected.items():
            np.testing.assert_array_equal(ep[key], value, err_msg=f"episode {e} {key}")
        assert ep.task == f"t{e % 3}"
    assert not list(path.rglob("*.partial"))
    assert validate_store(path).ok


@pytest.mark.parametrize("mode", ["r", "a"])
def test_open_after_kill_never_sees_uncommitted_rows(tmp_path, mode):
    path = tmp_path / "crash.zarr"
    _run_and_kill(path, 0, commits_before_kill=1, delay=0.02)
    store = TrajectoryStore.open(path, mode)
    committed = store.n_steps
    assert len(store.steps("reward")) == committed
    assert int(store.episodes["length"].sum()) == committed
    store.close()
