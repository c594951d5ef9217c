from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robocl.store import Feature, TrajectoryStore
from robocl.store.convert import ConversionError, export, ingest
from robocl.store.validate import validate_store
from tests.store.convert.builders import (
    STORE_FEATURES,
    STORE_LENGTHS,
    TASKS,
    V3_EPISODES,
    V21_EPISODES,
    action_of,
    episode_meta,
    grey_frames,
    level,
    make_store,
    psnr,
    reward_of,
    state_of,
    write_lerobot_v3,
    write_lerobot_v21,
    write_mp4,
)

#: On these 48x64 render-like frames yuv420p chroma subsampling alone caps PSNR at 30.8 dB; crf 30 measured
#: 29.1 dB (AV1) and 29.4 dB (H.264). The benchmark's 96x96 frames reach ~32 dB (benchmarks/ingest.py).
VIDEO_PSNR_DB = 28.0


def _levels(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64).mean(axis=(1, 2, 3))


def test_ingest_v3_values_frames_and_tasks(tmp_path):
    root = write_lerobot_v3(tmp_path / "koch_pick")
    with ingest("lerobot", root, tmp_path / "s.zarr", progress=False) as store:
        assert store.fps == 10 and store.meta["robot"] == "koch"
        assert store.features["observation.state"] == Feature("state", "float32", (3,), names=("x", "y", "z"))
        assert store.features["observation.images.top"] == Feature("rgb", "uint8", (32, 32, 3))
        assert store.features["reward"] == Feature("reward", "float32")
        assert store.features["done"] == Feature("flag", "bool")
        assert store.features["task"] == Feature("language")  # episode 1 has two tasks
        assert store.tasks == TASKS
        first = 0
        for e, length, tasks in V3_EPISODES:
            ep = store.episode(e)
            np.testing.assert_array_equal(ep["observation.state"], state_of(e, length))
            np.testing.assert_array_equal(ep["action"], action_of(e, length))
            np.testing.assert_array_equal(ep["reward"], reward_of(e, length))
            np.testing.assert_array_equal(ep["done"], np.arange(length) == length - 1)
            assert list(ep["task"]) == [TASKS[i] for i in tasks]
            assert ep.task == TASKS[tasks[0]] and ep.terminated and not ep.success and not ep.truncated
            assert (ep.source, ep.source_episode) == ("lerobot:koch_pick", e)
            # Frame k of the dataset has grey level 20 + 10 k: the wrong timestamp gives a level 10 away.
            np.testing.assert_allclose(
                _levels(ep["observation.images.top"]), [level(first + i) for i in range(length)], atol=3
            )
            first += length
        assert not store.episodes["has_final_obs"].any()


def test_ingest_v21(tmp_path):
    root = write_lerobot_v21(tmp_path / "old")
    with ingest("lerobot", root, tmp_path / "s.zarr", repo_id="lab/old", progress=False) as store:
        assert "task" not in store.features  # one task per episode
        assert store.meta["lerobot"] == {
            "repo_id": "lab/old",
            "codebase_version": "v2.1",
            "robot_type": "koch",
        }
        first = 0
        for e, length, tasks in V21_EPISODES:
            ep = store.episode(e)
            assert ep.task == TASKS[tasks[0]] and ep.source == "lerobot:lab/old"
            np.testing.assert_array_equal(ep["observation.state"], state_of(e, length))
            np.testing.assert_allclose(
                _levels(ep["observation.images.top"]), [level(first + i) for i in range(length)], atol=3
            )
            first += length


@pytest.mark.parametrize("vcodec, codec_name", [("libsvtav1", "av1"), ("libx264", "h264")])
def test_round_trip_through_video(tmp_path, vcodec, codec_name):
    store = make_store(tmp_path / "a.zarr")
    root = export("lerobot", store, tmp_path / "ds", vcodec=vcodec, progress=False)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == codec_name
    with ingest("lerobot", root, tmp_path / "b.zarr", progress=False) as back:
        assert back.features == store.features and back.meta == store.meta and back.fps == store.fps
        for i, length in enumerate(STORE_LENGTHS):
            a, b = store.episode(i), back.episode(i)
            for key in ("observation.state", "action", "reward", "success"):
                assert np.array_equal(a[key], b[key]) and a[key].dtype == b[key].dtype
            assert psnr(a["observation.images.front"], b["observation.images.front"]) >= VIDEO_PSNR_DB
            assert episode_meta(b) == episode_meta(a)
            assert (b.source, b.source_episode, len(b)) == ("lerobot:ds", i, length)
        assert not back.episodes["has_final_obs"].any()  # LeRobot has no row for final observations
    store.close()


