"""LeRobot datasets -> the trajectory store (codebase v3.0, v2.1 and v2.0), read with pyarrow and PyAV.

Facts taken from LeRobot's source (``src/lerobot/datasets/utils.py``, ``lerobot_dataset.py``,
``video_utils.py`` and ``v30/convert_dataset_v21_to_v30.py`` at v0.4.4):

- v3.0: ``data/chunk-XXX/file-XXX.parquet`` hold many episodes; ``meta/episodes/chunk-XXX/file-XXX.parquet``
  has one row per episode (``episode_index``, ``tasks``, ``length``, ``data/chunk_index``,
  ``data/file_index``, ``dataset_from_index``, ``dataset_to_index``, ``videos/<key>/chunk_index``,
  ``.../file_index``, ``.../from_timestamp``, ``.../to_timestamp``, ``stats/<key>/<stat>``,
  ``meta/episodes/chunk_index|file_index``); ``meta/tasks.parquet`` is a pandas frame indexed by the task
  string with a ``task_index`` column. A camera frame of an episode is in the video file at
  ``from_timestamp + timestamp``.
- v2.x: one parquet and one mp4 per episode at ``data_path``/``video_path`` (formatted with
  ``episode_chunk``, ``episode_index``, ``video_key``); ``meta/episodes.jsonl`` and ``meta/tasks.jsonl``.

Mapping: ``next.reward``/``next.done``/``next.success`` become the store's ``reward``/``done``/``success``;
other features keep their names; videos and images become ``rgb`` features, string features ``language``.
Scalars (LeRobot shape [1]) become shape () unless they carry a name. The per-frame task becomes the
episode's task; where an episode has several tasks, a per-step ``language`` feature ``task`` keeps them.
Episodes have no success flag in LeRobot: it is read from the last ``next.success`` (unknown in datasets
without that column, as LeRobot's recorder writes them; ``ingest(..., success=...)`` chooses otherwise),
``terminated`` from the last ``next.done``. Datasets written by :mod:`robocl.store.convert.lerobot_export`
carry ``meta/robocl.json`` and a ``robocl/extras`` episode column, which restore everything exactly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robocl.store import Feature, TrajectoryStore
from robocl.store.convert.common import (
    ConversionError,
    FeatureMap,
    SourceEpisode,
    apply_schema,
    fill_template,
    ingest_episodes,
    inside,
    loads,
    reshape_steps,
)
from robocl.store.convert.video import VideoReader, decode_image
from robocl.store.schema import ALLOWED_DTYPES

CODEBASE_VERSIONS = ("v2.0", "v2.1", "v3.0")
INFO_PATH = "meta/info.json"
SIDE_SCHEMA_PATH = "meta/robocl.json"
EXTRAS_COLUMN = "robocl/extras"
DEFAULT_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
#: LeRobot's conventional per-step reward and flags -> the store's names (and back, on export).
RENAMES = {"next.reward": "reward", "next.done": "done", "next.success": "success"}
TASK_FEATURE = "task"  # the per-step language feature that holds an episode's several tasks
BATCH_ROWS = 4096


@dataclass
class _EpisodeRef:
    index: int
    length: int
    tasks: list[str]
    data_path: Path
    videos: dict[str, tuple[Path, float]]  # video key -> (file, from_timestamp)
    extras: dict[str, Any] | None


class LeRobotSource:
    """A LeRobot dataset on disk: its metadata, and its episodes decoded one at a time."""

    def __init__(self, root: str | Path, *, repo_id: str | None = None, tolerance_s: float = 1e-4) -> None:
        self.root = Path(root)
        self.tolerance_s = tolerance_s
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise ConversionError(info_path, "meta/info.json", "missing: not the root of a LeRobot dataset")
        self.info = loads(info_path.read_text(), info_path, "meta/info.json")
        self.version = self.info.get("codebase_version")
        if self.version not in CODEBASE_VERSIONS:
            raise ConversionError(
                info_path,
                "codebase_version",
                f"unknown version {self.version!r}; robocl reads {CODEBASE_VERSIONS}",
            )
        for key, kind in [("fps", (int, float)), ("features", dict), ("data_path", str)]:
            if not isinstance(self.info.get(key), kind):
                raise ConversionError(
                    info_path, key, f"missing or of the wrong type ({self.info.get(key)!r})"
                )
        self.fps = float(self.info["fps"])
        self.repo_id = repo_id or self.root.name
        self.source = f"lerobot:{self.repo_id}"
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        # Declared totals must agree with what the files list: a mismatch means a partial or edited copy.
        for key, actual in [
            ("total_episodes", len(self.episodes)),
            ("total_frames", sum(ref.length for ref in self.episodes)),
            ("total_tasks", len(self.tasks)),
        ]:
            if key in self.info and self.info[key] != actual:
                raise ConversionError(
                    info_path, key, f"says {self.info[key]!r}, but the dataset's metadata lists {actual}"
                )
        side = self.root / SIDE_SCHEMA_PATH
        record = loads(side.read_text(), side, "robocl schema") if side.is_file() else None
        per_step_tasks = "task_index" in (record or {}).get("features", {})
        self.features, meta = apply_schema(self._native_features(info_path, per_step_tasks), record)
        robot = self.info.get("robot_type")
        self.meta = meta or {
            **({"robot": robot} if robot else {}),
            "lerobot": {"repo_id": self.repo_id, "codebase_version": self.version, "robot_type": robot},
        }

    # ------------------------------------------------------------------ metadata
    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.info["features"].items() if ft.get("dtype") == "video"]

    def _native_features(self, info_path: Path, per_step_tasks: bool) -> FeatureMap:
        out: FeatureMap = {}
        for key, ft in self.info["features"].items():
            if key in DEFAULT_KEYS:
                continue
            where = f"features.{key}"
            dtype, shape = ft.get("dtype"), tuple(ft.get("shape") or ())
            if dtype in ("video", "image"):
                names = list(ft.get("names") or [])
                if len(shape) == 3 and (names[:1] == ["channels"] or (shape[0] == 3 and shape[2] != 3)):
                    shape = (shape[1], shape[2], shape[0])  # some datasets list shapes channel-first
                if len(shape) != 3 or shape[2] != 3:
                    raise ConversionError(
                        info_path, f"{where}.shape", f"{shape} is not an RGB frame (H, W, 3)"
                    )
                out[key] = (key, Feature("rgb", "uint8", shape))
            elif dtype == "string":
                out[key] = (key, Feature("language"))
            elif dtype in ALLOWED_DTYPES:
                out[key] = _numeric_feature(key, dtype, shape, ft.get("names"))
            else:
                raise ConversionError(info_path, f"{where}.dtype", f"unsupported dtype {dtype!r}")
        if per_step_tasks or any(len(set(ep.tasks)) > 1 for ep in self.episodes):
            out["task_index"] = (TASK_FEATURE, Feature("language"))
        return out

    def _load_tasks(self) -> list[str]:
        if self.version == "v3.0":
            path = self.root / "meta/tasks.parquet"
            table = _read_table(path)
            text_col = _task_text_column(table, path)
            index = table.column("task_index").to_pylist() if "task_index" in table.column_names else None
            if index is None:
                raise ConversionError(path, "task_index", "missing column")
            by_index = dict(zip(index, table.column(text_col).to_pylist(), strict=True))
        else:
            path = self.root / "meta/tasks.jsonl"
            by_index = {row["task_index"]: row["task"] for row in _read_jsonl(path, ("task_index", "task"))}
        if sorted(by_index) != list(range(len(by_index))):
            raise ConversionError(path, "task_index", f"task indices are not 0..{len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]

    def _load_episodes(self) -> list[_EpisodeRef]:
        refs = self._episodes_v3() if self.version == "v3.0" else self._episodes_v2()
        refs.sort(key=lambda r: r.index)
        if [r.index for r in refs] != list(range(len(refs))):
            raise ConversionError(self.root / "meta", "episode_index", "episode indices are not 0..E-1")
        return refs

    def _episodes_v3(self) -> list[_EpisodeRef]:
        import pyarrow.parquet as pq

        paths = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
        if not paths:
            raise ConversionError(self.root / "meta/episodes", "meta/episodes", "no episode parquet files")
        required = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
        for key in self.video_keys:
            required += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        refs = []
        for path in paths:
            try:
                names = pq.read_schema(path).names
            except Exception as exc:
                raise ConversionError(path, "parquet", f"cannot read ({exc})") from exc
            missing = [c for c in required if c not in names]
            if missing:
                raise ConversionError(path, missing[0], "missing column")
            # Episode statistics can be most of these files and are not needed to read the data.
            table = _read_table(path, [c for c in names if not c.startswith("stats/")])
            for row in table.to_pylist():
                videos = {}
                for key in self.video_keys:
                    file = self._path(
                        "video_path",
                        video_key=key,
                        chunk_index=row[f"videos/{key}/chunk_index"],
                        file_index=row[f"videos/{key}/file_index"],
                    )
                    videos[key] = (file, float(row[f"videos/{key}/from_timestamp"]))
                data = self._path(
                    "data_path", chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
                )
                extras = row.get(EXTRAS_COLUMN)
                refs.append(
                    _EpisodeRef(
                        index=int(row["episode_index"]),
                        length=int(row["length"]),
                        tasks=list(row["tasks"] or []),
                        data_path=data,
                        videos=videos,
                        extras=loads(extras, path, EXTRAS_COLUMN) if extras else None,
                    )
                )
        return refs

    def _episodes_v2(self) -> list[_EpisodeRef]:
        chunks_size = int(self.info.get("chunks_size", 1000))
        refs = []
        rows = _read_jsonl(self.root / "meta/episodes.jsonl", ("episode_index", "tasks", "length"))
        for row in rows:
            ep = int(row["episode_index"])
            fmt = {"episode_chunk": ep // chunks_size, "episode_index": ep}
            videos = {key: (self._path("video_path", video_key=key, **fmt), 0.0) for key in self.video_keys}
            data = self._path("data_path", **fmt)
            refs.append(_EpisodeRef(ep, int(row["length"]), list(row["tasks"]), data, videos, None))
        return refs

    def _path(self, template: str, **fields: int | str) -> Path:
        """A file named by one of info.json's path templates; it must lie inside the dataset folder."""
        where = self.root / INFO_PATH
        if not isinstance(self.info.get(template), str):
            raise ConversionError(where, template, f"missing or not a string ({self.info.get(template)!r})")
        relative = fill_template(self.info[template], fields, where, template)
        return inside(self.root, relative, where, template)

    # ------------------------------------------------------------------ episodes
    def __len__(self) -> int:
        return len(self.episodes)

    def close(self) -> None:
        """Nothing stays open: every parquet file and video is opened and closed within ``read``."""

    def read(self, skip: set[int]) -> Iterator[SourceEpisode]:
        """Decode every episode not in ``skip``, in episode order, one at a time."""
        by_file: dict[Path, list[_EpisodeRef]] = {}
        for ref in self.episodes:
            by_file.setdefault(ref.data_path, []).append(ref)
        readers = {key: VideoReader(self.tolerance_s) for key in self.video_keys}
        columns = [
            *DEFAULT_KEYS,
            *(k for k in self.features if k not in self.video_keys and k not in DEFAULT_KEYS),
        ]
        try:
            for path, refs in by_file.items():
                wanted = {r.index: r for r in refs if r.index not in skip}
                if not wanted:
                    continue
                for index, table in _episode_tables(path, columns):
                    ref = wanted.pop(index, None)
                    if ref is not None:
                        yield self._episode(ref, table, path, readers)
                if wanted:
                    first = min(wanted)
                    raise ConversionError(
                        path, "episode_index", f"no rows for episode {first}, which meta lists here"
                    )
        finally:
            for reader in readers.values():
                reader.close()

    def _episode(
        self, ref: _EpisodeRef, table: Any, path: Path, readers: dict[str, VideoReader]
    ) -> SourceEpisode:
        n = table.num_rows
        if n != ref.length:
            raise ConversionError(
                path,
                "episode_index",
                f"episode {ref.index} has {n} rows but its metadata says length {ref.length}",
            )
        frame_index = _numeric(table, "frame_index", path)
        if not np.array_equal(frame_index, np.arange(n)):
            raise ConversionError(path, "frame_index", f"episode {ref.index}: frame_index is not 0..{n - 1}")
        timestamp = _numeric(table, "timestamp", path).astype(np.float64)
        task_index = _numeric(table, "task_index", path)
        if n and (task_index.min() < 0 or task_index.max() >= len(self.tasks)):
            raise ConversionError(path, "task_index", f"episode {ref.index}: index outside the task table")
        tasks = [self.tasks[i] for i in task_index]
        steps: dict[str, Any] = {}
        for key, (name, feat) in self.features.items():
            if key == "task_index":
                steps[name] = tasks
            elif key in readers:
                file, start = ref.videos[key]
                frames = readers[key].frames(file, start + timestamp, f"{key} (episode {ref.index})")
                if frames.shape[1:] != feat.shape:
                    raise ConversionError(
                        file, key, f"frames are {frames.shape[1:]}, info.json says {feat.shape}"
                    )
                steps[name] = frames
            elif self.info["features"][key]["dtype"] == "image":
                images = table.column(key).combine_chunks().field("bytes").to_pylist()
                steps[name] = np.stack([decode_image(b, path, key) for b in images])
                if steps[name].shape[1:] != feat.shape:
                    raise ConversionError(
                        path, key, f"images are {steps[name].shape[1:]}, info.json says {feat.shape}"
                    )
            elif feat.kind == "language":
                steps[name] = [str(s) for s in table.column(key).to_pylist()]
            else:
                values = _numeric(table, key, path)
                if not np.can_cast(values.dtype, feat.dtype, "same_kind"):
                    raise ConversionError(
                        path, key, f"dtype {values.dtype} where the feature is {feat.dtype}"
                    )
                steps[name] = reshape_steps(values, feat, n, path, key)
        ep = SourceEpisode(index=ref.index, steps=steps, task=tasks[0] if tasks and tasks[0] else None)
        # LeRobot's recorder writes no success column: its episodes' success is unknown, not False.
        if "next.success" in table.column_names and n:
            ep.success = bool(_numeric(table, "next.success", path)[-1])
        else:
            ep.success = None
        if "next.done" in table.column_names and n:
            ep.terminated = bool(_numeric(table, "next.done", path)[-1])
        ep.apply_extras(ref.extras)
        return ep


