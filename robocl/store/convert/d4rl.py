"""D4RL HDF5 files <-> the trajectory store, and D4RL's normalised score.

A D4RL file is flat: ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts`` (N rows each)
and optional ``infos/*`` and ``next_observations``. Episodes end where ``terminals | timeouts`` is true; a
trailing segment without either is an episode that neither terminated nor was truncated. The next
observation is the following row within an episode, so the file holds no observation after an episode's
last action unless it has ``next_observations`` (D4RL's mujoco "-v2" files do); without it the store
records ``has_final_obs`` False.

Mapping: ``observations`` -> ``observation.state``, ``actions`` -> ``action``, ``rewards`` -> ``reward``,
``infos/<key>`` -> ``info.<key>`` (``flag`` when boolean, else ``state``). Exports carry robocl's schema and
per-episode extras (see ``common.py``) in the ``robocl_schema`` attribute and ``robocl/episodes``, and the
final observations of features other than ``observation.state`` in ``robocl/final/<key>``; D4RL's loaders
read these as more arrays and ignore them.

Reference returns for the normalised score, from D4RL's ``infos.py`` (via shared/refs/data-formats.md);
the store keeps the pair used in ``meta["d4rl"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robocl.store import Feature, TrajectoryStore
from robocl.store.convert.common import (
    ConversionError,
    FeatureMap,
    SourceEpisode,
    apply_schema,
    dumps,
    episode_extras,
    export_order,
    ingest_episodes,
    loads,
    prepare_dest,
    reading,
    reshape_steps,
    reward_dtype,
    schema_record,
)

#: env name -> (random policy return, expert return) for D4RL's mujoco locomotion tasks.
REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}
CORE = {"observations": "observation.state", "actions": "action", "rewards": "reward"}
FLAGS = ("terminals", "timeouts")
DEFAULT_FPS = 10.0


def normalized_score(returns: Any, ref_min: float, ref_max: float) -> Any:
    """D4RL's normalised score: 100 * (return - ref_min) / (ref_max - ref_min); 0 random, 100 expert."""
    if ref_max == ref_min:
        raise ValueError(f"reference scores must differ, got min = max = {ref_min}")
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def reference_scores(env: str) -> tuple[float, float] | None:
    """(ref_min, ref_max) for an env or dataset name such as "hopper-medium-v2", if D4RL defines them."""
    base = Path(env).name.split("-")[0].lower()
    return REF_SCORES.get(base)


class D4RLSource:
    """A D4RL HDF5 file, split into episodes and read one episode at a time."""

    def __init__(self, path: str | Path, *, env: str | None = None, fps: float | None = None) -> None:
        import h5py

        self.path = Path(path)
        self.source = f"d4rl:{self.path.name}"
        if not self.path.is_file():
            raise ConversionError(self.path, "file", "missing")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ConversionError(self.path, "file", f"not a readable HDF5 file ({exc})") from exc
        try:
            self._load(env, fps)
        except BaseException:
            self.file.close()
            raise

    def _load(self, env: str | None, fps: float | None) -> None:
        self._check()
        name = env or self.path.stem
        record = loads(self.file.attrs.get("robocl_schema"), self.path, "robocl_schema")
        self.features, meta = apply_schema(self._native_features(), record)
        # D4RL has no control rate: the caller's, else the one robocl recorded on export, else 10 Hz.
        self.fps = fps or (record or {}).get("fps") or DEFAULT_FPS
        self.meta = meta or {"d4rl": {"env": name.split("-")[0], "dataset": self.path.stem}}
        refs = reference_scores(name)
        if refs is not None and "ref_min_score" not in self.meta.get("d4rl", {}):
            self.meta.setdefault("d4rl", {}).update(ref_min_score=refs[0], ref_max_score=refs[1])

    def _check(self) -> None:
        f = self.file
        for key in [*CORE, "terminals"]:
            if key not in f or not hasattr(f[key], "shape"):
                raise ConversionError(self.path, key, "missing dataset")
        self.n = len(f["observations"])
        for key in [*CORE, *FLAGS, "next_observations", *self._info_keys()]:
            if key in f and len(f[key]) != self.n:
                raise ConversionError(self.path, key, f"has {len(f[key])} rows, observations has {self.n}")
        self.terminals = np.asarray(f["terminals"][:], dtype=bool).reshape(self.n)
        timeouts = f["timeouts"][:] if "timeouts" in f else np.zeros(self.n)  # D4RL's oldest files lack it
        self.timeouts = np.asarray(timeouts, dtype=bool).reshape(self.n)
        stops = np.flatnonzero(self.terminals | self.timeouts) + 1
        if self.n and (not len(stops) or stops[-1] != self.n):
            stops = np.append(stops, self.n)  # trailing unfinished segment
        starts = np.concatenate([[0], stops[:-1]])[: len(stops)]
        self.bounds = np.stack([starts, stops], axis=1).astype(np.int64)

    def _info_keys(self) -> list[str]:
        import h5py

        keys: list[str] = []
        if "infos" in self.file:
            self.file["infos"].visititems(
                lambda k, obj: keys.append(f"infos/{k}") if isinstance(obj, h5py.Dataset) else None
            )
        return keys

    def _native_features(self) -> FeatureMap:
        f = self.file
        out: FeatureMap = {}
        for key, name in CORE.items():
            kind = {"observations": "state", "actions": "action", "rewards": "reward"}[key]
            dtype = reward_dtype(f[key].dtype) if key == "rewards" else str(f[key].dtype)
            out[key] = (name, Feature(kind, dtype, f[key].shape[1:]))  # type: ignore[arg-type]
        for key in self._info_keys():
            dtype = str(f[key].dtype)
            kind = "flag" if dtype == "bool" else "state"
            out[key] = (
                "info." + key.removeprefix("infos/").replace("/", "."),
                Feature(kind, dtype, f[key].shape[1:]),
            )
        return out

    def __len__(self) -> int:
        return len(self.bounds)

    def read(self, skip: set[int]) -> Iterator[SourceEpisode]:
        f = self.file
        extras = (
            f["robocl/episodes"]
            if "robocl/episodes" in f and len(f["robocl/episodes"]) == len(self)
            else None
        )
        obs_name = self.features["observations"][0]
        for i, (lo, hi) in enumerate(self.bounds):
            if i in skip:
                continue
            length = int(hi - lo)
            steps = {
                name: reshape_steps(f[key][lo:hi], feat, length, self.path, key)
                for key, (name, feat) in self.features.items()
            }
            final = None
            if "next_observations" in f:
                final = {obs_name: f["next_observations"][hi - 1]}
                for key, (name, feat) in self.features.items():
                    stored = f.get(f"robocl/final/{key}")
                    if feat.is_observation and stored is not None and len(stored) == len(self):
                        final[name] = stored[i]
            ep = SourceEpisode(
                index=i,
                steps=steps,
                final_obs=final,
                terminated=bool(self.terminals[hi - 1]),
                truncated=bool(self.timeouts[hi - 1]),
            )
            if extras is not None:
                ep.apply_extras(loads(extras[i], self.path, f"robocl/episodes[{i}]"))
            yield ep

    def close(self) -> None:
        self.file.close()


