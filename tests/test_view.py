"""``robocl view`` and the captioned episode frames it shares with ``robocl eval --video``."""

from __future__ import annotations

import numpy as np
import pytest

from robocl import cli
from robocl.eval.evaluate import evaluate, parse_video_episodes
from robocl.eval.video import MIN_HEIGHT, caption, count_frames
from robocl.store import Feature, TrajectoryStore
from tests.store.conftest import FEATURES, final_of, make_episode


def test_view_writes_the_episode_video_and_its_curves(tmp_path, capsys):
    with TrajectoryStore.create(tmp_path / "demo.zarr", FEATURES, fps=10) as store:
        for e, length in enumerate((5, 3, 7)):
            store.add_episode(make_episode(e, length), final_obs=final_of(e, length), task="pick the cube")
    assert (
        cli.main(["view", str(tmp_path / "demo.zarr"), "--episode", "2", "--out", str(tmp_path / "v")]) == 0
    )
    assert capsys.readouterr().out.split() == [
        "wrote",
        str(tmp_path / "v" / "demo_episode_2.mp4"),
        "wrote",
        str(tmp_path / "v" / "demo_episode_2.png"),
    ]
    assert count_frames(tmp_path / "v" / "demo_episode_2.mp4") == 7 + 1  # + the final observation
    assert (tmp_path / "v" / "demo_episode_2.png").stat().st_size > 10_000
    assert cli.main(["view", str(tmp_path / "demo.zarr"), "--episode", "9"]) == 2
    assert "--episode 9: " in capsys.readouterr().err


def test_a_store_without_cameras_gets_its_curves_only(tmp_path, capsys):
    feats = {
        "observation.state": Feature("state", "float32", (2,), names=("x", "y")),
        "action": Feature("action"),
    }
    with TrajectoryStore.create(tmp_path / "s.zarr", feats, fps=5) as store:
        store.add_episode({"observation.state": np.zeros((4, 2)), "action": np.zeros(4)}, success=None)
    assert cli.main(["view", str(tmp_path / "s.zarr"), "--episode", "0", "--out", str(tmp_path)]) == 0
    assert sorted(p.suffix for p in tmp_path.glob("s_episode_0.*")) == [".png"]


def test_captions_scale_the_cameras_up_and_write_below_them():
    frame = np.full((6, 5, 3), 128, np.uint8)
    a, b = caption(frame, ["pick the cube", "step 1/3"]), caption(frame, ["pick the cube", "step 2/3"])
    scale = -(-MIN_HEIGHT // 6)
    assert a.shape[0] > 6 * scale and a.shape[1] == 5 * scale
    assert (a[: 6 * scale] == 128).all()  # the cameras, whole-factor nearest scaling
    assert a[6 * scale :].any() and not np.array_equal(a, b)  # text in the strip, and it differs


def test_evaluation_videos_of_the_chosen_episodes(tmp_path):
    # The random policy fails every 5-step pick-place episode: 2 of 3 failures get videos, no successes.
    common = {"n_episodes": 3, "video": True, "n_videos": 2, "max_steps": 5, "progress": False}
    evaluate("random", "robocl/PickPlace-v0", out_dir=tmp_path / "f", video_episodes="failures", **common)
    assert sorted(p.name for p in (tmp_path / "f" / "videos").iterdir()) == [
        "episode_000.mp4",
        "episode_001.mp4",
    ]
    assert count_frames(tmp_path / "f" / "videos" / "episode_000.mp4") == 6
    evaluate("random", "robocl/PickPlace-v0", out_dir=tmp_path / "s", video_episodes="successes", **common)
    assert not (tmp_path / "s" / "videos").exists()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("first:3", ("first", 3)), ("failures", ("failures", 20)), ("successes:1", ("successes", 1))],
)
def test_video_episode_choices(text, parsed):
    assert parse_video_episodes(text, 20) == parsed


@pytest.mark.parametrize("text", ["first", "last:2", "failures:x"])
def test_bad_video_episode_choices_name_the_forms(text):
    with pytest.raises(ValueError, match=r"expected first:N, failures\[:N\] or successes\[:N\]"):
        parse_video_episodes(text, 20)
