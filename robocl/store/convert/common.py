"""What every converter shares: the error type, the resumable ingest loop and robocl's side records.

Ingest is a loop over :class:`SourceEpisode` objects that a format reader decodes one at a time. Episodes
are committed in small batches (one commit record each, see ``format.py``), so a killed ingest loses at most
the batch in flight; rerunning the same command opens the store with mode "a" and asks the reader to skip
every source episode already committed under the same ``source`` string.

Formats cannot hold everything a store holds (episode success, tags, tasks, robocl's feature names). Each
exporter therefore writes two small side records in the format's own metadata slot, and the matching
reader uses them when present, which makes store -> format -> store lossless:

- the *schema* (one per dataset): ``{"robocl_schema": 1, "fps", "meta", "features": {format key: feature
  dict + "name"}}``;
- the *extras* (one per episode): ``{"success", "terminated", "truncated", "task", "tags", "has_final_obs"}``.

Datasets made by other tools have neither; readers then fall back to each format's native conventions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robocl.store import EpisodeMeta, Feature, TrajectoryStore

SCHEMA_VERSION = 1
#: A commit batch closes at this many episodes or bytes, whichever comes first: small episodes share a
#: commit record write (~tens of ms each), while RAM stays bounded by one batch.
BATCH_EPISODES = 64
BATCH_BYTES = 32 << 20

#: (store feature name, feature) per source key, in the order the store lists them.
FeatureMap = dict[str, tuple[str, Feature]]


class ConversionError(ValueError):
    """Bad input: the message names the file and the field at fault."""

    def __init__(self, path: str | Path, what: str, problem: str) -> None:
        super().__init__(f"{path}: {what}: {problem}")


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the install command that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this converter needs the '{module}' package; install it with: pip install 'robocl[{extra}]'"
        ) from exc


@dataclass
class SourceEpisode:
    """One decoded, complete episode, ready for ``TrajectoryStore.add_episodes``."""

    index: int  # the episode's index in the source dataset (stored as ``source_episode``)
    steps: dict[str, Any]
    final_obs: dict[str, Any] | None = None  # None: the source has no observation after the last action
    task: str | None = None
    success: bool | None = False  # None: the source does not say
    terminated: bool = False
    truncated: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    def apply_extras(self, extras: Mapping[str, Any] | None) -> None:
        """Overwrite what the format's native fields implied with robocl's own per-episode record."""
        if not extras:
            return
        success = extras.get("success", self.success)
        self.success = None if success is None else bool(success)
        self.terminated = bool(extras.get("terminated", self.terminated))
        self.truncated = bool(extras.get("truncated", self.truncated))
        self.task = extras.get("task", self.task)
        self.tags = tuple(extras.get("tags", self.tags))
        if not extras.get("has_final_obs", True):
            self.final_obs = None

    @property
    def nbytes(self) -> int:
        return sum(np.asarray(v).nbytes for v in self.steps.values() if not _is_text(v))


def _is_text(value: Any) -> bool:
    return isinstance(value, list) or (isinstance(value, np.ndarray) and value.dtype == object)


# ---------------------------------------------------------------------------------------------- ingest
class EpisodeSource(Protocol):
    """What every format reader offers :func:`ingest_episodes`."""

    source: str  # the store's source name, "<format>:<dataset>"
    fps: float
    meta: Mapping[str, Any]
    features: Mapping[str, tuple[str, Feature]]  # source key -> (store feature name, feature)

    def __len__(self) -> int: ...  # episodes in the source

    def read(self, skip: set[int]) -> Iterator[SourceEpisode]: ...  # every episode not in ``skip``

    def close(self) -> None: ...


def success_rule(
    rule: str, features: Mapping[str, tuple[str, Feature]]
) -> Callable[[SourceEpisode], bool | None] | None:
    """The success ``robocl ingest --success RULE`` gives each episode of a source with ``features`` (None:
    keep what the reader found):

    - ``last``: keep what the format records (LeRobot: the last ``next.success``; robocl's own exports:
      their record), unknown where it records nothing;
    - ``all``: every episode succeeded (teleoperated demonstrations that all complete the task);
    - ``none``: success unknown for every episode (mark them later with ``robocl edit``);
    - ``column:NAME``: the last value of the per-step column NAME (a source key or its store name).
    """
    if rule == "last":
        return None
    if rule in ("all", "none"):
        return lambda ep: True if rule == "all" else None
    name = rule.removeprefix("column:")
    if not rule.startswith("column:") or not name:
        raise ValueError(f"--success {rule!r}: expected last, all, none or column:NAME")
    columns = {key: store_name for key, (store_name, _) in features.items()}
    columns.update({store_name: store_name for store_name in columns.values()})
    lowdim = {n: f for n, f in features.values() if not f.is_image and f.kind != "language"}
    if columns.get(name) not in lowdim:
        raise ValueError(
            f"--success column:{name}: the source has no per-step column {name!r}; its columns are "
            f"{sorted(k for k, v in columns.items() if v in lowdim)}"
        )
    feature = columns[name]

    def from_column(ep: SourceEpisode) -> bool:
        last = np.asarray(ep.steps[feature])[-1]
        if last.size != 1:
            raise ValueError(f"--success column:{name}: one value per step needed, got shape {last.shape}")
        return bool(last.reshape(-1)[0])

    return from_column


def ingest_episodes(
    store_path: str | Path,
    source: EpisodeSource,
    *,
    cast: Mapping[str, str] | None = None,
    success: str = "last",
    progress: bool = True,
) -> TrajectoryStore:
    """Create or resume ``store_path``, commit each episode of ``source`` not committed yet, close ``source``.

    Features keep the source's dtypes; ``cast`` (store feature name -> dtype, e.g. ``{"reward":
    "float32"}``) asks for another dtype of the same kind; ``success`` says where episodes' success comes
    from (:func:`success_rule`). Returns the store, still open for appending (close it, or use it as a
    context manager).
    """
    try:
        decide = success_rule(success, source.features)
        features = _cast(dict(source.features.values()), cast or {})
        store = _open_or_create(Path(store_path), features, source.fps, source.meta)
        try:
            done = committed_source_episodes(store, source.source)
            episodes = source.read(done)
            if decide is not None:
                episodes = (replace(ep, success=decide(ep)) for ep in episodes)
            _commit_all(store, episodes, source.source, len(source), len(done), progress)
        except BaseException:
            store.close()
            raise
    finally:
        source.close()
    return store


def _cast(features: dict[str, Feature], cast: Mapping[str, str]) -> dict[str, Feature]:
    unknown = sorted(set(cast) - set(features))
    if unknown:
        raise ValueError(f"cast names unknown feature(s) {unknown}; this source has {sorted(features)}")
    for name, dtype in cast.items():
        feat = features[name]
        if np.dtype(dtype).kind != np.dtype(feat.dtype).kind or feat.kind == "language":
            raise ValueError(f"cannot cast {name!r} from {feat.dtype} to {dtype}: casts stay within a kind")
        features[name] = replace(feat, dtype=str(np.dtype(dtype)))
    return features


def _open_or_create(
    path: Path, features: Mapping[str, Feature], fps: float, meta: Mapping[str, Any]
) -> TrajectoryStore:
    if not (path / "zarr.json").exists():
        return TrajectoryStore.create(path, dict(features), fps=fps, meta=dict(meta))
    store = TrajectoryStore.open(path, "a")
    if store.features != dict(features) or not np.isclose(store.fps, fps):
        theirs = {k: f.to_dict() for k, f in store.features.items()}
        ours = {k: f.to_dict() for k, f in features.items()}
        store.close()
        raise ConversionError(
            path,
            "features",
            f"the existing store (fps {store.fps:g}, features {theirs}) does not match this source "
            f"(fps {fps:g}, features {ours}); ingest into a new store",
        )
    return store


def committed_source_episodes(store: TrajectoryStore, source: str) -> set[int]:
    """Source episode indices already committed from ``source``."""
    # The store has no public accessor for its source vocabulary (reported to the store's owner);
    # the commit record is the only place that names it.
    sources: list[str] = store.sources
    if source not in sources:
        return set()
    table = store.episodes
    mine = table["source_index"] == sources.index(source)
    return {int(i) for i in table["source_episode"][mine]}


def _commit_all(
    store: TrajectoryStore,
    episodes: Iterator[SourceEpisode],
    source: str,
    n_episodes: int,
    n_done: int,
    progress: bool,
) -> None:
    from robocl.progress import Progress

    pending: list[SourceEpisode] = []
    with Progress(n_episodes, initial=n_done, unit="ep", enabled=progress, desc="ingest") as bar:

        def flush() -> None:
            batch = pending[:]
            pending.clear()  # before committing: a failed batch must not be retried by the finally below
            _commit_batch(store, batch, source)
            bar.update(len(batch))

        try:
            for ep in episodes:
                pending.append(ep)
                if len(pending) >= BATCH_EPISODES or sum(p.nbytes for p in pending) >= BATCH_BYTES:
                    flush()
        finally:
            # A reader that fails on episode k has already validated episodes < k: keep them.
            flush()


def _commit_batch(store: TrajectoryStore, batch: list[SourceEpisode], source: str) -> None:
    if not batch:
        return
    obs_keys = store.observation_keys
    for ep in batch:
        if ep.final_obs is not None:
            # Observation-kind features a format has no next value for (D4RL infos, robomimic's sim
            # states) repeat their last step, as the store does for a whole episode without final_obs.
            missing = [k for k in obs_keys if k not in ep.final_obs and k in ep.steps]
            ep.final_obs = {**ep.final_obs, **{k: ep.steps[k][-1] for k in missing}}
    rows = [
        (
            ep.steps,
            EpisodeMeta(
                task=ep.task,
                success=ep.success,
                terminated=ep.terminated,
                truncated=ep.truncated,
                source=source,
                source_episode=ep.index,
                tags=ep.tags,
            ),
            ep.final_obs,
        )
        for ep in batch
    ]
    try:
        store.add_episodes(rows)
    except ValueError:
        # The store validates the whole batch before writing any of it: commit the valid prefix one by
        # one, so the error surfaces from the first bad episode with everything before it kept.
        for row in rows:
            store.add_episodes([row])


# ---------------------------------------------------------------------------------------------- side records
def schema_record(store: TrajectoryStore, mapping: Mapping[str, str]) -> dict[str, Any]:
    """The dataset-level side record: store feature name -> format key, plus fps and metadata."""
    return {
        "robocl_schema": SCHEMA_VERSION,
        "fps": store.fps,
        "meta": store.meta,
        "features": {key: {"name": name, **store.features[name].to_dict()} for name, key in mapping.items()},
    }


def apply_schema(
    native: FeatureMap, record: Mapping[str, Any] | None, implied: tuple[str, ...] = ()
) -> tuple[FeatureMap, dict[str, Any]]:
    """Use a schema record's names and shapes where it agrees with what the files hold.

    A record that names other keys, or shapes with another element count, was left behind by a tool
    that edited the dataset after robocl wrote it, so it is ignored. ``implied`` keys are ones an exporter
    writes whether or not the store had them; absent from the record, they are dropped.
    Returns (feature map, store meta).
    """
    if not record or record.get("robocl_schema") != SCHEMA_VERSION:
        return native, {}
    recorded = record.get("features", {})
    kept = {k: v for k, v in native.items() if k in recorded or k not in implied}
    if set(recorded) != set(kept):
        return native, {}
    out: FeatureMap = {}
    for key, (_, feat) in kept.items():
        spec = dict(recorded[key])
        name = spec.pop("name")
        try:
            theirs = Feature.from_dict(spec)
        except (KeyError, ValueError):
            return native, {}
        same_size = int(np.prod(theirs.shape)) == int(np.prod(feat.shape))
        # Same dtype kind: the store casts within a kind (the file's float64 rewards -> float32).
        same_kind = np.dtype(theirs.dtype).kind == np.dtype(feat.dtype).kind or "language" in (
            theirs.kind,
            feat.kind,
        )
        if not (same_size and same_kind):
            return native, {}
        out[key] = (name, theirs)
    return out, dict(record.get("meta", {}))


def episode_extras(store: TrajectoryStore, index: int) -> dict[str, Any]:
    """The per-episode side record of committed episode ``index``."""
    table = store.episodes
    task_index = int(table["task_index"][index])
    bits = int(table["tags"][index])
    return {
        "success": bool(table["success"][index]) if store.success_known[index] else None,
        "terminated": bool(table["terminated"][index]),
        "truncated": bool(table["truncated"][index]),
        "task": store.tasks[task_index] if task_index >= 0 else None,
        "tags": [name for bit, name in enumerate(store.tag_names) if bits >> bit & 1],
        "has_final_obs": bool(table["has_final_obs"][index]),
    }


# -------------------------------------------------------------------------------------- untrusted paths
#: Widest zero-padded index a path template may ask for (LeRobot uses 3 and 6).
MAX_TEMPLATE_WIDTH = 20
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)(?::(0?)([0-9]+)d)?\}")


def fill_template(template: str, values: Mapping[str, int | str], where: str | Path, what: str) -> str:
    """A path template from a dataset's metadata, filled by a fixed formatter: only ``{name}`` and
    ``{name:0Nd}`` (N <= MAX_TEMPLATE_WIDTH) of the fields in ``values``. Python's ``str.format`` would
    evaluate whatever the file says: ``{0}``, attribute and index lookups, and widths of gigabytes."""
    if any("{" in text or "}" in text for text in re.split(r"\{[^{}]*\}", template)):
        raise ConversionError(where, what, f"{template!r} has an unmatched brace")
    out, pos = [], 0
    for match in re.finditer(r"\{[^{}]*\}", template):
        out.append(template[pos : match.start()])
        pos = match.end()
        field = _PLACEHOLDER.fullmatch(match.group())
        name = field.group(1) if field else None
        if field is None or name not in values:
            raise ConversionError(
                where, what, f"{match.group()!r} in {template!r} is not one of the fields {sorted(values)}"
            )
        value, width = values[name], field.group(3)
        if width is None:
            out.append(str(value))
            continue
        if int(width) > MAX_TEMPLATE_WIDTH or not isinstance(value, int):
            raise ConversionError(
                where, what, f"{match.group()!r}: widths up to {MAX_TEMPLATE_WIDTH}, for integer fields only"
            )
        out.append(f"{value:{field.group(2)}{int(width)}d}")
    out.append(template[pos:])
    return "".join(out)


def inside(root: Path, relative: str, where: str | Path, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` (no ``..`` out of it, no absolute path).

    Checked on the normalised path, not the resolved one: a dataset folder may legitimately be made of
    symlinks (a hub cache snapshot), but the metadata's own text must not lead anywhere else.
    """
    base = os.path.normpath(os.path.abspath(root))
    path = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([base, path]) != base:
        raise ConversionError(where, what, f"{relative!r} points outside the dataset folder {root}")
    return Path(path)


