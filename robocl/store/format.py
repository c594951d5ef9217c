"""The trajectory store: one zarr v3 group for simulated rollouts and real-robot demonstrations.

Layout (drawn as zarr keys)::

    <root>/zarr.json              attrs: "robocl" (format version, features, fps, meta) and "commit"
    <root>/data/<feature>          (N, *shape)  every step of every episode, time-major, episodes concatenated
    <root>/episodes/<column>       (E,)         the episode table: start, length, task_index, success, ...
    <root>/episodes/final/<obs>    (E, *shape)  the observation after each episode's last action

The ``commit`` attribute (episode and step counts, the task/source/tag vocabularies and the statistics) is
the only truth about what exists. An append writes step data first, then the episode rows, and the commit
record last, in one atomic write of the group's metadata; readers clip every array to the committed
counts, and opening for writing cuts the arrays back to them. A writer killed at any moment therefore loses
at most the episodes it had not committed. This is diffusion_policy's ``episode_ends`` idea with the commit
moved to the end, where a crash cannot leave arrays that disagree with it.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from robocl.store import stats as stats_lib
from robocl.store.locks import LocalLock, MemoryLock, ObjectStoreLock, WriterLock
from robocl.store.schema import EpisodeMeta, Feature, coerce_steps
from robocl.store.view import StoreView
from robocl.store.writer import EpisodeWriter

FORMAT_VERSION = 1
#: Low-dimensional arrays are chunked along time only, about this many bytes per chunk (see README's
#: store benchmark: ~1 MB chunks keep the file count small and a full read at disk speed).
LOWDIM_CHUNK_BYTES = 1 << 20
#: Images: one frame per chunk (random access decodes one frame), grouped in shards of this many frames
#: so a store of 40k frames is ~600 files rather than 40k.
FRAMES_PER_SHARD = 64
EPISODE_ROWS_PER_CHUNK = 4096
MAX_TAGS = 64  # tags are a uint64 bitmask per episode

EPISODE_COLUMNS: dict[str, str] = {
    "start": "int64",
    "length": "int64",
    "task_index": "int32",  # -1: no task
    "success": "bool",
    "return": "float64",
    "terminated": "bool",
    "truncated": "bool",
    "has_final_obs": "bool",  # False: the final observation repeats the last step's
    "source_index": "int32",
    "source_episode": "int64",
    "tags": "uint64",
}

Location = str | Path | zarr.abc.store.Store


def _compressor(image: bool = False) -> BloscCodec:
    # Measured by benchmarks/store_sampling.py (README, "Store"): on rendered 96x96 frames lz4 + bit shuffle
    # wrote ~1.5x and decoded ~1.2x faster than zstd-3 + bit shuffle for 15% more bytes, and sampling speed
    # matters more than disk; low-dimensional arrays are small, so they take zstd's better ratio.
    return BloscCodec(cname="lz4" if image else "zstd", clevel=5 if image else 3, shuffle="bitshuffle")


@dataclass
class Episode:
    """One committed episode: its steps, final observation and table row."""

    index: int
    steps: dict[str, np.ndarray]
    final_obs: dict[str, np.ndarray]
    task: str | None
    success: bool
    terminated: bool
    truncated: bool
    episode_return: float
    source: str
    source_episode: int
    tags: tuple[str, ...]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.steps[key]

    def __len__(self) -> int:
        return len(next(iter(self.steps.values())))


def _open_location(location: Location, storage_options: Mapping[str, Any] | None) -> tuple[Any, str, Any]:
    """Return (zarr store, kind, (sync filesystem, path) or None); kind is local | memory | remote."""
    if isinstance(location, zarr.storage.MemoryStore):
        return location, "memory", None
    if isinstance(location, zarr.storage.LocalStore):
        return location, "local", None
    if isinstance(location, zarr.abc.store.Store):
        return location, "remote", None
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        import fsspec

        options = dict(storage_options or {})
        store = zarr.storage.FsspecStore.from_url(text, storage_options=options)
        # zarr's filesystem is asynchronous and bound to zarr's event loop; locks and sizes use a sync twin.
        return store, "remote", fsspec.core.url_to_fs(text, **options)
    return zarr.storage.LocalStore(text.removeprefix("file://")), "local", None


class TrajectoryStore:
    """A zarr-backed store of episodes. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(
        self, store: Any, kind: str, mode: Literal["r", "a"], *, remote: Any = None, break_lock: bool = False
    ) -> None:
        self._zstore = store
        self._kind = kind
        self._remote = remote  # (sync fsspec filesystem, path) for URLs
        self.mode = mode
        self._lock: WriterLock | None = None
        if mode == "a":
            self._lock = self._take_lock(break_lock)
        try:
            self._root = zarr.open_group(store, mode="r" if mode == "r" else "r+", zarr_format=3)
            self._load_header()
            if mode == "a":
                self._truncate_uncommitted()
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        location: Location,
        features: Mapping[str, Feature | Mapping[str, Any]],
        *,
        fps: float,
        meta: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> TrajectoryStore:
        """Create an empty store and return it open for appending.

        features: name -> :class:`Feature` (or its dict form); fps: control rate of the recorded steps;
        meta: free-form robot/env metadata (JSON-serialisable), e.g. ``{"robot": "panda", "env_id": ...}``.
        """
        feats = {k: v if isinstance(v, Feature) else Feature.from_dict(v) for k, v in features.items()}
        if not feats:
            raise ValueError("a store needs at least one feature")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        header = {
            "format_version": FORMAT_VERSION,
            "features": {k: f.to_dict() for k, f in feats.items()},
            "fps": float(fps),
            "meta": dict(meta or {}),
        }
        store, kind, remote = _open_location(location, storage_options)
        if kind != "local":
            _write_empty_store(zarr.open_group(store, mode="w", zarr_format=3), feats, header)
            return cls(store, kind, "a", remote=remote)
        path = Path(str(store.root))
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            shutil.rmtree(path)
        # Built beside its final place and renamed in: a kill during creation leaves no half-made store.
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _write_empty_store(
            zarr.open_group(zarr.storage.LocalStore(tmp), mode="w-", zarr_format=3), feats, header
        )
        if path.exists():
            path.rmdir()
        tmp.rename(path)
        return cls(zarr.storage.LocalStore(path), kind, "a", remote=remote)

    @classmethod
    def open(
        cls,
        location: Location,
        mode: Literal["r", "a"] = "r",
        *,
        storage_options: Mapping[str, Any] | None = None,
        break_lock: bool = False,
    ) -> TrajectoryStore:
        """Open a store; ``mode="a"`` takes the writer lock and drops rows written after the last commit."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        store, kind, remote = _open_location(location, storage_options)
        if kind == "local" and not (Path(str(store.root)) / "zarr.json").exists():
            raise FileNotFoundError(f"no robocl store at {store.root} (zarr.json missing)")
        return cls(store, kind, mode, remote=remote, break_lock=break_lock)

    def _take_lock(self, break_lock: bool) -> WriterLock:
        if self._kind == "local":
            return LocalLock(Path(str(self._zstore.root)))
        if self._kind == "memory":
            return MemoryLock(self._zstore)
        if self._remote is None:
            raise ValueError(f"cannot lock a {type(self._zstore).__name__} for writing; pass a path or URL")
        return ObjectStoreLock(*self._remote, break_lock)

    def _load_header(self) -> None:
        attrs = self._root.attrs.asdict()
        header = attrs.get("robocl")
        if not isinstance(header, dict) or "commit" not in attrs:
            raise ValueError(
                f"{self.location} is a zarr group but not a robocl store (no 'robocl' attributes)"
            )
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.location} has robocl store format {header.get('format_version')}; "
                f"this robocl reads format {FORMAT_VERSION}"
            )
        self.features: dict[str, Feature] = {k: Feature.from_dict(v) for k, v in header["features"].items()}
        self.fps: float = header["fps"]
        self.meta: dict[str, Any] = header["meta"]
        self._commit = attrs["commit"]
        self._stats_acc = {k: stats_lib.from_json(v) for k, v in self._commit["stats"].items()}
        self._cache: dict[str, np.ndarray] = {}
        self._table: dict[str, np.ndarray] | None = None
        self._handles: dict[str, zarr.Array] = {}

    def _truncate_uncommitted(self) -> None:
        """Cut every array back to the commit record (a crashed writer may have grown them)."""
        for group, n in self._array_groups():
            for _, arr in group.arrays():
                if arr.shape[0] != n:
                    arr.resize((n, *arr.shape[1:]))
        if self._kind == "local":
            # zarr writes each chunk to '<key>.<uuid>.partial' and renames it; a kill between leaves these.
            for leftover in Path(str(self._zstore.root)).rglob("*.partial"):
                leftover.unlink(missing_ok=True)

    def _array(self, path: str) -> zarr.Array:
        """Open arrays once: each ``group[key]`` lookup re-reads metadata from the backend."""
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = self._root[path]
        return handle

    def _array_groups(self) -> list[tuple[Any, int]]:
        episodes = self._root["episodes"]
        return [
            (self._root["data"], self.n_steps),
            (episodes, self.n_episodes),
            (episodes["final"], self.n_episodes),
        ]

    def refresh(self) -> None:
        """Re-read the commit record so a reader sees episodes committed since it opened."""
        self._root = zarr.open_group(self._zstore, mode="r" if self.mode == "r" else "r+", zarr_format=3)
        old_steps = self.n_steps
        self._commit = self._root.attrs["commit"]
        self._stats_acc = {k: stats_lib.from_json(v) for k, v in self._commit["stats"].items()}
        self._table = None
        self._handles = {}  # their cached shapes predate the writer's growth
        if self.n_steps < old_steps:  # another writer truncated or rewrote: drop the RAM copies
            self._cache.clear()

    def close(self) -> None:
        """Trim spare capacity (writers) and release the writer lock."""
        if self._lock is not None:
            self._truncate_uncommitted()
            self._lock.release()
            self._lock = None

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        if self._kind == "local":
            return str(self._zstore.root)
        return str(getattr(self._zstore, "path", "<in-memory store>"))

    # ------------------------------------------------------------------ sizes and schema
    @property
    def n_episodes(self) -> int:
        return int(self._commit["n_episodes"])

    @property
    def n_steps(self) -> int:
        return int(self._commit["n_steps"])

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def tasks(self) -> list[str]:
        """The task table: language instructions, indexed by the episodes' ``task_index``."""
        return list(self._commit["tasks"])

    @property
    def sources(self) -> list[str]:
        """The source table, indexed by the episodes' ``source_index`` (e.g. "lerobot:user/dataset")."""
        return list(self._commit["sources"])

    @property
    def tag_names(self) -> list[str]:
        return list(self._commit["tags"])

    @property
    def observation_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_observation]

    def schema(self) -> dict[str, Any]:
        """Features, fps and metadata as plain dicts (what :meth:`create` took)."""
        return {
            "features": {k: f.to_dict() for k, f in self.features.items()},
            "fps": self.fps,
            "meta": dict(self.meta),
        }

    # ------------------------------------------------------------------ reading
    @property
    def episodes(self) -> dict[str, np.ndarray]:
        """The committed episode table as numpy columns (start, length, task_index, success, ...)."""
        if self._table is None:
            n = self.n_episodes
            self._table = {col: self._array(f"episodes/{col}")[:n] for col in EPISODE_COLUMNS}
        return self._table

    def steps(self, key: str) -> np.ndarray:
        """All committed steps of a feature, read once and kept in RAM (meant for low-dimensional data)."""
        self._check_key(key)
        n = self.n_steps
        cached = self._cache.get(key)
        if cached is None or len(cached) < n:
            start = 0 if cached is None else len(cached)
            fresh = self._array(f"data/{key}")[start:n]
            cached = fresh if cached is None else np.concatenate([cached, fresh])
            self._cache[key] = cached
        return cached[:n]

    def final_obs(self, key: str) -> np.ndarray:
        """Final observation of every committed episode, (E, *shape)."""
        self._check_key(key)
        if not self.features[key].is_observation:
            raise KeyError(f"{key!r} is not an observation feature, so it has no final observation")
        return self._array(f"episodes/final/{key}")[: self.n_episodes]

    def zarr_array(self, key: str, *, final: bool = False) -> zarr.Array:
        """The underlying zarr array of a feature (committed rows are the first n_steps/n_episodes)."""
        self._check_key(key)
        return self._array(f"episodes/final/{key}" if final else f"data/{key}")

    def episode(self, index: int) -> Episode:
        """Read one committed episode (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range: the store has {n} committed episodes")
        index %= n
        row = {col: v[index] for col, v in self.episodes.items()}
        lo, hi = int(row["start"]), int(row["start"] + row["length"])
        steps = {}
        for key, feat in self.features.items():
            values = (
                self._cache[key][lo:hi]
                if key in self._cache and len(self._cache[key]) >= hi
                else (self._array(f"data/{key}")[lo:hi])
            )
            steps[key] = self._decode_language(values) if feat.kind == "language" else values
        final = {}
        for key in self.observation_keys:
            value = self._array(f"episodes/final/{key}")[index]
            final[key] = self._decode_language(value) if self.features[key].kind == "language" else value
        return Episode(
            index=index,
            steps=steps,
            final_obs=final,
            task=self.tasks[row["task_index"]] if row["task_index"] >= 0 else None,
            success=bool(row["success"]),
            terminated=bool(row["terminated"]),
            truncated=bool(row["truncated"]),
            episode_return=float(row["return"]),
            source=self.sources[row["source_index"]],
            source_episode=int(row["source_episode"]),
            tags=self._tags_of(int(row["tags"])),
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def _decode_language(self, values: np.ndarray) -> np.ndarray:
        table = np.asarray(self.tasks, dtype=object)
        return table[np.asarray(values)]

    def _tags_of(self, mask: int) -> tuple[str, ...]:
        return tuple(name for bit, name in enumerate(self._commit["tags"]) if mask >> bit & 1)

    def _check_key(self, key: str) -> None:
        if key not in self.features:
            raise KeyError(f"unknown feature {key!r}; the store's features are {list(self.features)}")

    def nbytes_stored(self) -> int | None:
        """Bytes the store occupies in its backend (None where the backend cannot tell)."""
        if self._kind == "local":
            return sum(p.stat().st_size for p in Path(str(self._zstore.root)).rglob("*") if p.is_file())
        if self._remote is not None:
            fs, path = self._remote
            return int(fs.du(path))
        return None

    def summary(self) -> dict[str, Any]:
        """What ``robocl info`` prints: features, counts, tasks, success rate and size."""
        table = self.episodes
        return {
            "location": self.location,
            "format_version": FORMAT_VERSION,
            "fps": self.fps,
            "meta": self.meta,
            "features": {k: f.to_dict() for k, f in self.features.items()},
            "n_episodes": self.n_episodes,
            "n_steps": self.n_steps,
            "tasks": self.tasks,
            "tags": self.tag_names,
            "sources": self.sources,
            "success_rate": float(table["success"].mean()) if self.n_episodes else None,
            "bytes_stored": self.nbytes_stored(),
        }

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-feature mean, std, min, max and quantiles q01..q99 over all committed steps."""
        return {k: stats_lib.public_view(self.features[k], acc) for k, acc in self._stats_acc.items()}

    def view(
        self,
        *,
        task: str | int | None = None,
        success: bool | None = None,
        tags: str | Sequence[str] | None = None,
        source: str | None = None,
        episodes: Iterable[int] | None = None,
    ) -> StoreView:
        """The committed episodes that match every given filter (tags: all of them must be present)."""
        return StoreView(self, np.arange(self.n_episodes)).filter(
            task=task, success=success, tags=tags, source=source, episodes=episodes
        )

    # ------------------------------------------------------------------ writing
    def add_episode(
        self,
        steps: Mapping[str, Any],
        *,
        task: str | None = None,
        success: bool = False,
        terminated: bool = False,
        truncated: bool = False,
        final_obs: Mapping[str, Any] | None = None,
        source: str = "",
        source_episode: int = -1,
        tags: Sequence[str] = (),
        episode_return: float | None = None,
    ) -> int:
        """Validate and commit one whole episode; returns its index. Nothing is written if it is invalid."""
        meta = EpisodeMeta(
            task=task,
            success=success,
            terminated=terminated,
            truncated=truncated,
            source=source,
            source_episode=source_episode,
            tags=tuple(tags),
            episode_return=episode_return,
        )
        return self.add_episodes([(steps, meta, final_obs)])[0]

    def add_episodes(
        self, episodes: Sequence[tuple[Mapping[str, Any], EpisodeMeta, Mapping[str, Any] | None]]
    ) -> list[int]:
        """Validate several episodes and commit them together (one commit record write)."""
        self._require_writer()
        prepared = [self._prepare(self.n_episodes + i, *ep) for i, ep in enumerate(episodes)]
        if not prepared:
            return []
        return self._write(prepared)

    def episode_writer(
        self,
        *,
        task: str | None = None,
        source: str = "",
        source_episode: int = -1,
        tags: Sequence[str] = (),
    ) -> EpisodeWriter:
        """A streaming writer for one episode: ``add_step`` per control tick, then ``commit``.

        Use it as a context manager: an exception inside the block discards the episode. Several writers
        may be open at once (one per sub-environment); each buffers its episode in RAM until commit.
        """
        self._require_writer()
        return EpisodeWriter(self, task=task, source=source, source_episode=source_episode, tags=tags)

    def _require_writer(self) -> None:
        if self.mode != "a" or self._lock is None:
            raise PermissionError(f"{self.location} is open read-only (or closed); open it with mode='a'")

    def _prepare(
        self, index: int, steps: Mapping[str, Any], meta: EpisodeMeta, final_obs: Mapping[str, Any] | None
    ) -> _Prepared:
        where = f"episode {index}"
        arrays = coerce_steps(self.features, steps, where=where)
        length = len(next(iter(arrays.values())))
        obs_keys = self.observation_keys
        if final_obs is None:
            final = {k: arrays[k][-1] for k in obs_keys}
        else:
            final = coerce_steps(
                {k: self.features[k] for k in obs_keys}, final_obs, where=f"{where} final_obs", batched=False
            )
        tags = tuple(meta.tags)
        for tag in tags:
            if not isinstance(tag, str) or not tag or "," in tag:
                raise ValueError(f"{where}: tag {tag!r} must be a non-empty string without commas")
        if meta.task is not None and not isinstance(meta.task, str):
            raise ValueError(f"{where}: task must be a string (the language instruction), got {meta.task!r}")
        if "reward" in arrays and self.features["reward"].kind == "reward":
            ep_return = float(np.sum(arrays["reward"], dtype=np.float64))
        else:
            ep_return = float(meta.episode_return) if meta.episode_return is not None else float("nan")
        return _Prepared(
            arrays=arrays,
            final=final,
            has_final=final_obs is not None,
            length=length,
            meta=meta,
            tags=tags,
            episode_return=ep_return,
        )

    def _write(self, prepared: list[_Prepared]) -> list[int]:
        commit = dict(self._commit)
        tasks, sources, tag_names = list(commit["tasks"]), list(commit["sources"]), list(commit["tags"])

        def task_id(text: str | None) -> int:
            if text is None:
                return -1
            if text not in tasks:
                tasks.append(text)
            return tasks.index(text)

        # Map strings to indices first: a tag overflow must fail before anything is written.
        rows: dict[str, list[Any]] = {col: [] for col in EPISODE_COLUMNS}
        start = self.n_steps
        for ep in prepared:
            for tag in ep.tags:
                if tag not in tag_names:
                    tag_names.append(tag)
            if len(tag_names) > MAX_TAGS:
                raise ValueError(f"a store holds at most {MAX_TAGS} distinct tags; got {tag_names}")
            if ep.meta.source not in sources:
                sources.append(ep.meta.source)
            for key, feat in self.features.items():
                if feat.kind == "language":
                    ep.arrays[key] = np.array([task_id(s) for s in ep.arrays[key]], dtype=np.int32)
                    ep.final[key] = np.array(task_id(str(ep.final[key])), dtype=np.int32)
            mask = sum(1 << tag_names.index(t) for t in set(ep.tags))
            for col, value in [
                ("start", start),
                ("length", ep.length),
                ("task_index", task_id(ep.meta.task)),
                ("success", ep.meta.success),
                ("return", ep.episode_return),
                ("terminated", ep.meta.terminated),
                ("truncated", ep.meta.truncated),
                ("has_final_obs", ep.has_final),
                ("source_index", sources.index(ep.meta.source)),
                ("source_episode", ep.meta.source_episode),
                ("tags", mask),
            ]:
                rows[col].append(value)
            start += ep.length

        n_steps, n_eps = self.n_steps, self.n_episodes
        new_steps, new_eps = start, n_eps + len(prepared)
        # Step data, final observations and episode rows are written concurrently: none of them is visible
        # before the commit record, which is written after all of them have landed.
        writes = [
            (f"data/{k}", n_steps, np.concatenate([ep.arrays[k] for ep in prepared])) for k in self.features
        ]
        writes += [
            (f"episodes/final/{k}", n_eps, np.stack([ep.final[k] for ep in prepared]))
            for k in self.observation_keys
        ]
        writes += [(f"episodes/{c}", n_eps, np.asarray(rows[c], dtype=d)) for c, d in EPISODE_COLUMNS.items()]
        sync(_append_all([(self._array(path).async_array, at, v) for path, at, v in writes]))

        stats_acc = dict(self._stats_acc)
        for key, feat in self.features.items():
            if feat.kind == "language":
                continue
            for ep in prepared:
                stats_acc[key] = stats_lib.merge(
                    stats_acc.get(key), stats_lib.episode_stats(feat, ep.arrays[key])
                )
        commit.update(
            n_episodes=new_eps,
            n_steps=new_steps,
            tasks=tasks,
            sources=sources,
            tags=tag_names,
            stats={k: stats_lib.to_json(v) for k, v in stats_acc.items()},
            commit_id=int(commit["commit_id"]) + 1,
        )
        self._root.update_attributes({"commit": commit})
        self._commit, self._stats_acc, self._table = commit, stats_acc, None
        for key, cached in list(self._cache.items()):
            if len(cached) == n_steps:  # keep RAM copies current without re-reading
                self._cache[key] = np.concatenate([cached, *[ep.arrays[key] for ep in prepared]])
        return list(range(n_eps, new_eps))


