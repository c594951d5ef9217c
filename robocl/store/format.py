"""The trajectory store: one zarr v3 group for simulated rollouts and real-robot demonstrations.

Layout (drawn as zarr keys)::

    <root>/zarr.json              attrs: "robocl" (format version, features, fps, meta) and "commit"
    <root>/data/<feature>          (N, *shape)  every step of every episode, time-major, episodes concatenated
    <root>/episodes/<column>       (E,)         the episode table: start, length, task_index, success, ...
    <root>/episodes/final/<obs>    (E, *shape)  the observation after each episode's last action

The ``commit`` attribute (episode and step counts, the task/source/tag vocabularies, the statistics, which
episodes' success is unknown and the history of edits) is the only truth about what exists. An append
writes step data first, then the episode rows, and the commit record last, in one atomic write of the
group's metadata; readers clip every array to the committed counts, and opening for writing cuts the
arrays back to them. A writer killed at any moment therefore loses
at most the episodes it had not committed. This is diffusion_policy's ``episode_ends`` idea with the commit
moved to the end, where a crash cannot leave arrays that disagree with it.

Integrity at rest (format 2): every chunk ends with a crc32c and every chunk is written, zeros included, so
damage after the commit (flipped bytes, a truncated or deleted file) is an error naming the array, the chunk
and the episodes it holds, never a silent zero (see ``integrity.py`` and ``robocl validate``).

Edits of committed episodes (:meth:`TrajectoryStore.edit_episodes`, ``robocl edit``: success and tags) are
logged ahead: the commit record gains the edit (as ``pending_edit``) and its history entry in one write,
which is the moment the edit exists; readers apply a pending edit to the table they read, the columns are
rewritten after it, and the record then drops it. The edit only sets values, so a writer killed half-way
is finished by the next one that opens the store, and a reader never sees half an edit.
"""

from __future__ import annotations

import asyncio
import json
import numbers
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync

from robocl.store import integrity
from robocl.store import stats as stats_lib
from robocl.store.integrity import DamagedChunkError, DamagedStoreError
from robocl.store.locks import (
    LocalLock,
    MemoryLock,
    ObjectStoreLock,
    WriterLock,
    clear_except_lock,
    replace_dir,
)
from robocl.store.schema import EpisodeMeta, Feature, coerce_steps
from robocl.store.view import StoreView
from robocl.store.writer import EpisodeWriter

#: Format 2 added a crc32c to every chunk and writes every chunk, all-zero ones included. Format 1 stores
#: (written before) still open, for reading and appending, as they are: they stay format 1, and
#: ``robocl validate`` says that their chunks carry no checksums and that a missing chunk cannot be told
#: from an all-zero one there.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
#: Low-dimensional arrays are chunked along time only: at most this many rows per chunk, so one damaged
#: chunk costs at most a few dozen episodes of typical length (README's store benchmark: chunk size against
#: bytes on disk and sampling speed), and at most this many bytes for wide features.
LOWDIM_CHUNK_ROWS = 4096
LOWDIM_CHUNK_BYTES = 1 << 20
#: Images: one frame per chunk (random access decodes one frame), grouped in shards of this many frames
#: so a store of 40k frames is ~600 files rather than 40k.
FRAMES_PER_SHARD = 64
#: The episode table is small and read whole on open; 1024 rows bound what one damaged chunk costs.
EPISODE_ROWS_PER_CHUNK = 1024
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


def _compressors(image: bool = False) -> list[Any]:
    # Measured by benchmarks/store_sampling.py (README, "Store"): on rendered 96x96 frames lz4 + bit shuffle
    # wrote ~1.5x and decoded ~1.2x faster than zstd-3 + bit shuffle for 15% more bytes, and sampling speed
    # matters more than disk; low-dimensional arrays are small, so they take zstd's better ratio. The crc32c
    # after the compressor is what lets a reader tell flipped bytes from data.
    blosc = BloscCodec(cname="lz4" if image else "zstd", clevel=5 if image else 3, shuffle="bitshuffle")
    return [blosc, Crc32cCodec()]