def reward_dtype(source: Any) -> str:
    """The store dtype for a source's rewards: a float type as it is (float64 stays float64, so round trips
    are exact), anything else (integer or bool rewards) as float64."""
    dtype = np.dtype(source)
    return str(dtype) if dtype.kind == "f" else "float64"


def dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def loads(text: str | bytes | None, path: str | Path, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversionError(path, what, f"not valid JSON ({exc})") from exc


def reshape_steps(values: np.ndarray, feat: Feature, length: int, path: str | Path, what: str) -> np.ndarray:
    """(T, *anything) with the feature's element count -> (T, *feature shape), or a ConversionError."""
    values = np.asarray(values)
    if values.ndim == 0 or len(values) != length or values.size != length * int(np.prod(feat.shape)):
        raise ConversionError(
            path, what, f"shape {values.shape} does not hold {length} steps of shape {feat.shape}"
        )
    return values.reshape(length, *feat.shape)


def export_order(store: TrajectoryStore, episodes: Iterable[int] | None) -> np.ndarray:
    """The committed episode indices to export, in order (all of them by default)."""
    if episodes is None:
        return np.arange(store.n_episodes)
    return store.view(episodes=episodes).episode_indices


@contextmanager
def reading(store: TrajectoryStore | str | Path) -> Iterator[TrajectoryStore]:
    """The store itself, or the store at a path opened read-only and closed afterwards."""
    if isinstance(store, TrajectoryStore):
        yield store
        return
    with TrajectoryStore.open(store, "r") as opened:
        yield opened


def prepare_dest(dest: Path, overwrite: bool) -> None:
    """Refuse to mix an export into an existing, non-empty destination unless asked to replace it."""
    import shutil

    if dest.exists() and (dest.is_file() or any(dest.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{dest} already exists; pass overwrite=True (--overwrite) to replace it")
        if dest.is_dir():
            shutil.rmtree(dest)
        else:
            dest.unlink()
