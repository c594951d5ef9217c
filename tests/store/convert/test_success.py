"""``robocl ingest --success``: where episodes' success comes from, for recordings that do not say."""

from __future__ import annotations

import numpy as np
import pytest

from robocl import cli
from robocl.store import TrajectoryStore
from robocl.store.convert import ingest
from tests.store.convert.builders import write_lerobot_recording, write_lerobot_v3

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def recording(root, n_episodes: int = 3):
    """A LeRobot v3 recording of a 6-joint arm with cameras 'laptop' and 'phone' and no success column."""
    rng = np.random.default_rng(0)
    episodes = []
    for e in range(n_episodes):
        length = 4 + e
        joints = rng.normal(size=(length, 6)).astype(np.float32)
        frames = np.full((length, 16, 16, 3), 40 * e, np.uint8)
        episodes.append(
            {
                "observation.state": joints,
                "action": joints + 0.5,
                "observation.images.laptop": frames,
                "observation.images.phone": frames,
            }
        )
    return write_lerobot_recording(root, episodes, task="pick the cube", joint_names=JOINTS)


def test_a_recording_without_success_column_is_ingested_as_unknown(tmp_path, capsys):
    assert cli.main(["ingest", "lerobot", str(recording(tmp_path / "rec")), str(tmp_path / "s.zarr")]) == 0
    assert "success unknown for 3 episodes: mark them with robocl edit" in capsys.readouterr().out
    with TrajectoryStore.open(tmp_path / "s.zarr") as store:
        assert not store.success_known.any() and store.summary()["success_rate"] is None
        assert store.features["observation.state"].names == tuple(JOINTS)
        assert sorted(k for k, f in store.features.items() if f.is_image) == [
            "observation.images.laptop",
            "observation.images.phone",
        ]


@pytest.mark.parametrize(
    ("rule", "success"),
    [
        ("all", [True, True, True]),
        ("none", [None, None, None]),
        ("last", [None, None, None]),
    ],  # the fixture has no next.success
)
def test_success_rules(tmp_path, rule, success):
    with ingest("lerobot", write_lerobot_v3(tmp_path / "v3"), tmp_path / "s.zarr", success=rule) as store:
        assert [store.episode(i).success for i in range(3)] == success


def test_success_from_a_named_column(tmp_path):
    # The fixture's next.done is True on each episode's last step; by its source key or its store name.
    for name in ("next.done", "done"):
        out = tmp_path / f"{name}.zarr"
        with ingest("lerobot", write_lerobot_v3(tmp_path / "v3"), out, success=f"column:{name}") as store:
            assert store.success_known.all() and store.episodes["success"].all()


def test_an_unknown_success_column_is_one_line(tmp_path, capsys):
    src = str(recording(tmp_path / "rec"))
    assert (
        cli.main(["ingest", "lerobot", src, str(tmp_path / "s.zarr"), "--success", "column:is_success"]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--success column:is_success: the source has no per-step column 'is_success'" in err
    assert not (tmp_path / "s.zarr").exists()