def ingest_lerobot(
    src: str | Path,
    store_path: str | Path,
    *,
    repo_id: str | None = None,
    tolerance_s: float = 1e-4,
    cast: Mapping[str, str] | None = None,
    success: str = "last",
    progress: bool = True,
) -> TrajectoryStore:
    """Ingest (or resume ingesting) a local LeRobot dataset into a store; returns the open store.

    ``success``: how episodes get their success (:func:`~robocl.store.convert.common.success_rule`); by
    default the last ``next.success`` value, and unknown in recordings without that column."""
    source = LeRobotSource(src, repo_id=repo_id, tolerance_s=tolerance_s)
    return ingest_episodes(store_path, source, cast=cast, success=success, progress=progress)


# ---------------------------------------------------------------------------------------------- helpers
def _numeric_feature(key: str, dtype: str, shape: tuple[int, ...], names: Any) -> tuple[str, Feature]:
    name = RENAMES.get(key, key)
    if isinstance(names, dict) and len(names) == 1:  # some datasets nest names as {"motors": [...]}
        names = next(iter(names.values()))
    names = list(names) if isinstance(names, list) and shape and len(names) == shape[-1] else None
    if shape == (1,) and names is None:
        shape = ()  # LeRobot stores scalars as shape [1]
    if name == "action" or key.startswith("action"):
        kind = "action"
    elif name == "reward" or "reward" in key:
        kind = "reward"
    elif dtype == "bool":
        kind = "flag"
    else:
        kind = "state"
    return name, Feature(kind, dtype, shape, names=tuple(names) if names else None)  # type: ignore[arg-type]