@dataclass
class _Prepared:
    arrays: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    has_final: bool
    length: int
    meta: EpisodeMeta
    tags: tuple[str, ...]
    episode_return: float


def _empty_commit() -> dict[str, Any]:
    return {
        "n_episodes": 0,
        "n_steps": 0,
        "tasks": [],
        "sources": [],
        "tags": [],
        "stats": {},
        "commit_id": 0,
    }


def _write_empty_store(root: zarr.Group, feats: Mapping[str, Feature], header: dict[str, Any]) -> None:
    data, episodes = root.require_group("data"), root.require_group("episodes")
    final = episodes.require_group("final")
    for key, feat in feats.items():
        _create_step_array(data, key, feat)
        if feat.is_observation:
            _create_step_array(final, key, feat)
    for col, dtype in EPISODE_COLUMNS.items():
        episodes.create_array(
            col,
            shape=(0,),
            dtype=dtype,
            chunks=(EPISODE_ROWS_PER_CHUNK,),
            compressors=[_compressor()],
            fill_value=0,
        )
    root.update_attributes({"robocl": header, "commit": _empty_commit()})


def _create_step_array(group: Any, key: str, feat: Feature) -> None:
    if feat.is_image:
        group.create_array(
            key,
            shape=(0, *feat.shape),
            dtype=feat.dtype,
            chunks=(1, *feat.shape),
            shards=(FRAMES_PER_SHARD, *feat.shape),
            compressors=[_compressor(image=True)],
            fill_value=0,
        )
    else:
        rows = max(1, LOWDIM_CHUNK_BYTES // max(feat.step_nbytes, 1))
        group.create_array(
            key,
            shape=(0, *feat.shape),
            dtype=feat.dtype,
            chunks=(rows, *feat.shape),
            compressors=[_compressor()],
            fill_value=0,
        )


async def _append_all(writes: list[tuple[AsyncArray, int, np.ndarray]]) -> None:
    await asyncio.gather(*[_append_rows(*w) for w in writes])


async def _append_rows(arr: AsyncArray, at: int, values: np.ndarray) -> None:
    # Grow first, then write: a kill between the two leaves rows past the commit, which readers ignore and
    # the next writer truncates. Capacity doubles so that most appends rewrite no array metadata;
    # close() trims the arrays back to the committed rows.
    end = at + len(values)
    if end > arr.shape[0]:
        await arr.resize((max(end, 2 * arr.shape[0]), *arr.shape[1:]))
    await arr.setitem(slice(at, end), values)
