"""Tiny datasets in each format, written by hand to the formats' specs (not by robocl's exporters).

Every value encodes where it came from: state = (episode, t, 0.5 t), action = (episode, t) + 0.25, reward =
100 episode + t + 1, and camera frames are flat grey at level 20 + 10 * (global frame number), so a frame
decoded at the wrong timestamp shows up as the wrong level.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robocl.store import CameraCalibration, Episode, Feature, TrajectoryStore

FPS = 10
CAM = (32, 32, 3)


def episode_meta(ep: Episode) -> tuple:
    """What a round trip must keep of an episode's table row."""
    return (ep.task, ep.success, ep.terminated, ep.truncated, ep.tags)


def assert_same_episodes(store: TrajectoryStore, back: TrajectoryStore) -> None:
    """Lossless round trip: every step bit-exact with its dtype, final observations and table rows."""
    assert back.n_episodes == store.n_episodes
    for i in range(store.n_episodes):
        a, b = store.episode(i), back.episode(i)
        for key in store.features:
            assert np.array_equal(a[key], b[key]) and a[key].dtype == b[key].dtype
        for key in store.observation_keys:
            assert np.array_equal(a.final_obs[key], b.final_obs[key])
        assert episode_meta(b) == episode_meta(a)
    np.testing.assert_array_equal(back.episodes["has_final_obs"], store.episodes["has_final_obs"])


def state_of(episode: int, length: int) -> np.ndarray:
    t = np.arange(length)
    return np.stack([np.full(length, episode), t, t * 0.5], axis=1).astype(np.float32)


def action_of(episode: int, length: int) -> np.ndarray:
    t = np.arange(length)
    return np.stack([np.full(length, episode), t], axis=1).astype(np.float32) + 0.25


def reward_of(episode: int, length: int) -> np.ndarray:
    return (100 * episode + np.arange(length) + 1).astype(np.float32)


def level(frame: int) -> int:
    return 20 + 10 * frame


def grey_frames(first: int, n: int) -> np.ndarray:
    levels = np.array([level(first + i) for i in range(n)], np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, *CAM)).copy()


