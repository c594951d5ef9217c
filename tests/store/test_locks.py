"""One writer per store, on local disks: what open("a") and create(overwrite=True) do around the lock."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robocl.cli import main
from robocl.store import StoreLockedError, TrajectoryStore
from robocl.store.integrity import DamagedStoreError
from tests.store.conftest import FEATURES, make_episode


@pytest.fixture
def store_path(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s.zarr", FEATURES, fps=10)
    store.add_episode(make_episode(0, 5))
    store.close()
    return tmp_path / "s.zarr"


def _edit_root(path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda p: _edit_root(p, lambda a: a["robocl"].update(format_version=99)), ValueError, "format 99"),
        (lambda p: _edit_root(p, lambda a: a.clear()), ValueError, "not a robocl store"),
        (
            lambda p: (p / "zarr.json").write_text((p / "zarr.json").read_text()[:30]),
            DamagedStoreError,
            "zarr.json is not valid JSON",
        ),
        (lambda p: (p / "data" / "action" / "zarr.json").unlink(), DamagedStoreError, "array data/action"),
    ],
)
def test_open_for_writing_fails_like_reading_and_keeps_no_lock(store_path, damage, error, message):
    damage(store_path)
    for _ in range(2):  # the second would say "open for writing by another process" had the first kept it
        with pytest.raises(error, match=message):
            TrajectoryStore.open(store_path, "a")


def test_overwrite_takes_the_lock_first(store_path, capsys):
    writer = TrajectoryStore.open(store_path, "a")
    with pytest.raises(StoreLockedError, match="open for writing"):
        TrajectoryStore.create(store_path, FEATURES, fps=10, overwrite=True)
    assert main(["collect", "--env", "robocl/Push-Density0-v0", "--episodes", "1", "--out", str(store_path),
                 "--overwrite", "--quiet"]) == 2  # fmt: skip
    assert "open for writing by another process" in capsys.readouterr().err
    writer.add_episode(make_episode(1, 3))  # the live writer's store is still there, whole
    writer.close()
    reader = TrajectoryStore.open(store_path)
    assert reader.n_episodes == 2
    np.testing.assert_array_equal(reader.episode(1)["action"], make_episode(1, 3)["action"])
    fresh = TrajectoryStore.create(store_path, FEATURES, fps=10, overwrite=True)  # no writer now
    assert fresh.n_episodes == 0
    with pytest.raises(StoreLockedError):  # the new store is locked from the moment it appears
        TrajectoryStore.open(store_path, "a")
    fresh.close()