def test_round_trip_png_images_is_exact_and_files_roll_over(tmp_path):
    store = make_store(tmp_path / "a.zarr")
    # Tiny size limits: every episode opens a new data file.
    root = export(
        "lerobot", store, tmp_path / "ds", use_videos=False, data_files_size_in_mb=1e-6, progress=False
    )
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"]["observation.images.front"]["dtype"] == "image" and info["video_path"] is None
    assert sorted(p.name for p in (root / "data/chunk-000").iterdir()) == [
        f"file-{i:03d}.parquet" for i in range(4)
    ]
    with ingest("lerobot", root, tmp_path / "b.zarr", progress=False) as back:
        for i in range(len(STORE_LENGTHS)):
            np.testing.assert_array_equal(
                back.episode(i)["observation.images.front"], store.episode(i)["observation.images.front"]
            )
    store.close()


def test_export_layout_follows_lerobot_v3(tmp_path):
    store = make_store(tmp_path / "a.zarr")
    root = export("lerobot", store, tmp_path / "ds", video_files_size_in_mb=1e-6, progress=False)
    info = json.loads((root / "meta/info.json").read_text())
    assert (info["codebase_version"], info["fps"], info["robot_type"]) == ("v3.0", 10, "panda")
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (4, 20, 2)
    assert info["splits"] == {"train": "0:4"} and info["chunks_size"] == 1000
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert list(features)[-5:] == ["timestamp", "frame_index", "episode_index", "index", "task_index"]
    assert features["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert features["next.reward"] == {"dtype": "float32", "shape": [1], "names": None}
    assert features["next.success"] == {"dtype": "bool", "shape": [1], "names": None}
    assert features["observation.state"] == {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]}
    video = features["observation.images.front"]
    assert video["dtype"] == "video" and video["shape"] == [48, 64, 3]
    assert video["info"] | {"video.codec": None} == {
        "video.height": 48,
        "video.width": 64,
        "video.codec": None,
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": 10,
        "video.channels": 3,
        "has_audio": False,
    }

    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    rows = episodes.to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2, 3]
    assert [r["length"] for r in rows] == list(STORE_LENGTHS)
    assert [r["dataset_from_index"] for r in rows] == [0, 6, 7, 16]
    assert [r["tasks"] for r in rows] == [["task 0"], ["task 1"], ["task 0"], ["task 1"]]
    assert [r["videos/observation.images.front/from_timestamp"] for r in rows] == [0.0, 0.6, 0.7, 1.6]
    assert [r["videos/observation.images.front/to_timestamp"] for r in rows] == [0.6, 0.7, 1.6, 2.0]
    assert rows[1]["stats/next.reward/min"] == [101.0] and rows[1]["stats/action/count"] == [1]
    assert np.array(rows[0]["stats/observation.images.front/mean"]).shape == (3, 1, 1)

    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["next.reward"]["max"] == [304.0] and stats["index"]["count"] == [20]
    np.testing.assert_allclose(stats["action"]["mean"], store.stats["action"]["mean"])

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["task 0", "task 1"]
    data = pq.ParquetFile(root / "data/chunk-000/file-000.parquet")
    assert data.metadata.num_row_groups == 4  # one per episode
    assert data.schema_arrow.field("observation.state").type == pa.list_(pa.float32(), 3)
    assert data.read().column("index").to_pylist() == list(range(20))

    with av.open(str(root / "videos/observation.images.front/chunk-000/file-000.mp4")) as container:
        stream = container.streams.video[0]
        times = [frame.pts * stream.time_base for frame in container.decode(stream)]
    assert times == [Fraction(k, 10) for k in range(20)]  # four episodes back to back, exactly k / fps
    store.close()


def test_video_files_roll_over(tmp_path):
    store = make_store(tmp_path / "a.zarr", lengths=(40, 40, 40))
    # A 1-byte limit closes a file once the encoder has emitted bytes for it (the encoder holds a few
    # frames back, so 40-frame episodes are needed); the next episode starts a new file at time 0.
    root = export("lerobot", store, tmp_path / "ds", video_files_size_in_mb=1e-6, progress=False)
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.front/"
    assert [r[key + "file_index"] for r in rows] == [0, 1, 2]
    assert [r[key + "from_timestamp"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r[key + "to_timestamp"] for r in rows] == [4.0, 4.0, 4.0]
    with ingest("lerobot", root, tmp_path / "b.zarr", progress=False) as back:
        for i in range(3):
            assert (
                psnr(
                    back.episode(i)["observation.images.front"], store.episode(i)["observation.images.front"]
                )
                >= VIDEO_PSNR_DB
            )
    store.close()


def test_export_refuses_what_lerobot_cannot_hold(tmp_path):
    store = TrajectoryStore.create(
        tmp_path / "a.zarr",
        {"depth": Feature("depth", "uint16", (4, 4)), "action": Feature("action")},
        fps=10,
    )
    store.add_episode({"depth": np.zeros((2, 4, 4), np.uint16), "action": np.zeros(2, np.float32)})
    with pytest.raises(ConversionError, match=r"depth: LeRobot v3\.0 datasets hold no depth features"):
        export("lerobot", store, tmp_path / "ds", progress=False)
    store.close()


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_info_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match=r"empty/meta/info.json: meta/info.json: missing"):
        ingest("lerobot", tmp_path / "empty", tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_unknown_codebase_version(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v9.0"}))
    with pytest.raises(ConversionError, match=r"info.json: codebase_version: unknown version 'v9.0'"):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)


def test_shape_mismatch_names_file_and_field(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [4]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        ConversionError, match=r"file-000.parquet: observation.state: shape \(4, 3\) does not hold"
    ):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)