def render_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Render-like frames: smooth gradients, two moving discs, +-2 sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.stack([xx * 1.5 + 40, yy * 1.2 + 60, (xx + yy) * 0.6 + 80], axis=-1)
        for cx, cy, color in [
            (w / 3 + 8 * np.sin(i / 4), h / 2, (220, 40, 40)),
            (2 * w / 3, h / 3 + 6 * np.cos(i / 3), (40, 40, 200)),
        ]:
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (h / 8) ** 2] = color
        out[i] = np.clip(img + rng.integers(-2, 3, size=img.shape), 0, 255)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS, codec: str = "libx264") -> None:
    """frames at pts k in a 1/fps time base, the way LeRobot's encoder lays them out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options={"g": "2", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for k, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = k
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _info(version: str, total_episodes: int, total_frames: int, data_path: str, video_path: str) -> dict:
    return {
        "codebase_version": version,
        "robot_type": "koch",
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": 2,
        "chunks_size": 1000,
        "fps": FPS,
        "splits": {"train": f"0:{total_episodes}"},
        "data_path": data_path,
        "video_path": video_path,
        "features": {
            "observation.state": {"dtype": "float32", "shape": [3], "names": {"motors": ["x", "y", "z"]}},
            "observation.images.top": {
                "dtype": "video",
                "shape": list(CAM),
                "names": ["height", "width", "channels"],
            },
            "action": {"dtype": "float32", "shape": [2], "names": None},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }


def _data_table(episodes: list[tuple[int, int, list[int]]], first_index: int) -> pa.Table:
    """Rows of (episode, length, per-frame task index); observation.state as variable lists (pandas style)."""
    cols: dict[str, list] = {
        k: []
        for k in (
            "observation.state",
            "action",
            "next.reward",
            "next.done",
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        )
    }
    index = first_index
    for ep, length, tasks in episodes:
        cols["observation.state"] += state_of(ep, length).tolist()
        cols["action"] += action_of(ep, length).tolist()
        cols["next.reward"] += reward_of(ep, length).tolist()
        cols["next.done"] += [t == length - 1 for t in range(length)]
        cols["timestamp"] += [t / FPS for t in range(length)]
        cols["frame_index"] += list(range(length))
        cols["episode_index"] += [ep] * length
        cols["index"] += list(range(index, index + length))
        cols["task_index"] += tasks
        index += length
    return pa.table(
        {
            "observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32())),
            "action": pa.array(cols["action"], pa.list_(pa.float32(), 2)),
            "next.reward": pa.array(cols["next.reward"], pa.float32()),
            "next.done": pa.array(cols["next.done"], pa.bool_()),
            "timestamp": pa.array(cols["timestamp"], pa.float32()),
            **{
                k: pa.array(cols[k], pa.int64())
                for k in ("frame_index", "episode_index", "index", "task_index")
            },
        }
    )


TASKS = ["pick the cube", "place the cube"]
#: LeRobot v3 fixture: (episode, length, per-frame task indices); episode 1 switches task halfway.
V3_EPISODES = [(0, 4, [0] * 4), (1, 6, [0, 0, 0, 1, 1, 1]), (2, 3, [1] * 3)]


def write_lerobot_v3(root: Path) -> Path:
    """3 episodes: episodes 0-1 share data file 0 and video file 0; episode 2 is in data/video file 1."""
    lengths = [n for _, n, _ in V3_EPISODES]
    starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    pq.write_table(_data_table(V3_EPISODES[:2], 0), _mk(root / "data/chunk-000/file-000.parquet"))
    pq.write_table(_data_table(V3_EPISODES[2:], starts[2]), _mk(root / "data/chunk-000/file-001.parquet"))
    write_mp4(root / "videos/observation.images.top/chunk-000/file-000.mp4", grey_frames(0, starts[2]))
    write_mp4(
        root / "videos/observation.images.top/chunk-000/file-001.mp4", grey_frames(starts[2], lengths[2])
    )
    rows = []
    for ep, length, tasks in V3_EPISODES:
        in_file = starts[ep] if ep < 2 else 0
        rows.append(
            {
                "episode_index": ep,
                "tasks": list(dict.fromkeys(TASKS[i] for i in tasks)),
                "length": length,
                "data/chunk_index": 0,
                "data/file_index": 0 if ep < 2 else 1,
                "dataset_from_index": starts[ep],
                "dataset_to_index": starts[ep] + length,
                "videos/observation.images.top/chunk_index": 0,
                "videos/observation.images.top/file_index": 0 if ep < 2 else 1,
                "videos/observation.images.top/from_timestamp": in_file / FPS,
                "videos/observation.images.top/to_timestamp": (in_file + length) / FPS,
                "stats/action/mean": [float(ep), 1.0],
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), _mk(root / "meta/episodes/chunk-000/file-000.parquet"))
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    tasks = pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": TASKS})
    pq.write_table(
        tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta)}), root / "meta/tasks.parquet"
    )
    info = _info(
        "v3.0",
        3,
        starts[-1],
        "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
    )
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root


#: LeRobot v2.1 fixture: one parquet and one mp4 per episode.
V21_EPISODES = [(0, 5, [1] * 5), (1, 3, [0] * 3)]


def write_lerobot_v21(root: Path) -> Path:
    index = 0
    for ep, length, tasks in V21_EPISODES:
        pq.write_table(
            _data_table([(ep, length, tasks)], index), _mk(root / f"data/chunk-000/episode_{ep:06d}.parquet")
        )
        write_mp4(
            root / f"videos/chunk-000/observation.images.top/episode_{ep:06d}.mp4", grey_frames(index, length)
        )
        index += length
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "episodes.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": ep, "tasks": [TASKS[t[0]]], "length": n}) + "\n"
            for ep, n, t in V21_EPISODES
        )
    )
    (meta / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS))
    )
    info = _info(
        "v2.1",
        2,
        index,
        "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    )
    (meta / "info.json").write_text(json.dumps(info))
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


#: D4RL fixture: episode 0 terminates after 4 steps, 1 times out after 3, 2 is an unfinished tail of 2.
D4RL_LENGTHS = (4, 3, 2)


def write_d4rl(path: Path, *, next_observations: bool = False) -> Path:
    obs = np.concatenate([state_of(e, n) for e, n in enumerate(D4RL_LENGTHS)])
    terminals = np.zeros(len(obs), bool)
    timeouts = np.zeros(len(obs), bool)
    terminals[3], timeouts[6] = True, True
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.concatenate([action_of(e, n) for e, n in enumerate(D4RL_LENGTHS)])
        f["rewards"] = np.concatenate([reward_of(e, n) for e, n in enumerate(D4RL_LENGTHS)])
        f["terminals"], f["timeouts"] = terminals, timeouts
        f["infos/qpos"] = obs[:, :2] * 2
        f["infos/goal_reached"] = terminals
        if next_observations:
            f["next_observations"] = obs + 1000
    return path


def write_robomimic(path: Path) -> Path:
    """3 demos (lengths 3, 5, 2), a low-dim and an image observation; mask/train = 0, 1, mask/valid = 2."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for n, length in enumerate((3, 5, 2)):
            demo = data.create_group(f"demo_{n}")
            demo.attrs["num_samples"] = length
            state = state_of(n, length + 1).astype(np.float64)
            images = grey_frames(total, length + 1)
            demo["obs/robot0_eef_pos"], demo["next_obs/robot0_eef_pos"] = state[:-1], state[1:]
            demo["obs/agentview_image"], demo["next_obs/agentview_image"] = images[:-1], images[1:]
            demo["actions"] = action_of(n, length).astype(np.float64)
            demo["rewards"] = (np.arange(length) == length - 1).astype(np.float64)
            demo["dones"] = (np.arange(length) == length - 1).astype(np.int64)
            demo["states"] = np.arange(length * 4, dtype=np.float64).reshape(length, 4) + n
            total += length
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
        )
        f["mask/train"] = np.array(["demo_0", "demo_1"], dtype="S")
        f["mask/valid"] = np.array(["demo_2"], dtype="S")
    return path