def ingest_d4rl(
    src: str | Path,
    store_path: str | Path,
    *,
    env: str | None = None,
    fps: float | None = None,
    cast: Mapping[str, str] | None = None,
    success: str = "last",
    progress: bool = True,
) -> TrajectoryStore:
    """Ingest (or resume ingesting) a D4RL HDF5 file.

    ``env`` names the task for the reference scores (default: the file name, e.g. "hopper-medium-v2");
    ``fps`` is the control rate to record (default: the one robocl exported with, else 10).
    """
    return ingest_episodes(
        store_path, D4RLSource(src, env=env, fps=fps), cast=cast, success=success, progress=progress
    )


def export_d4rl(
    store: TrajectoryStore | str | Path,
    dest: str | Path,
    *,
    episodes: Iterable[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a store as one D4RL HDF5 file (observations from ``observation.state``)."""
    import h5py

    from robocl.progress import progress_iter

    with reading(store) as store:
        dest = Path(dest)
        mapping = _d4rl_keys(store)
        obs_name = next(n for n, k in mapping.items() if k == "observations")
        order = export_order(store, episodes)
        n = int(store.episodes["length"][order].sum())
        prepare_dest(dest, overwrite)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(dest, "w") as f:
            arrays = {
                key: f.create_dataset(
                    key, shape=(n, *store.features[name].shape), dtype=store.features[name].dtype
                )
                for name, key in mapping.items()
            }
            obs = store.features[obs_name]
            arrays["next_observations"] = f.create_dataset(
                "next_observations", shape=(n, *obs.shape), dtype=obs.dtype
            )
            for key in FLAGS:
                arrays[key] = f.create_dataset(key, shape=(n,), dtype=bool)
            extras = f.create_dataset("robocl/episodes", shape=(len(order),), dtype=h5py.string_dtype())
            # D4RL's next_observations covers observation.state; other observation features (infos) keep
            # their final observation here, one row per episode.
            finals = {
                name: f.create_dataset(
                    f"robocl/final/{key}",
                    shape=(len(order), *store.features[name].shape),
                    dtype=store.features[name].dtype,
                )
                for name, key in mapping.items()
                if store.features[name].is_observation and name != obs_name
            }
            at = 0
            for j, index in enumerate(progress_iter(order, desc="export d4rl", enabled=progress)):
                ep = store.episode(int(index))
                hi = at + len(ep)
                for name, key in mapping.items():
                    arrays[key][at:hi] = ep.steps[name]
                nxt = np.concatenate([ep.steps[obs_name][1:], ep.final_obs[obs_name][None]])
                arrays["next_observations"][at:hi] = nxt
                arrays["terminals"][hi - 1] = ep.terminated
                # An unfinished episode before the last must still end here, or it would merge with the
                # next one on reading; the extras record keeps its truncated flag False.
                arrays["timeouts"][hi - 1] = ep.truncated or (not ep.terminated and j < len(order) - 1)
                extras[j] = dumps(episode_extras(store, int(index)))
                for name, ds in finals.items():
                    ds[j] = ep.final_obs[name]
                at = hi
            f.attrs["robocl_schema"] = dumps(schema_record(store, mapping))
        return dest


def _d4rl_keys(store: TrajectoryStore) -> dict[str, str]:
    """Store feature name -> dataset path in the file."""
    out = {}
    for name, feat in store.features.items():
        core = next((k for k, v in CORE.items() if v == name), None)
        if core is None and feat.kind == "language":
            raise ConversionError(store.location, name, "D4RL files hold no language features")
        out[name] = core or "infos/" + name.removeprefix("info.").replace(".", "/")
    missing = [v for v in CORE.values() if v not in out]
    if missing:
        raise ConversionError(store.location, missing[0], "missing: a D4RL export needs it")
    return out
