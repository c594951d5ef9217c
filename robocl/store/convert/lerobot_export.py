"""The trajectory store -> a LeRobot v3.0 dataset that ``LeRobotDataset(repo_id, root=dest)`` opens.

The layout, column names, feature dictionaries and statistics follow LeRobot v0.4.4's recorder
(``LeRobotDatasetMetadata.create``/``save_episode`` and ``compute_stats.py``):

- ``info.json`` lists every feature with dtype/shape/names, then the five default features (``timestamp``
  float32, ``frame_index``/``episode_index``/``index``/``task_index`` int64, shape [1]); videos carry an
  ``info`` block (``video.height``, ``video.width``, ``video.codec``, ``video.pix_fmt``,
  ``video.is_depth_map``, ``video.fps``, ``video.channels``, ``has_audio``) read back from the first file;
- statistics (``stats.json`` and the ``stats/<key>/<stat>`` episode columns) have min, max, mean, std,
  count and q01/q10/q50/q90/q99; image statistics are per channel in [0, 1] with shape (3, 1, 1);
- data parquet rows of many episodes per file, one row group per episode; each camera's episodes are
  encoded back to back in one MP4 per file until it reaches ``video_files_size_in_mb``.

Everything the format cannot hold goes to ``meta/robocl.json`` (feature names, kinds, store metadata) and
the ``robocl/extras`` episode column (success, terminated, truncated, tags), which LeRobot ignores.
Final observations are not exported: LeRobot has no row for them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from robocl.store import Feature, TrajectoryStore
from robocl.store import stats as stats_lib
from robocl.store.convert.common import (
    ConversionError,
    dumps,
    episode_extras,
    export_order,
    prepare_dest,
    reading,
    schema_record,
)
from robocl.store.convert.lerobot import DEFAULT_KEYS, EXTRAS_COLUMN, RENAMES, SIDE_SCHEMA_PATH, TASK_FEATURE
from robocl.store.convert.video import DEFAULT_CRF, DEFAULT_GOP, VideoWriter, encode_png, pick_vcodec

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
EPISODE_ROWS_PER_WRITE = 100


class _Files:
    """Chunk/file numbering shared by data, videos and episode metadata (LeRobot's rollover rule)."""

    def __init__(self, chunks_size: int) -> None:
        self.chunks_size = chunks_size
        self.chunk, self.file = 0, 0

    def next(self) -> None:
        self.file += 1
        if self.file == self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


def _lerobot_keys(store: TrajectoryStore) -> dict[str, str]:
    """Store feature name -> LeRobot key, refusing what LeRobot cannot hold."""
    renames = {v: k for k, v in RENAMES.items()}
    out = {}
    for name, feat in store.features.items():
        key = "task_index" if feat.kind == "language" and name == TASK_FEATURE else renames.get(name, name)
        if "/" in key or (key in DEFAULT_KEYS and key != "task_index") or key in out.values():
            raise ConversionError(store.location, name, f"cannot be a LeRobot feature named {key!r}")
        if feat.kind == "depth":
            raise ConversionError(store.location, name, "LeRobot v3.0 datasets hold no depth features")
        if not feat.is_image and len(feat.shape) > 1:
            raise ConversionError(
                store.location, name, f"LeRobot export takes 0-d and 1-d features, got {feat.shape}"
            )
        out[name] = key
    return out


def _feature_spec(feat: Feature, use_videos: bool) -> dict[str, Any]:
    if feat.kind == "rgb":
        return {
            "dtype": "video" if use_videos else "image",
            "shape": list(feat.shape),
            "names": ["height", "width", "channels"],
        }
    if feat.kind == "language":
        return {"dtype": "string", "shape": [1], "names": None}
    return {
        "dtype": feat.dtype,
        "shape": list(feat.shape) or [1],
        "names": list(feat.names) if feat.names else None,
    }


def _arrow_type(spec: dict[str, Any]) -> Any:
    import pyarrow as pa

    if spec["dtype"] == "image":  # the Hugging Face datasets Image feature
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    scalar = pa.string() if spec["dtype"] == "string" else pa.from_numpy_dtype(np.dtype(spec["dtype"]))
    return scalar if spec["shape"] == [1] else pa.list_(scalar, spec["shape"][0])


def export_lerobot(
    store: TrajectoryStore | str | Path,
    dest: str | Path,
    *,
    episodes: Iterable[int] | None = None,
    use_videos: bool = True,
    vcodec: str = "libsvtav1",
    crf: int = DEFAULT_CRF,
    gop: int = DEFAULT_GOP,
    chunks_size: int = 1000,
    data_files_size_in_mb: int = 100,
    video_files_size_in_mb: int = 200,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the store's episodes (or the given committed indices) as a LeRobot v3.0 dataset at ``dest``.

    ``use_videos=False`` stores camera frames as lossless PNG ``image`` features in the parquet files.
    """
    from robocl.progress import progress_iter

    with reading(store) as store:
        vcodec = (
            pick_vcodec(vcodec)
            if use_videos and any(f.kind == "rgb" for f in store.features.values())
            else vcodec
        )
        writer = _DatasetWriter(
            store,
            Path(dest),
            use_videos=use_videos,
            video_options={"vcodec": vcodec, "crf": crf, "gop": gop},
            chunks_size=chunks_size,
            data_mb=data_files_size_in_mb,
            video_mb=video_files_size_in_mb,
        )
        prepare_dest(writer.dest, overwrite)  # after the checks above: a refused export deletes nothing
        for index in progress_iter(export_order(store, episodes), desc="export lerobot", enabled=progress):
            writer.add(int(index))
        writer.finish()
        return writer.dest


class _DatasetWriter:
    """Streams episodes into data parquet files, per-camera MP4s and the episode table, then the metadata."""

    def __init__(
        self,
        store: TrajectoryStore,
        dest: Path,
        *,
        use_videos: bool,
        video_options: dict[str, Any],
        chunks_size: int,
        data_mb: float,
        video_mb: float,
    ) -> None:
        import pyarrow as pa

        if store.fps != int(store.fps):
            raise ConversionError(
                store.location, "fps", f"LeRobot datasets need an integer fps, got {store.fps}"
            )
        self.store, self.dest, self.fps = store, dest, int(store.fps)
        self.keys = _lerobot_keys(store)
        self.video_names = [n for n, f in store.features.items() if f.kind == "rgb"] if use_videos else []
        self.specs = {
            self.keys[n]: _feature_spec(f, use_videos)
            for n, f in store.features.items()
            if self.keys[n] != "task_index"
        } | {k: dict(v) for k, v in DEFAULT_FEATURES.items()}
        # Statistics are computed per LeRobot key, on the store's values or on the default columns.
        self.stat_features = {self.keys[n]: f for n, f in store.features.items() if f.kind != "language"}
        self.stat_features |= {k: Feature("state", v["dtype"]) for k, v in DEFAULT_FEATURES.items()}
        self.schema = pa.schema([(k, _arrow_type(s)) for k, s in self.specs.items() if s["dtype"] != "video"])
        self.chunks_size, self.data_mb, self.video_mb = chunks_size, data_mb, video_mb
        self.video_options = video_options
        self.tasks: dict[str, int] = {}
        self.totals: dict[str, dict[str, np.ndarray]] = {}
        self.data_files = _Files(chunks_size)
        self.data_writer: Any = None
        self.data_bytes = 0
        self.videos: dict[str, tuple[_Files, VideoWriter | None]] = {
            n: (_Files(chunks_size), None) for n in self.video_names
        }
        self.ep_rows: list[dict[str, Any]] = []
        self.ep_writer: Any = None
        self.n_episodes = self.n_frames = 0

    def add(self, index: int) -> None:
        ep = self.store.episode(index)
        length = len(ep)
        task_feature = self.store.features.get(TASK_FEATURE)
        if task_feature is not None and task_feature.kind == "language":
            frame_tasks = [str(t) for t in ep.steps[TASK_FEATURE]]
        else:
            frame_tasks = [ep.task or ""] * length
        for task in frame_tasks:
            self.tasks.setdefault(task, len(self.tasks))
        columns: dict[str, Any] = {
            "timestamp": (np.arange(length) / self.fps).astype(np.float32),
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, self.n_episodes, dtype=np.int64),
            "index": np.arange(self.n_frames, self.n_frames + length, dtype=np.int64),
            "task_index": np.array([self.tasks[t] for t in frame_tasks], dtype=np.int64),
        }
        for name, feat in self.store.features.items():
            key = self.keys[name]
            if key == "task_index" or name in self.video_names:
                continue
            values = ep.steps[name]
            if feat.kind == "rgb":
                columns[key] = [{"bytes": encode_png(f), "path": None} for f in values]
            elif feat.kind == "language":
                columns[key] = [str(s) for s in values]
            else:
                columns[key] = values.reshape(length) if self.specs[key]["shape"] == [1] else values
        row: dict[str, Any] = {
            "episode_index": self.n_episodes,
            "tasks": list(dict.fromkeys(frame_tasks)),
            "length": length,
            **self._write_data(columns, length),
        }
        for name in self.video_names:
            row |= self._write_video(name, ep.steps[name])
        values = {self.keys[n]: ep.steps[n] for n in self.store.features} | {
            k: columns[k] for k in DEFAULT_KEYS
        }
        for key, feat in self.stat_features.items():
            acc = stats_lib.episode_stats(feat, values[key])
            self.totals[key] = stats_lib.merge(self.totals.get(key), acc)
            for stat, value in self._public(key, acc).items():
                row[f"stats/{key}/{stat}"] = value
        row |= {
            # One episode-metadata file, as LeRobot's v2.1 -> v3.0 converter writes (~1 KB per episode).
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            EXTRAS_COLUMN: dumps(episode_extras(self.store, index)),
        }
        self.ep_rows.append(row)
        self.n_episodes += 1
        self.n_frames += length
        if len(self.ep_rows) >= EPISODE_ROWS_PER_WRITE:
            self._flush_episode_rows()

    def _write_data(self, columns: dict[str, Any], length: int) -> dict[str, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {k: _to_arrow(v, self.schema.field(k).type) for k, v in columns.items()}, schema=self.schema
        )
        # Roll over on uncompressed bytes (as LeRobot's converter measures), so files stay under the limit.
        if self.data_writer is not None and self.data_bytes + table.nbytes > self.data_mb * 1e6:
            self.data_writer.close()
            self.data_writer, self.data_bytes = None, 0
            self.data_files.next()
        if self.data_writer is None:
            path = self.dest / DATA_PATH.format(
                chunk_index=self.data_files.chunk, file_index=self.data_files.file
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self.data_writer.write_table(table)  # one row group per episode: readers can stream by episode
        self.data_bytes += table.nbytes
        return {
            "data/chunk_index": self.data_files.chunk,
            "data/file_index": self.data_files.file,
            "dataset_from_index": self.n_frames,
            "dataset_to_index": self.n_frames + length,
        }

    def _write_video(self, name: str, frames: np.ndarray) -> dict[str, Any]:
        files, writer = self.videos[name]
        key, opts = self.keys[name], self.video_options
        if writer is None:
            h, w, _ = self.store.features[name].shape
            path = self.dest / VIDEO_PATH.format(
                video_key=key, chunk_index=files.chunk, file_index=files.file
            )
            writer = VideoWriter(
                path, fps=self.fps, height=h, width=w, vcodec=opts["vcodec"], crf=opts["crf"], gop=opts["gop"]
            )
        start = writer.n_frames / self.fps
        writer.add(frames)
        row = {
            f"videos/{key}/chunk_index": files.chunk,
            f"videos/{key}/file_index": files.file,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": start + len(frames) / self.fps,
        }
        # The encoder holds a few frames back, so this lags by those frames' bytes: fine at LeRobot's 200 MB.
        if writer.nbytes >= self.video_mb * 1e6:
            writer.close()
            files.next()
            writer = None
        self.videos[name] = (files, writer)
        return row

    def _public(self, key: str, acc: dict[str, np.ndarray]) -> dict[str, Any]:
        """LeRobot's layout: per-channel (3, 1, 1) for cameras, the feature's info.json shape otherwise."""
        feat = self.stat_features[key]
        view = stats_lib.public_view(feat, acc)
        shape = None if feat.is_image else self.specs[key]["shape"]
        out: dict[str, Any] = {"count": [int(view["count"])]}
        for stat in ("min", "max", "mean", "std", *stats_lib.QUANTILE_KEYS):
            value = np.asarray(view[stat], dtype=np.float64)
            out[stat] = (value if shape is None else value.reshape(shape)).tolist()
        return out

    def _flush_episode_rows(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.ep_rows:
            return
        schema = self.ep_writer.schema if self.ep_writer is not None else None
        table = pa.Table.from_pylist(self.ep_rows, schema=schema)
        if self.ep_writer is None:
            path = self.dest / EPISODES_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.ep_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        self.ep_writer.write_table(table)
        self.ep_rows.clear()

    def finish(self) -> None:
        self._flush_episode_rows()
        for writer in (self.ep_writer, self.data_writer, *(w for _, w in self.videos.values())):
            if writer is not None:
                writer.close()
        for name in self.video_names:
            first = self.dest / VIDEO_PATH.format(video_key=self.keys[name], chunk_index=0, file_index=0)
            self.specs[self.keys[name]]["info"] = _video_info(first)
        _write_tasks(self.dest / "meta/tasks.parquet", self.tasks)
        _write_json(
            self.dest / "meta/stats.json", {k: self._public(k, acc) for k, acc in self.totals.items()}
        )
        _write_json(self.dest / SIDE_SCHEMA_PATH, schema_record(self.store, self.keys))
        meta = self.store.meta
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": meta.get("robot") or meta.get("lerobot", {}).get("robot_type"),
            "total_episodes": self.n_episodes,
            "total_frames": self.n_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{self.n_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_names else None,
            "features": self.specs,
        }
        # info.json last: a dataset without it is visibly incomplete.
        _write_json(self.dest / "meta/info.json", info)


def _to_arrow(values: Any, typ: Any) -> Any:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(
        typ
    ):  # (T, D) numpy -> fixed_size_list<D>, as datasets' Sequence(length=D)
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=typ.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, typ.list_size)
    return pa.array(values, type=typ)


def _video_info(path: Path) -> dict[str, Any]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": False,
        }


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet as pandas writes a frame indexed by task string (LeRobot reads it with pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(tasks, key=tasks.__getitem__)
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            },
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    table = pa.table(
        {
            "task_index": pa.array(range(len(ordered)), pa.int64()),
            "__index_level_0__": pa.array(ordered, pa.string()),
        }
    ).replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))