@dataclass
class Episode:
    """One committed episode: its steps, final observation and table row."""

    index: int
    steps: dict[str, np.ndarray]
    final_obs: dict[str, np.ndarray]
    task: str | None
    success: bool | None  # None: unknown (nothing recorded says)
    terminated: bool
    truncated: bool
    episode_return: float
    source: str
    source_episode: int
    tags: tuple[str, ...]
    has_final_obs: bool  # False: final_obs repeats the last step's observation

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
        self,
        store: Any,
        kind: str,
        mode: Literal["r", "a"],
        *,
        remote: Any = None,
        break_lock: bool = False,
        lock: WriterLock | None = None,
    ) -> None:
        self._zstore = store
        self._kind = kind
        self._remote = remote  # (sync fsspec filesystem, path) for URLs
        self.mode = mode
        self._lock: WriterLock | None = lock
        self._cache: dict[str, np.ndarray] = {}  # low-dimensional features read whole, kept across refresh()
        self._table: dict[str, np.ndarray] | None = None
        self._handles: dict[str, zarr.Array] = {}
        try:
            # A writer checks the store exactly as a reader does before it takes the lock, so anything that is
            # not a readable store fails with the reader's message and leaves no lock behind.
            self._open_root("r")
            if mode == "a":
                self._lock = self._lock or self._take_lock(break_lock)
                # Again under the lock: another writer may have committed before it was ours.
                self._open_root("r+")
                self._truncate_uncommitted()
                self._finish_edit()
        except BaseException:
            self._release_lock()
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
        lowdim_chunk_rows: int = LOWDIM_CHUNK_ROWS,
    ) -> TrajectoryStore:
        """Create an empty store and return it open for appending.

        features: name -> :class:`Feature` (or its dict form); fps: control rate of the recorded steps;
        meta: free-form robot/env metadata (JSON-serialisable), e.g. ``{"robot": "panda", "env_id": ...}``;
        overwrite: replace an existing store (refused while another writer holds it);
        lowdim_chunk_rows: rows per chunk of low-dimensional arrays (fewer: less lost per damaged chunk).
        """
        if not isinstance(features, Mapping):
            raise TypeError(f"features must be a mapping of name -> Feature, got {type(features).__name__}")
        feats = {k: v if isinstance(v, Feature) else Feature.from_dict(v) for k, v in features.items()}
        if not feats:
            raise ValueError("a store needs at least one feature")
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if lowdim_chunk_rows < 1:
            raise ValueError(f"lowdim_chunk_rows must be >= 1, got {lowdim_chunk_rows}")
        header = {
            "format_version": FORMAT_VERSION,
            "features": {k: f.to_dict() for k, f in feats.items()},
            "fps": float(fps),
            "meta": dict(meta or {}),
        }
        store, kind, remote = _open_location(location, storage_options)
        if kind != "local":
            # Lock first: overwriting must never delete a store under a live writer.
            lock = cls._lock_of(store, kind, remote, break_lock=False)
            try:
                if sync(store.exists("zarr.json")):
                    if not overwrite:
                        raise FileExistsError(f"{location} already exists; pass overwrite=True to replace it")
                    clear_except_lock(store, remote)
                root = zarr.open_group(store, mode="a", zarr_format=3)  # "w" would delete our lock
                _write_empty_store(root, feats, header, lowdim_chunk_rows)
            except BaseException:
                lock.release()
                raise
            return cls(store, kind, "a", remote=remote, lock=lock)
        path = Path(str(store.root))
        # Built beside its final place and renamed in: a kill during creation leaves no half-made store.
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _write_empty_store(
            zarr.open_group(zarr.storage.LocalStore(tmp), mode="w-", zarr_format=3),
            feats,
            header,
            lowdim_chunk_rows,
        )
        # flock follows the inode through the rename, so the new store is ours before anyone can see it.
        lock = LocalLock(tmp)
        try:
            replace_dir(path, tmp, overwrite)
        except BaseException:
            lock.release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(zarr.storage.LocalStore(path), kind, "a", remote=remote, lock=lock)

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
        return self._lock_of(self._zstore, self._kind, self._remote, break_lock)

    @staticmethod
    def _lock_of(store: Any, kind: str, remote: Any, break_lock: bool) -> WriterLock:
        if kind == "local":
            return LocalLock(Path(str(store.root)))
        if kind == "memory":
            return MemoryLock(store)
        if remote is None:
            raise ValueError(f"cannot lock a {type(store).__name__} for writing; pass a path or URL")
        return ObjectStoreLock(*remote, break_lock)

    def _open_root(self, mode: Literal["r", "r+"]) -> None:
        """Open the root group and read the header; every way this fails is one line naming the store."""
        try:
            self._root = zarr.open_group(self._zstore, mode=mode, zarr_format=3)
        except FileNotFoundError:  # zarr's GroupNotFoundError
            raise FileNotFoundError(f"no robocl store at {self.location} (zarr.json missing)") from None
        except json.JSONDecodeError as exc:
            raise DamagedStoreError(
                f"{self.location}: zarr.json is not valid JSON (truncated?): {exc}; it holds the commit "
                "record, so the store cannot be read"
            ) from None
        except ValueError as exc:  # zarr's errors for a node that is not a zarr v3 group
            raise ValueError(f"{self.location} is not a zarr v3 group: {exc}") from None
        self._load_header()

    def _load_header(self) -> None:
        attrs = self._root.attrs.asdict()
        header = attrs.get("robocl")
        if not isinstance(header, dict) or not isinstance(attrs.get("commit"), dict):
            raise ValueError(
                f"{self.location} is a zarr group but not a robocl store (no 'robocl' attributes)"
            )
        if header.get("format_version") not in READABLE_FORMATS:
            raise ValueError(
                f"{self.location} has robocl store format {header.get('format_version')}; "
                f"this robocl reads formats {', '.join(map(str, READABLE_FORMATS))}"
            )
        try:
            self.features: dict[str, Feature] = {
                k: Feature.from_dict(v) for k, v in header["features"].items()
            }
            self.fps: float = float(header["fps"])
            self.meta: dict[str, Any] = dict(header["meta"])
            self._commit = attrs["commit"]
            self._stats_acc = {k: stats_lib.from_json(v) for k, v in self._commit["stats"].items()}
            if not all(isinstance(self._commit[k], int) for k in ("n_episodes", "n_steps")):
                raise TypeError("the episode and step counts are not integers")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DamagedStoreError(
                f"{self.location}: the robocl header or commit record in zarr.json is incomplete "
                f"({type(exc).__name__}: {exc})"
            ) from None
        self.format_version: int = int(header["format_version"])
        self._table = None
        self._handles = {}  # their cached shapes may predate another writer's growth

    @property
    def checksummed(self) -> bool:
        """Whether every chunk carries a crc32c and every chunk is written (format 2 and later)."""
        return self.format_version >= 2

    def _truncate_uncommitted(self) -> None:
        """Cut every array back to the commit record (a crashed writer may have grown them)."""
        for path, n in self.array_paths():
            arr = self._array(path)
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))  # updates the handle's shape too
        if self._kind == "local":
            # zarr writes each chunk to '<key>.<uuid>.partial' and renames it; a kill between leaves these.
            for leftover in Path(str(self._zstore.root)).rglob("*.partial"):
                leftover.unlink(missing_ok=True)

    def array_paths(self) -> list[tuple[str, int]]:
        """Every array of the store, with the number of rows the commit record says it has."""
        return [
            *((f"data/{k}", self.n_steps) for k in self.features),
            *((f"episodes/{c}", self.n_episodes) for c in EPISODE_COLUMNS),
            *((f"episodes/final/{k}", self.n_episodes) for k in self.observation_keys),
        ]

    def _array(self, path: str) -> zarr.Array:
        """Open arrays once: each lookup re-reads metadata from the backend. Arrays are opened by path, so
        a lost group ``zarr.json`` (which holds nothing else) does not stop reads."""
        handle = self._handles.get(path)
        if handle is None:
            try:
                array = self._root[path]
            except (KeyError, ValueError):  # absent, or its zarr.json is no longer valid array metadata
                raise DamagedStoreError(
                    f"{self.location}: array {path} is missing or unreadable ({path}/zarr.json), so "
                    f"{'every episode' if path.startswith('data/') else 'the episode table'} is unreadable"
                ) from None
            # Every chunk is written, zeros included (zarr skips all-fill chunks by default), so that a
            # missing chunk always means lost data. zarr keeps this setting per handle, not in the store.
            handle = self._handles[path] = array.with_config({"write_empty_chunks": True})
        return handle

    def _rows(self, path: str, lo: int, hi: int, *, whole: bool = False) -> np.ndarray:
        """Rows [lo, hi) of an array. A chunk that fails its checksum or decoder raises DamagedChunkError
        naming it; ``whole`` (bulk reads into RAM) also refuses chunks that are missing."""
        array = self._array(path)
        if whole and self.checksummed and hi > lo:
            present = integrity.stored_keys(array)
            for unit in integrity.units(array, lo, hi):
                if unit.key not in present:
                    raise self._damage(path, unit, "is missing")
        try:
            return array[lo:hi]
        except Exception as exc:  # codecs raise many types; find the chunk at fault and name it
            raise self._locate_damage(path, lo, hi, exc) from exc

    def _locate_damage(self, path: str, lo: int, hi: int, exc: Exception) -> Exception:
        array = self._array(path)
        # Whole chunks (up to the committed rows), so the error names every episode a bad chunk holds.
        n_rows = self.n_steps if path.startswith("data/") else self.n_episodes
        for unit in integrity.units(array, 0, max(hi, n_rows)):
            if unit.hi <= lo or unit.lo >= hi:
                continue
            raw = integrity.get_bytes(array.store, unit.key)
            try:
                integrity.read_unit(array, unit, raw, checksummed=self.checksummed)
            except integrity.ChunkProblem as problem:
                return self._damage(path, unit, problem.problem, problem.span(unit.lo, unit.hi))
        return DamagedStoreError(f"{self.location}: {path} rows {lo}..{hi - 1} unreadable: {exc}")

    def _damage(
        self, path: str, unit: integrity.Unit, problem: str, rows: tuple[int, int] | None = None
    ) -> DamagedChunkError:
        lo, hi = rows or (unit.lo, unit.hi)
        return DamagedChunkError(
            f"{self.location}: {path}", unit.name, (lo, hi), self.episodes_touching(path, lo, hi), problem
        )

    def episodes_touching(self, path: str, lo: int, hi: int) -> list[int] | None:
        """The committed episodes that own rows [lo, hi) of array ``path`` (None: the table is unreadable)."""
        if path.startswith("episodes/"):  # the table and final observations have one row per episode
            return list(range(lo, min(hi, self.n_episodes)))
        bounds = self._episode_bounds()
        if bounds is None:
            return None
        starts, ends = bounds
        first = int(np.searchsorted(ends, lo, side="right"))
        last = int(np.searchsorted(starts, hi, side="left"))
        return list(range(first, last))

    def _episode_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(starts, ends) of the committed episodes, from the start column or, if that is damaged, from the
        lengths; None when both are unreadable."""
        if self._table is not None:
            return self._table["start"], self._table["start"] + self._table["length"]
        for column in ("start", "length"):
            try:
                values = self._rows(f"episodes/{column}", 0, self.n_episodes, whole=True)
            except DamagedStoreError:
                continue
            if column == "start":  # episodes are contiguous: each ends where the next starts
                return values, np.append(values[1:], self.n_steps)
            ends = np.cumsum(values)
            return ends - values, ends
        return None

    def refresh(self) -> None:
        """Re-read the commit record so a reader sees episodes committed since it opened."""
        old_steps = self.n_steps
        self._open_root("r" if self.mode == "r" else "r+")  # handles are reopened: their shapes are stale
        if self.n_steps < old_steps:  # another writer truncated or rewrote: drop the RAM copies
            self._cache.clear()

    def close(self) -> None:
        """Trim spare capacity (writers) and release the writer lock."""
        if self._lock is not None:
            try:
                self._truncate_uncommitted()
            finally:
                self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
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
        """The committed episode table as numpy columns (start, length, task_index, success, ...).

        ``success`` is False where it is unknown; :attr:`success_known` tells the two apart."""
        if self._table is None:
            n = self.n_episodes
            table = {col: self._rows(f"episodes/{col}", 0, n, whole=True) for col in EPISODE_COLUMNS}
            edit = self._commit.get("pending_edit")
            self._table = _apply_edit(table, edit) if edit else table
        return self._table

    @property
    def success_known(self) -> np.ndarray:
        """(E,) bool: whether each committed episode's success is recorded. Recordings that do not say (a
        LeRobot dataset without a success column) are unknown until :meth:`edit_episodes` sets them."""
        return ~_from_runs(self._commit.get("success_unknown", []), self.n_episodes)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The edits made to committed episodes, oldest first (:meth:`edit_episodes`)."""
        return list(self._commit.get("history", []))

    def steps(self, key: str) -> np.ndarray:
        """All committed steps of a feature, read once and kept in RAM (meant for low-dimensional data)."""
        self._check_key(key)
        n = self.n_steps
        cached = self._cache.get(key)
        if cached is None or len(cached) < n:
            start = 0 if cached is None else len(cached)
            fresh = self._rows(f"data/{key}", start, n, whole=True)
            cached = fresh if cached is None else np.concatenate([cached, fresh])
            self._cache[key] = cached
        return cached[:n]

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Committed steps ``rows`` (any order) of a feature, read without loading the rest of it."""
        self._check_key(key)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_steps):
            raise IndexError(f"rows must lie in [0, {self.n_steps}), the committed steps")
        path = f"data/{key}"
        try:
            return self._array(path).oindex[rows]
        except Exception as exc:  # codecs raise many types; find the chunk at fault and name it
            raise self._locate_damage(path, int(rows.min()), int(rows.max()) + 1, exc) from exc

    def final_obs(self, key: str) -> np.ndarray:
        """Final observation of every committed episode, (E, *shape)."""
        self._check_key(key)
        if not self.features[key].is_observation:
            raise KeyError(f"{key!r} is not an observation feature, so it has no final observation")
        return self._rows(f"episodes/final/{key}", 0, self.n_episodes, whole=True)

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
        row = self._table_row(index)
        lo, hi = int(row["start"]), int(row["start"] + row["length"])
        steps = {}
        for key, feat in self.features.items():
            values = (
                self._cache[key][lo:hi]
                if key in self._cache and len(self._cache[key]) >= hi
                else self._rows(f"data/{key}", lo, hi)
            )
            steps[key] = self._decode_language(values) if feat.kind == "language" else values
        final = {}
        for key in self.observation_keys:
            value = self._rows(f"episodes/final/{key}", index, index + 1)[0]
            final[key] = self._decode_language(value) if self.features[key].kind == "language" else value
        return Episode(
            index=index,
            steps=steps,
            final_obs=final,
            task=self.tasks[row["task_index"]] if row["task_index"] >= 0 else None,
            success=bool(row["success"]) if self.success_known[index] else None,
            terminated=bool(row["terminated"]),
            truncated=bool(row["truncated"]),
            episode_return=float(row["return"]),
            source=self.sources[row["source_index"]],
            source_episode=int(row["source_episode"]),
            tags=self._tags_of(int(row["tags"])),
            has_final_obs=bool(row["has_final_obs"]),
        )

    def _table_row(self, index: int) -> dict[str, Any]:
        """One episode's table row; read on its own when a damaged chunk elsewhere makes the whole table
        unreadable (``--repair drop`` copies the undamaged episodes)."""
        try:
            return {col: v[index] for col, v in self.episodes.items()}
        except DamagedStoreError:
            return {col: self._rows(f"episodes/{col}", index, index + 1)[0] for col in EPISODE_COLUMNS}

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
        table, known = self.episodes, self.success_known
        return {
            "location": self.location,
            "format_version": self.format_version,
            "fps": self.fps,
            "meta": self.meta,
            "features": {k: f.to_dict() for k, f in self.features.items()},
            "n_episodes": self.n_episodes,
            "n_steps": self.n_steps,
            "tasks": self.tasks,
            "tags": self.tag_names,
            "sources": self.sources,
            "success_rate": float(table["success"][known].mean()) if known.any() else None,
            "n_success_known": int(known.sum()),
            "history": self.history,
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
        success: bool | None = False,
        terminated: bool = False,
        truncated: bool = False,
        final_obs: Mapping[str, Any] | None = None,
        source: str = "",
        source_episode: int = -1,
        tags: Sequence[str] = (),
        episode_return: float | None = None,
    ) -> int:
        """Validate and commit one whole episode; returns its index. Nothing is written if it is invalid.

        ``success=None`` records that the episode's success is unknown."""
        meta = EpisodeMeta(
            task=task,
            success=success,
            terminated=terminated,
            truncated=truncated,
            source=source,
            source_episode=source_episode,
            tags=tags,
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
        meta = meta.checked(where)
        if not isinstance(steps, Mapping):
            raise TypeError(f"{where}: steps must be a mapping of feature name -> values, got {type(steps)}")
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
        commit = self._commit
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
                ("success", bool(ep.meta.success)),
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
        try:
            sync(_append_all([(self._array(path).async_array, at, v) for path, at, v in writes]))
        except Exception as exc:
            # A partly filled last chunk is read back before it is rewritten: if it is damaged, name it.
            # Nothing is committed either way, so the store still holds exactly what it held.
            for path, at, _ in writes:
                damage = self._locate_damage(path, at - 1, at, exc) if at else None
                if isinstance(damage, DamagedChunkError):
                    raise damage from exc
            raise

        stats_acc = dict(self._stats_acc)
        for ep in prepared:
            _add_stats(stats_acc, self.features, ep.arrays)
        unknown = np.concatenate([~self.success_known, [ep.meta.success is None for ep in prepared]])
        self._write_commit(
            stats_acc,
            n_episodes=new_eps,
            n_steps=new_steps,
            tasks=tasks,
            sources=sources,
            tags=tag_names,
            success_unknown=_runs(unknown),
        )
        for key, cached in list(self._cache.items()):
            if len(cached) == n_steps:  # keep RAM copies current without re-reading
                self._cache[key] = np.concatenate([cached, *[ep.arrays[key] for ep in prepared]])
        return list(range(n_eps, new_eps))

    def _cut(self, n_keep: int) -> None:
        """Keep only the first ``n_keep`` committed episodes (``robocl validate --repair``): their statistics
        are recomputed from their steps, the commit record shrinks in one write, then the arrays follow."""
        self._require_writer()
        lengths = self._rows("episodes/length", 0, n_keep)
        stats_acc: dict[str, Any] = {}
        start = 0
        for length in lengths.tolist():
            steps = {key: self._rows(f"data/{key}", start, start + length) for key in self.features}
            _add_stats(stats_acc, self.features, steps)
            start += length
        self._write_commit(
            stats_acc,
            n_episodes=n_keep,
            n_steps=start,
            success_unknown=_runs(~self.success_known[:n_keep]),
        )
        self._cache.clear()
        self._truncate_uncommitted()

    def edit_episodes(
        self,
        episodes: Iterable[int],
        *,
        success: bool | Literal["unknown"] | None = None,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        note: str = "",
    ) -> dict[str, Any]:
        """Set the success and tags of committed episodes, crash-safely (see the module docstring), and log
        the edit in :attr:`history`; returns its history entry.

        ``success``: True/False, "unknown", or None to leave it; ``add_tags``/``remove_tags``: tag names
        (a tag already present or absent is left as it is). Step data, statistics and the episodes' other
        columns do not change. Everything is checked before anything is written.
        """
        self._require_writer()
        chosen = sorted({int(i) for i in episodes})
        if not chosen:
            raise ValueError("edit: no episodes given")
        bad = [i for i in chosen if not 0 <= i < self.n_episodes]
        if bad:
            raise ValueError(
                f"edit: episode {bad[0]} does not exist; the store has episodes 0-{self.n_episodes - 1}"
            )
        if success not in (None, True, False, "unknown"):
            raise ValueError(f"edit: success must be True, False or 'unknown', got {success!r}")
        EpisodeMeta(tags=tuple(add_tags)).checked("edit: add_tags")
        EpisodeMeta(tags=tuple(remove_tags)).checked("edit: remove_tags")
        both = sorted(set(add_tags) & set(remove_tags))
        if both:
            raise ValueError(f"edit: tag(s) {both} are both added and removed")
        tag_names = list(self.tag_names)
        absent = [t for t in remove_tags if t not in tag_names]
        if absent:
            raise ValueError(f"edit: no episode has tag {absent[0]!r}; the store's tags are {tag_names}")
        if success is None and not add_tags and not remove_tags:
            raise ValueError("edit: nothing to change; give a success value or tags to add or remove")
        tag_names += [t for t in dict.fromkeys(add_tags) if t not in tag_names]
        if len(tag_names) > MAX_TAGS:
            raise ValueError(f"edit: a store holds at most {MAX_TAGS} distinct tags; got {tag_names}")
        selected = np.zeros(self.n_episodes, dtype=bool)
        selected[chosen] = True
        edit = {
            "episodes": _runs(selected),
            "success": success,
            "add_tags": sum(1 << tag_names.index(t) for t in set(add_tags)),
            "remove_tags": sum(1 << tag_names.index(t) for t in set(remove_tags)),
        }
        unknown = ~self.success_known
        if success is not None:
            unknown[selected] = success == "unknown"
        entry = {
            "commit_id": int(self._commit["commit_id"]) + 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "episodes": edit["episodes"],
            "success": success,
            "add_tags": list(dict.fromkeys(add_tags)),
            "remove_tags": list(dict.fromkeys(remove_tags)),
            "note": note,
        }
        # The edit exists from this write on; the columns below only catch up with it.
        self._write_commit(
            self._stats_acc,
            tags=tag_names,
            success_unknown=_runs(unknown),
            history=[*self.history, entry],
            pending_edit=edit,
        )
        self._finish_edit()
        return entry

    def _finish_edit(self) -> None:
        """Write a pending edit into the episode table's columns, then drop it from the commit record."""
        edit = self._commit.get("pending_edit")
        if not edit:
            return
        table = self.episodes  # read with the edit applied
        n = self.n_episodes
        for column in ("success", "tags"):
            self._array(f"episodes/{column}")[0:n] = table[column]
        self._write_commit(self._stats_acc, pending_edit=None)

    def _write_commit(self, stats_acc: dict[str, Any], **counts: Any) -> None:
        """Write the commit record: the one atomic metadata write that makes everything before it visible."""
        commit = {
            **self._commit,
            **counts,
            "stats": {k: stats_lib.to_json(v) for k, v in stats_acc.items()},
            "commit_id": int(self._commit["commit_id"]) + 1,
        }
        self._root.update_attributes({"commit": commit})
        self._commit, self._stats_acc, self._table = commit, stats_acc, None


def _runs(mask: np.ndarray) -> list[list[int]]:
    """[lo, hi) runs of True in a boolean mask: how the commit record lists episodes (an ingest of
    unlabelled recordings is one run, however many episodes it holds)."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [[int(lo), int(hi)] for lo, hi in zip(edges[::2], edges[1::2], strict=True)]


def _from_runs(runs: Iterable[Sequence[int]], n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    for lo, hi in runs:
        mask[lo:hi] = True
    return mask


def _apply_edit(table: dict[str, np.ndarray], edit: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The table with a logged edit applied (setting values only, so applying it twice changes nothing)."""
    selected = _from_runs(edit["episodes"], len(table["success"]))
    success, tags = table["success"].copy(), table["tags"].copy()
    if edit["success"] in (True, False, "unknown"):
        success[selected] = edit["success"] is True
    tags[selected] = (tags[selected] | np.uint64(edit["add_tags"])) & ~np.uint64(edit["remove_tags"])
    return {**table, "success": success, "tags": tags}


def _add_stats(acc: dict[str, Any], features: Mapping[str, Feature], steps: Mapping[str, np.ndarray]) -> None:
    """Merge one episode's statistics into ``acc`` (language features have none)."""
    for key, feat in features.items():
        if feat.kind != "language":
            acc[key] = stats_lib.merge(acc.get(key), stats_lib.episode_stats(feat, steps[key]))


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


GROUPS = ("data", "episodes", "episodes/final")


def _write_empty_store(
    root: zarr.Group, feats: Mapping[str, Feature], header: dict[str, Any], lowdim_chunk_rows: int
) -> None:
    data, episodes = root.require_group("data"), root.require_group("episodes")
    final = episodes.require_group("final")
    for key, feat in feats.items():
        _create_step_array(data, key, feat, lowdim_chunk_rows)
        if feat.is_observation:
            _create_step_array(final, key, feat, lowdim_chunk_rows)
    for col, dtype in EPISODE_COLUMNS.items():
        episodes.create_array(
            col,
            shape=(0,),
            dtype=dtype,
            chunks=(EPISODE_ROWS_PER_CHUNK,),
            compressors=_compressors(),
            fill_value=0,
        )
    root.update_attributes({"robocl": header, "commit": _empty_commit()})


def _create_step_array(group: Any, key: str, feat: Feature, lowdim_chunk_rows: int) -> None:
    if feat.is_image:
        group.create_array(
            key,
            shape=(0, *feat.shape),
            dtype=feat.dtype,
            chunks=(1, *feat.shape),
            shards=(FRAMES_PER_SHARD, *feat.shape),
            compressors=_compressors(image=True),
            fill_value=0,
        )
    else:
        rows = max(1, min(lowdim_chunk_rows, LOWDIM_CHUNK_BYTES // max(feat.step_nbytes, 1)))
        group.create_array(
            key,
            shape=(0, *feat.shape),
            dtype=feat.dtype,
            chunks=(rows, *feat.shape),
            compressors=_compressors(),
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