STORE_FEATURES = {
    "observation.state": Feature("state", "float32", (3,), names=("x", "y", "z")),
    # Calibrated, so every round trip checks that the calibration comes back.
    "observation.images.front": Feature(
        "rgb",
        "uint8",
        (48, 64, 3),
        camera=CameraCalibration((50, 50, 31.5, 23.5), (1, 0, 0.5), ((0, 0, -1), (1, 0, 0), (0, -1, 0))),
    ),
    "action": Feature("action", "float32", (2,)),
    "reward": Feature("reward", "float32"),
    "success": Feature("flag", "bool"),
}
STORE_LENGTHS = (6, 1, 9, 4)


def make_store(
    path: Path, features: dict[str, Feature] | None = None, lengths: tuple[int, ...] = STORE_LENGTHS
) -> TrajectoryStore:
    """Episodes of ``lengths``: varied flags, tasks and tags; final observations on episodes 0 and 2 only."""
    features = features or STORE_FEATURES
    store = TrajectoryStore.create(path, features, fps=FPS, meta={"robot": "panda", "env_id": "RobotPush-v0"})
    flags = [(True, False), (False, False), (True, False), (False, True)]
    for e, (length, (term, trunc)) in enumerate(zip(lengths, flags, strict=False)):
        steps = {
            "observation.state": state_of(e, length),
            "observation.images.front": render_frames(length, 48, 64, seed=e),
            "action": action_of(e, length),
            "reward": reward_of(e, length),
            "success": np.arange(length) == length - 1,
        }
        steps = {k: v for k, v in steps.items() if k in features}
        final = {
            "observation.state": state_of(e, length + 1)[-1] + 0.125,
            "observation.images.front": render_frames(1, 48, 64, seed=100 + e)[0],
        }
        final = {k: v for k, v in final.items() if k in features}
        store.add_episode(
            steps,
            task=f"task {e % 2}",
            success=term,
            terminated=term,
            truncated=trunc,
            final_obs=final if e in (0, 2) else None,
            tags=("train",) if e < 3 else ("val", "hard"),
            source="test",
            source_episode=e,
        )
    return store


def write_lerobot_recording(
    root: Path,
    episodes: list[dict[str, np.ndarray]],
    *,
    task: str,
    joint_names: list[str],
    fps: int = FPS,
    robot_type: str = "so100",
) -> Path:
    """A LeRobot v3 dataset as LeRobot's recorder writes a real arm's: named ``observation.state`` and
    ``action``, one video per camera (``observation.images.<name>`` keys of ``episodes``), one task, and no
    reward, done or success column. Every episode is in one data file and, per camera, one video file."""
    lengths = [len(ep["action"]) for ep in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
    cameras = [k for k in episodes[0] if k.startswith("observation.images.")]
    dim = len(joint_names)
    table = {
        "observation.state": pa.array(
            np.concatenate([ep["observation.state"] for ep in episodes]).tolist(), pa.list_(pa.float32(), dim)
        ),
        "action": pa.array(
            np.concatenate([ep["action"] for ep in episodes]).tolist(), pa.list_(pa.float32(), dim)
        ),
        "timestamp": pa.array([t / fps for n in lengths for t in range(n)], pa.float32()),
        "frame_index": pa.array([t for n in lengths for t in range(n)], pa.int64()),
        "episode_index": pa.array([e for e, n in enumerate(lengths) for _ in range(n)], pa.int64()),
        "index": pa.array(list(range(starts[-1])), pa.int64()),
        "task_index": pa.array([0] * starts[-1], pa.int64()),
    }
    pq.write_table(pa.table(table), _mk(root / "data/chunk-000/file-000.parquet"))
    for cam in cameras:
        frames = np.concatenate([ep[cam] for ep in episodes])
        write_mp4(root / f"videos/{cam}/chunk-000/file-000.mp4", frames, fps=fps)
    rows = []
    for e, length in enumerate(lengths):
        row = {
            "episode_index": e,
            "tasks": [task],
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
        }
        row.update({"dataset_from_index": starts[e], "dataset_to_index": starts[e] + length})
        for cam in cameras:
            row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0})
            row.update(
                {
                    f"videos/{cam}/from_timestamp": starts[e] / fps,
                    f"videos/{cam}/to_timestamp": starts[e + 1] / fps,
                }
            )
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), _mk(root / "meta/episodes/chunk-000/file-000.parquet"))
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    tasks = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": [task]})
    pq.write_table(
        tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta)}), root / "meta/tasks.parquet"
    )
    joints = {"dtype": "float32", "shape": [dim], "names": {"motors": list(joint_names)}}
    scalar = {"shape": [1], "names": None}
    features = {"observation.state": joints, "action": joints}
    for cam in cameras:
        shape = list(episodes[0][cam].shape[1:])
        features[cam] = {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"]}
    features["timestamp"] = {"dtype": "float32", **scalar}
    features.update(
        {k: {"dtype": "int64", **scalar} for k in ("frame_index", "episode_index", "index", "task_index")}
    )
    info = {
        "codebase_version": "v3.0",
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": starts[-1],
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return root