def _read_table(path: Path, columns: list[str] | None = None) -> Any:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConversionError(path, path.name, "missing file")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or ArrowException on corrupt files
        raise ConversionError(path, "parquet", f"cannot read ({exc})") from exc


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConversionError(path, path.name, "missing file")
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            row = loads(line, path, f"line {n + 1}")
            missing = [k for k in required if k not in row]
            if missing:
                raise ConversionError(path, missing[0], f"missing on line {n + 1}")
            rows.append(row)
    return rows


def _task_text_column(table: Any, path: Path) -> str:
    """LeRobot writes tasks with pandas: the text is the frame's index, stored as a column."""
    if "task" in table.column_names:
        return "task"
    pandas_meta = (table.schema.metadata or {}).get(b"pandas")
    if pandas_meta:
        index_cols = [c for c in json.loads(pandas_meta).get("index_columns", []) if isinstance(c, str)]
        if index_cols and index_cols[0] in table.column_names:
            return index_cols[0]
    raise ConversionError(path, "task", "no column holds the task strings")


def _episode_tables(path: Path, columns: list[str]) -> Iterator[tuple[int, Any]]:
    """(episode index, its rows) for each episode of a data file, reading row groups incrementally."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConversionError(path, path.name, "missing data file")
    try:
        file = pq.ParquetFile(path)
        missing = [c for c in columns if c not in file.schema_arrow.names]
        if missing:
            raise ConversionError(path, missing[0], "missing column")
        batches = file.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        pending: list[Any] = []
        current: int | None = None
        seen: set[int] = set()
        for batch in batches:
            ep = batch.column("episode_index").to_numpy(zero_copy_only=False)
            cuts = [0, *(np.flatnonzero(np.diff(ep)) + 1).tolist(), len(ep)]
            for lo, hi in itertools.pairwise(cuts):
                index = int(ep[lo])
                if index != current:
                    if current is not None:
                        yield current, pa.Table.from_batches(pending)
                    if index in seen:
                        raise ConversionError(
                            path, "episode_index", f"rows of episode {index} are not contiguous"
                        )
                    seen.add(index)
                    current, pending = index, []
                pending.append(batch.slice(lo, hi - lo))
        if current is not None:
            yield current, pa.Table.from_batches(pending)
    except ConversionError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise ConversionError(path, "parquet", f"cannot read ({exc})") from exc


def _numeric(table: Any, key: str, path: Path) -> np.ndarray:
    """A numeric column as (rows, *dims), from scalar, list or fixed-size-list columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = table.column(key).combine_chunks()
    if arr.null_count:
        raise ConversionError(path, key, "has null values")
    n, dims = len(arr), []
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        if pa.types.is_fixed_size_list(arr.type):
            dims.append(arr.type.list_size)
        else:
            lengths = np.unique(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise ConversionError(path, key, f"rows have different lengths {lengths.tolist()}")
            dims.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(n, *dims)