def _committed(path) -> list[int]:
    with TrajectoryStore.open(path) as store:
        assert validate_store(path).ok
        return store.episodes["source_episode"].tolist()


def test_corrupt_parquet_keeps_what_was_committed(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    (root / "data/chunk-000/file-001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConversionError, match=r"file-001.parquet: parquet: cannot read"):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)
    assert _committed(tmp_path / "s.zarr") == [0, 1]  # episodes 0 and 1 live in data file 0


def test_short_video_fails_then_resume_completes_without_duplicates(tmp_path):
    root = write_lerobot_v3(tmp_path / "ds")
    video = root / "videos/observation.images.top/chunk-000/file-001.mp4"
    write_mp4(video, grey_frames(10, 1))  # episode 2 needs 3 frames
    with pytest.raises(
        ConversionError,
        match=r"file-001.mp4: observation.images.top \(episode 2\): .*shorter than its timestamps",
    ):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)
    assert _committed(tmp_path / "s.zarr") == [0, 1]
    write_mp4(video, grey_frames(10, 3))
    with ingest("lerobot", root, tmp_path / "s.zarr", progress=False) as store:
        assert store.episodes["source_episode"].tolist() == [0, 1, 2]
        assert store.n_steps == 13
        np.testing.assert_allclose(
            _levels(store.episode(2)["observation.images.top"]), [level(10 + i) for i in range(3)], atol=3
        )
    with ingest("lerobot", root, tmp_path / "s.zarr", progress=False) as store:  # nothing left to add
        assert store.n_episodes == 3


def test_resume_refuses_a_store_with_other_features(tmp_path):
    make_store(tmp_path / "s.zarr").close()
    root = write_lerobot_v3(tmp_path / "ds")
    with pytest.raises(
        ConversionError, match=r"s.zarr: features: the existing store .* does not match this source"
    ):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)


def test_lerobot_opens_our_export(tmp_path):
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    store = make_store(tmp_path / "a.zarr", {k: v for k, v in STORE_FEATURES.items()})
    root = export("lerobot", store, tmp_path / "lab" / "pushes", progress=False)
    dataset = lerobot_dataset.LeRobotDataset("lab/pushes", root=root, video_backend="pyav")
    assert dataset.num_episodes == 4 and len(dataset) == 20 and dataset.fps == 10
    item = dataset[7]  # episode 2, frame 0
    np.testing.assert_array_equal(item["observation.state"].numpy(), state_of(2, 1)[0])
    assert item["task"] == "task 0" and item["observation.images.front"].shape == (3, 48, 64)
    store.close()


# -------------------------------------------------------------------------------------- untrusted input
def _edit_info(root, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_path": "../outside/file-{file_index:03d}.parquet"}, "points outside the dataset folder"),
        ({"data_path": "/etc/data-{chunk_index}.parquet"}, "points outside the dataset folder"),
        ({"video_path": "../../../../etc/hostname{video_key}"}, "points outside the dataset folder"),
        ({"data_path": "data/chunk-{chunk_index:0400000000d}.parquet"}, "widths up to 20"),
        ({"data_path": "data/{0}.parquet"}, r"'\{0\}' in .* is not one of the fields"),
        ({"data_path": "data/{chunk_index.__class__}.parquet"}, "is not one of the fields"),
        ({"data_path": "data/{chunk_index[0]}.parquet"}, "is not one of the fields"),
        ({"data_path": "data/chunk-{chunk_index:03d.parquet"}, "unmatched brace"),
        ({"total_frames": 999}, "total_frames: says 999, but the dataset's metadata lists 13"),
        ({"total_episodes": 7}, "total_episodes: says 7, but the dataset.s metadata lists 3"),
    ],
)
def test_hostile_or_inconsistent_info_json_is_refused_before_reading(tmp_path, changes, message):
    root = write_lerobot_v3(tmp_path / "ds")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "file-000.parquet").write_bytes(
        (root / "data/chunk-000/file-000.parquet").read_bytes()
    )
    _edit_info(root, **changes)
    with pytest.raises(ConversionError, match=message):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_v21_templates_are_filled_by_the_fixed_formatter(tmp_path):
    root = write_lerobot_v21(tmp_path / "old")
    _edit_info(root, video_path="videos/chunk-{episode_chunk:03d}/../../../{video_key}/x.mp4")
    with pytest.raises(ConversionError, match="points outside the dataset folder"):
        ingest("lerobot", root, tmp_path / "s.zarr", progress=False)
