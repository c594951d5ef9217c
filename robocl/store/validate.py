"""Whole-store checks behind ``robocl validate``: schema, commit record, episode table, chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robocl.store.format import EPISODE_COLUMNS, TrajectoryStore


@dataclass
class ValidationReport:
    location: str
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_text(self) -> str:
        head = f"{self.location}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'}"
        lines = [
            head,
            *(f"  checked: {c}" for c in self.checked),
            *(f"  PROBLEM: {p}" for p in self.problems),
        ]
        return "\n".join(lines)


def validate_store(
    location: Any, *, storage_options: dict[str, Any] | None = None, read_chunks: bool = True
) -> ValidationReport:
    """Check a store without modifying it; every problem found is listed, none raises."""
    report = ValidationReport(str(location))
    try:
        store = TrajectoryStore.open(location, "r", storage_options=storage_options)
    except Exception as exc:  # the report is the product: an unreadable header is one more problem
        report.problems.append(f"cannot open as a robocl store: {type(exc).__name__}: {exc}")
        return report
    n_steps, n_eps = store.n_steps, store.n_episodes
    report.checked.append(f"header: format, {len(store.features)} features, fps {store.fps}")

    for group, expected, name in [
        (store._root["data"], n_steps, "data"),
        (store._root["episodes"], n_eps, "episodes"),
        (store._root["episodes"]["final"], n_eps, "episodes/final"),
    ]:
        wanted = (
            set(store.features)
            if name == "data"
            else (set(EPISODE_COLUMNS) if name == "episodes" else set(store.observation_keys))
        )
        present = {k for k, _ in group.arrays()}
        if wanted - present:
            report.problems.append(f"{name}: missing arrays {sorted(wanted - present)}")
        for key in sorted(wanted & present):
            arr = group[key]
            if arr.shape[0] < expected:
                report.problems.append(
                    f"{name}/{key}: {arr.shape[0]} rows but the commit record says {expected}"
                )
            if name != "episodes":
                feat = store.features[key]
                if tuple(arr.shape[1:]) != feat.shape or str(arr.dtype) != feat.dtype:
                    report.problems.append(
                        f"{name}/{key}: array is {arr.dtype}{tuple(arr.shape[1:])}, schema says "
                        f"{feat.dtype}{feat.shape}"
                    )
    report.checked.append(f"commit record: {n_eps} episodes, {n_steps} steps; array shapes")
    if report.problems:
        return report

    table = store.episodes
    starts, lengths = table["start"], table["length"]
    if n_eps:
        expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if (lengths <= 0).any():
            report.problems.append(f"episodes {np.flatnonzero(lengths <= 0).tolist()} have no steps")
        if not np.array_equal(starts, expected_starts):
            bad = int(np.flatnonzero(starts != expected_starts)[0])
            report.problems.append(
                f"episode {bad}: start {starts[bad]} != {expected_starts[bad]} (not contiguous)"
            )
        if int(lengths.sum()) != n_steps:
            report.problems.append(
                f"episode lengths sum to {int(lengths.sum())}, commit says {n_steps} steps"
            )
        n_tasks = len(store.tasks)
        bad_tasks = (table["task_index"] < -1) | (table["task_index"] >= n_tasks)
        if bad_tasks.any():
            report.problems.append(
                f"episodes {np.flatnonzero(bad_tasks).tolist()} point outside the task table"
            )
        if (table["source_index"] >= len(store.sources)).any():
            report.problems.append("episode source index outside the source table")
    report.checked.append("episode table: contiguous starts, lengths, task and source indices")

    if read_chunks:
        for key, feat in store.features.items():
            for final in [False, True] if feat.is_observation else [False]:
                arr = store.zarr_array(key, final=final)
                rows = n_eps if final else n_steps
                label = f"{'episodes/final' if final else 'data'}/{key}"
                step = max(1, int(arr.shards[0] if arr.shards else arr.chunks[0]) * 64)
                for lo in range(0, rows, step):
                    try:
                        block = arr[lo : min(rows, lo + step)]
                    except Exception as exc:  # a corrupt chunk surfaces as any decoder error
                        report.problems.append(
                            f"{label}: rows {lo}..{min(rows, lo + step)} unreadable: {exc}"
                        )
                        break
                    if block.dtype.kind == "f" and not np.isfinite(block).all():
                        report.problems.append(f"{label}: NaN or Inf in rows {lo}..{min(rows, lo + step)}")
                        break
                    if (
                        feat.kind == "language"
                        and block.size
                        and (block.min() < 0 or block.max() >= len(store.tasks))
                    ):
                        report.problems.append(f"{label}: instruction index outside the task table")
                        break
        report.checked.append("every committed chunk decodes; no NaN/Inf")
    return report
