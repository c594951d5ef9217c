"""``robocl validate``: every check of a store, and ``--repair``.

:func:`validate_store` reads everything the commit record covers and lists each problem with the episodes
it touches; it never raises (a check that fails is one more problem). It checks the header and the group
metadata, every array's shape and dtype against the schema, the episode table's consistency, that every
chunk the commit record covers exists (format 2 writes every chunk, so a missing one is lost data), and
that every chunk's bytes pass their crc32c and decoder, with no NaN or Inf.

:func:`repair_store` turns a report into a store without the damage, explicitly: ``truncate`` keeps the
episodes before the first damaged one (in place, one commit-record write); ``drop`` keeps every undamaged
episode (a local store is rewritten beside itself, swapped in, and the damaged original kept aside).
Missing group metadata holds no data and is rewritten in both modes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.sync import sync

from robocl.store import integrity
from robocl.store.format import EPISODE_COLUMNS, GROUPS, TrajectoryStore
from robocl.store.integrity import DamagedStoreError, describe_episodes
from robocl.store.schema import EpisodeMeta

RepairMode = Literal["truncate", "drop"]


@dataclass
class Problem:
    """One thing wrong with a store and the committed episodes whose data it touches (None: unknown)."""

    where: str
    what: str
    episodes: list[int] | None

    def __str__(self) -> str:
        return f"{self.where}: {self.what} ({describe_episodes(self.episodes)})"


@dataclass
class ValidationReport:
    location: str
    n_episodes: int = 0
    problems: list[Problem] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing_groups: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_episodes(self) -> list[int] | None:
        """Every episode some problem touches; None when a problem cannot say which."""
        if any(p.episodes is None for p in self.problems):
            return None
        return sorted({e for p in self.problems for e in p.episodes or ()})

    def add(self, where: str, what: str, episodes: list[int] | None) -> None:
        self.problems.append(Problem(where, what, episodes))

    def as_text(self) -> str:
        if self.ok:
            head = f"{self.location}: OK"
        else:
            damaged = self.damaged_episodes
            lost = "episodes unknown" if damaged is None else f"{len(damaged)} of {self.n_episodes} episodes"
            head = f"{self.location}: {len(self.problems)} problem(s), damaged: {lost}"
        return "\n".join(
            [
                head,
                *(f"  note: {n}" for n in self.notes),
                *(f"  checked: {c}" for c in self.checked),
                *(f"  PROBLEM: {p}" for p in self.problems),
            ]
        )


def validate_store(
    location: Any, *, storage_options: Mapping[str, Any] | None = None, read_chunks: bool = True
) -> ValidationReport:
    """Check a store without modifying it; every problem found is listed, none raises."""
    report = ValidationReport(str(location))
    try:
        store = TrajectoryStore.open(location, "r", storage_options=storage_options)
    except Exception as exc:  # the report is the product: an unreadable header is one more problem
        report.add("store", f"cannot be opened: {exc}", None)
        return report
    try:
        _check(store, report, read_chunks)
    except Exception as exc:  # a check that itself fails must not hide the others' findings
        report.add("validate", f"stopped early: {type(exc).__name__}: {exc}", None)
    finally:
        store.close()
    return report


def _check(store: TrajectoryStore, report: ValidationReport, read_chunks: bool) -> None:
    report.location = store.location
    report.n_episodes = store.n_episodes
    every = list(range(store.n_episodes))
    report.checked.append(
        f"header: format {store.format_version}, {len(store.features)} features, fps {store.fps:g}; "
        f"commit record: {store.n_episodes} episodes, {store.n_steps} steps"
    )
    if not store.checksummed:
        report.notes.append(
            f"format {store.format_version} store (written before checksums): its chunks carry no crc32c, "
            "so changed bytes show only if a decoder fails, and a missing chunk cannot be told from an "
            "all-zero one"
        )
    for group in GROUPS:
        try:
            zarr.open_group(store._zstore, path=group, mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError):  # absent, or not JSON / not a group any more
            report.missing_groups.append(group)
            what = "metadata (zarr.json) missing or unreadable; it holds no steps, --repair rewrites it"
            report.add(f"group {group}", what, [])

    arrays: list[tuple[zarr.Array, str, int]] = []
    for path, rows in store.array_paths():
        try:
            array = store._array(path)
        except DamagedStoreError:
            report.add(f"array {path}", "metadata (zarr.json) missing or unreadable, its data too", every)
            continue
        if array.shape[0] < rows:
            report.add(
                f"array {path}",
                f"{array.shape[0]} rows but the commit record says {rows}",
                store.episodes_touching(path, array.shape[0], rows),
            )
            continue
        if not _is_table(path):
            feat = store.features[path.rsplit("/", 1)[1]]
            if tuple(array.shape[1:]) != feat.shape or str(array.dtype) != feat.dtype:
                report.add(
                    f"array {path}",
                    f"is {array.dtype}{tuple(array.shape[1:])}, the schema says {feat.dtype}{feat.shape}",
                    every,
                )
                continue
        elif str(array.dtype) != EPISODE_COLUMNS[path.removeprefix("episodes/")]:
            report.add(f"array {path}", f"has dtype {array.dtype}", every)
            continue
        arrays.append((array, path, rows))
    report.checked.append("group metadata; every array's metadata, shape and dtype")

    _check_table(store, report)
    for array, path, rows in arrays:
        _check_chunks(store, report, array, path, rows, read_chunks)
    report.checked.append(
        "every chunk the commit record covers is present"
        + ("; its checksum and decoder pass; no NaN/Inf" if read_chunks else " (--quick: bytes not read)")
    )


def _check_table(store: TrajectoryStore, report: ValidationReport) -> None:
    """The episode table agrees with itself and the commit record (columns that read back cleanly)."""
    table: dict[str, np.ndarray] = {}
    for column in EPISODE_COLUMNS:
        try:
            table[column] = store._array(f"episodes/{column}")[: store.n_episodes]
        except Exception:  # reported chunk by chunk below, with the episodes it holds
            continue
    if "start" in table and "length" in table and store.n_episodes:
        starts, lengths = table["start"], table["length"]
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if (lengths <= 0).any():
            report.add("episode table", "episodes with no steps", np.flatnonzero(lengths <= 0).tolist())
        elif not np.array_equal(starts, expected):
            bad = np.flatnonzero(starts != expected).tolist()
            report.add("episode table", "starts are not contiguous", bad)
        elif int(lengths.sum()) != store.n_steps:
            report.add(
                "episode table",
                f"lengths sum to {int(lengths.sum())}, the commit record says {store.n_steps} steps",
                None,
            )
    for column, size in (("task_index", len(store.tasks)), ("source_index", len(store.sources))):
        if column in table:
            bad = (table[column] < (-1 if column == "task_index" else 0)) | (table[column] >= size)
            if bad.any():
                report.add(f"episodes/{column}", "points outside its table", np.flatnonzero(bad).tolist())
    report.checked.append("episode table: contiguous starts, lengths, task and source indices")


def _check_chunks(
    store: TrajectoryStore, report: ValidationReport, array: zarr.Array, path: str, rows: int, decode: bool
) -> None:
    present = integrity.stored_keys(array)
    feat = store.features.get(path.rsplit("/", 1)[1]) if not _is_table(path) else None
    for unit in integrity.units(array, 0, rows):
        raw = None
        if unit.key in present:
            if not decode:
                continue
            raw = integrity.get_bytes(array.store, unit.key)
        elif not store.checksummed:
            continue  # format 1 skipped all-zero chunks, so absence proves nothing
        try:
            block = integrity.read_unit(array, unit, raw, checksummed=store.checksummed)
        except integrity.ChunkProblem as exc:
            lo, hi = exc.span(unit.lo, unit.hi)
            where = f"{path} chunk {unit.name} (rows {lo}..{hi - 1})"
            report.add(where, exc.problem, store.episodes_touching(path, lo, hi))
            continue
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            bad = unit.lo + int(np.argwhere(~np.isfinite(block))[0][0])
            report.add(f"{path} row {bad}", "NaN or Inf", store.episodes_touching(path, bad, bad + 1))
        if feat is not None and feat.kind == "language" and block.size:
            bad_rows = np.flatnonzero((block < 0) | (block >= len(store.tasks)))
            if bad_rows.size:
                first = unit.lo + int(bad_rows[0])
                report.add(
                    f"{path} row {first}",
                    "instruction index outside the task table",
                    store.episodes_touching(path, first, unit.lo + int(bad_rows[-1]) + 1),
                )


def _is_table(path: str) -> bool:
    return path.startswith("episodes/") and not path.startswith("episodes/final/")


# ---------------------------------------------------------------------------------------------- repair
@dataclass
class RepairResult:
    mode: RepairMode
    kept: int  # episodes in the repaired store
    dropped: list[int]  # episode indices (of the damaged store) no longer in it
    groups_rewritten: list[str]
    damaged_copy: str | None = None  # drop: where the damaged original now is

    def as_text(self) -> str:
        lines = [f"repair ({self.mode}): kept {self.kept} episodes, removed {len(self.dropped)}"]
        if self.dropped:
            lines.append(f"  removed: {describe_episodes(self.dropped)} (indices before the repair)")
        if self.mode == "drop" and self.dropped:
            lines.append("  the episodes after a removed one have moved down: indices changed")
        if self.groups_rewritten:
            lines.append(f"  rewrote the metadata of group(s) {', '.join(self.groups_rewritten)}")
        if self.damaged_copy:
            lines.append(f"  the damaged original is kept at {self.damaged_copy}; delete it when done")
        return "\n".join(lines)


def repair_store(
    location: Any,
    mode: RepairMode,
    *,
    storage_options: Mapping[str, Any] | None = None,
    report: ValidationReport | None = None,
) -> RepairResult:
    """Remove the damage :func:`validate_store` finds (``report``: its full report, if already made; see the
    module docstring for the two modes)."""
    if mode not in ("truncate", "drop"):
        raise ValueError(f"repair mode must be 'truncate' or 'drop', got {mode!r}")
    report = report or validate_store(location, storage_options=storage_options)
    damaged = report.damaged_episodes
    if damaged is None:
        unknown = next(p for p in report.problems if p.episodes is None)
        raise DamagedStoreError(f"cannot repair {report.location}: {unknown}")
    store = TrajectoryStore.open(location, "a", storage_options=storage_options)
    swapped = False
    try:
        for group in report.missing_groups:
            # Written directly: zarr's create_group(overwrite=True) would delete the arrays below it.
            metadata = GroupMetadata(zarr_format=3).to_buffer_dict(default_buffer_prototype())["zarr.json"]
            sync(store._zstore.set(f"{group}/zarr.json", metadata))
        result = RepairResult(mode, store.n_episodes - len(damaged), damaged, report.missing_groups)
        if damaged and mode == "truncate":
            result.kept, result.dropped = damaged[0], list(range(damaged[0], store.n_episodes))
            store._cut(damaged[0])
        elif damaged:
            result.damaged_copy = _rewrite_without(store, set(damaged))
            swapped = True
        return result
    finally:
        if swapped:  # the path now holds the new store: closing would trim it to the old commit record
            store._release_lock()
        else:
            store.close()


def _rewrite_without(store: TrajectoryStore, damaged: set[int]) -> str:
    """Copy every undamaged episode into a new store beside ``store`` and swap it in; returns where the
    damaged original went. A kill at any point leaves the original in place and untouched."""
    if store._kind != "local":
        raise ValueError(
            f"--repair drop rewrites a store beside itself, which needs a local directory; {store.location} "
            "is not one (use --repair truncate, or copy the store to a local disk first)"
        )
    path = Path(store.location)
    tmp = path.with_name(f".{path.name}.repairing-{uuid.uuid4().hex[:8]}")
    new = TrajectoryStore.create(tmp, store.features, fps=store.fps, meta=store.meta)
    try:
        for index in range(store.n_episodes):
            if index in damaged:
                continue
            ep = store.episode(index)
            meta = EpisodeMeta(
                task=ep.task,
                success=ep.success,
                terminated=ep.terminated,
                truncated=ep.truncated,
                source=ep.source,
                source_episode=ep.source_episode,
                tags=ep.tags,
                episode_return=ep.episode_return,
            )
            new.add_episodes([(ep.steps, meta, ep.final_obs if ep.has_final_obs else None)])
        new._write_commit(new._stats_acc, history=store.history)  # the edits made to the original
    finally:
        new.close()
    aside = path.with_name(f"{path.name}.damaged-{uuid.uuid4().hex[:8]}")
    path.rename(aside)
    tmp.rename(path)
    return str(aside)
