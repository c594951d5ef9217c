"""Episodes of unknown success, and edits of committed episodes: checked, crash-safe, logged."""

from __future__ import annotations

import numpy as np
import pytest

from robocl import cli
from robocl.store import TrajectoryStore
from robocl.store.validate import validate_store
from tests.store.conftest import FEATURES, make_episode


def unlabelled_store(path, n: int = 4) -> TrajectoryStore:
    """``n`` episodes recorded without success information (as a LeRobot recording is ingested)."""
    store = TrajectoryStore.create(path, FEATURES, fps=10)
    for e in range(n):
        store.add_episode(make_episode(e, 3 + e), success=None, tags=("raw",))
    return store


def test_unknown_success_is_neither_success_nor_failure(tmp_path):
    with unlabelled_store(tmp_path / "s.zarr") as store:
        store.add_episode(make_episode(9, 4), success=False)
        assert store.success_known.tolist() == [False] * 4 + [True]
        assert store.episode(0).success is None and store.episode(4).success is False
        assert store.view(success=False).episode_indices.tolist() == [4]
        assert store.view(success=True).n_episodes == 0
        assert store.summary()["success_rate"] == 0.0 and store.summary()["n_success_known"] == 1


def test_info_says_unknown_not_zero_percent(tmp_path, capsys):
    unlabelled_store(tmp_path / "s.zarr").close()
    assert cli.main(["info", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "success      unknown" in out and "0.0%" not in out


def test_edit_marks_success_and_tags_and_logs_it(tmp_path, capsys):
    path = str(tmp_path / "s.zarr")
    unlabelled_store(path).close()
    args = [
        "edit",
        path,
        "--episodes",
        "0-1,3",
        "--success",
        "true",
        "--tags",
        "train,seen",
        "--untag",
        "raw",
    ]
    assert cli.main(args) == 0
    assert "episodes 0-1, 3: success true, +train, +seen, -raw" in capsys.readouterr().out
    with TrajectoryStore.open(path) as store:
        assert store.success_known.tolist() == [True, True, False, True]
        assert store.episodes["success"].tolist() == [True, True, False, True]
        assert [store.episode(i).tags for i in range(4)] == [("train", "seen")] * 2 + [
            ("raw",),
            ("train", "seen"),
        ]
        (entry,) = store.history
        assert entry["episodes"] == [[0, 2], [3, 4]] and entry["success"] is True
        assert store.view(tags="train", success=True).episode_indices.tolist() == [0, 1, 3]
        assert store.stats["action"]["mean"].tolist() == pytest.approx(store.steps("action").mean(0).tolist())
    assert validate_store(path).ok
    assert cli.main(["edit", path, "--episodes", "3", "--success", "false", "--note", "dropped the cup"]) == 0
    assert cli.main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "success rate 66.7% of the 3 episodes that record it (1 unknown)" in out
    assert "history (2 edits)" in out and "episode 3: success false (dropped the cup)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--episodes", "2-9", "--success", "true"], "episode 4 does not exist; the store has episodes 0-3"),
        (["--episodes", "x", "--success", "true"], "--episodes: cannot read 'x'"),
        (["--episodes", "1", "--untag", "nope"], "no episode has tag 'nope'"),
        (["--episodes", "1"], "nothing to change"),
        (["--episodes", "1", "--tags", "a", "--untag", "a"], "tag(s) ['a'] are both added and removed"),
    ],
)
def test_bad_edits_are_one_line_and_change_nothing(tmp_path, capsys, args, message):
    path = str(tmp_path / "s.zarr")
    unlabelled_store(path).close()
    assert cli.main(["edit", path, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    with TrajectoryStore.open(path) as store:
        assert not store.success_known.any() and store.history == [] and store.tag_names == ["raw"]


def test_an_edit_killed_after_its_commit_is_seen_whole_and_finished_by_the_next_writer(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    unlabelled_store(path).close()

    class Killed(Exception):
        pass

    def killed(self):
        raise Killed  # the process dies before any column is rewritten

    store = TrajectoryStore.open(path, "a")
    monkeypatch.setattr(TrajectoryStore, "_finish_edit", killed)
    with pytest.raises(Killed):
        store.edit_episodes([1, 2], success=True, add_tags=["train"])
    store._release_lock()
    monkeypatch.undo()
    with TrajectoryStore.open(path) as reader:  # the columns still hold the old values; the reader applies it
        assert reader.episodes["success"].tolist() == [False, True, True, False]
        assert reader.episode(2).tags == ("raw", "train")
        assert reader._array("episodes/success")[:4].tolist() == [False] * 4
    with TrajectoryStore.open(path, "a") as writer:  # finishes the edit and drops it from the record
        assert writer._array("episodes/success")[:4].tolist() == [False, True, True, False]
        assert not writer._commit["pending_edit"]
        writer.edit_episodes([1, 2], success=True, add_tags=["train"])  # applying it again changes nothing
        assert writer.episodes["success"].tolist() == [False, True, True, False]
        assert np.array_equal(writer.episodes["tags"][1:3], [3, 3])
        assert len(writer.history) == 2


def test_repairs_keep_unknown_success_and_the_history(tmp_path):
    from robocl.store.validate import _rewrite_without

    path = tmp_path / "s.zarr"
    with unlabelled_store(path) as store:
        store.edit_episodes([0], success=True)
        store._cut(3)  # --repair truncate
        assert store.success_known.tolist() == [True, False, False]
        _rewrite_without(store, {1})  # --repair drop
        store._release_lock()
    with TrajectoryStore.open(path) as store:
        assert store.success_known.tolist() == [True, False] and len(store.history) == 1
