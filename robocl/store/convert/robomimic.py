"""robomimic HDF5 files <-> the trajectory store.

Layout (robomimic's docs, "Dataset Structure", and ``utils/file_utils.py``): group ``data`` with attributes
``total`` (number of samples) and ``env_args`` (JSON); ``data/demo_<N>`` with attribute ``num_samples`` and
datasets ``actions``, ``rewards``, ``dones``, optional ``states``, ``obs/<key>`` and ``next_obs/<key>``;
``mask/<filter>`` lists demo names (bytes) per filter key such as "train"/"valid".

Mapping: ``obs/<key>`` -> ``observation.<key>`` (uint8 (H, W, 3) images -> ``observation.images.<key>``,
rgb), ``actions`` -> ``action``, ``rewards`` -> ``reward``, ``dones`` -> ``done`` (flag), ``states`` ->
``sim_state``; the last ``next_obs`` row is the final observation (the others repeat ``obs`` shifted by
one, which the store does not keep twice). Filter keys become episode tags and tags become filter keys.
An episode is terminated when its last ``dones`` is set; success follows it unless robocl's extras say
otherwise. ``env_args`` is kept in ``meta["robomimic"]``.
"""

from __future__ import annotations

import json
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

DEFAULT_FPS = 20.0  # robosuite's default control frequency, which robomimic's datasets were recorded at
GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE, for stores that did not come from robomimic


def _demo_number(name: str) -> int | None:
    head, _, tail = name.partition("_")
    return int(tail) if head == "demo" and tail.isdigit() else None


class RobomimicSource:
    """A robomimic HDF5 file, read one demo at a time."""

    def __init__(self, path: str | Path, *, fps: float | None = None) -> None:
        import h5py

        self.path = Path(path)
        self.source = f"robomimic:{self.path.name}"
        if not self.path.is_file():
            raise ConversionError(self.path, "file", "missing")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ConversionError(self.path, "file", f"not a readable HDF5 file ({exc})") from exc
        try:
            self._load(fps)
        except BaseException:
            self.file.close()
            raise

    def _load(self, fps: float | None) -> None:
        if "data" not in self.file:
            raise ConversionError(self.path, "data", "missing group")
        data = self.file["data"]
        numbered = {_demo_number(k): k for k in data}
        self.demos = [(n, numbered[n]) for n in sorted(k for k in numbered if k is not None)]
        if not self.demos:
            raise ConversionError(self.path, "data", "no demo_<N> groups")
        self.tags: dict[str, list[str]] = {}
        if "mask" in self.file:
            for key, names in self.file["mask"].items():
                for name in names[:]:
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    if name not in data:
                        raise ConversionError(
                            self.path, f"mask/{key}", f"names {name}, which data holds no group for"
                        )
                    self.tags.setdefault(name, []).append(key)
        # Declared sample counts must agree with the arrays: a mismatch means a partial or edited file.
        lengths = {
            name: len(data[name]["actions"]) if "actions" in data[name] else 0 for _, name in self.demos
        }
        for _, name in self.demos:
            declared = data[name].attrs.get("num_samples")
            if declared is not None and int(declared) != lengths[name]:
                raise ConversionError(
                    self.path,
                    f"data/{name}.num_samples",
                    f"says {declared}, but its actions hold {lengths[name]} steps",
                )
        total = data.attrs.get("total")
        if total is not None and int(total) != sum(lengths.values()):
            raise ConversionError(
                self.path, "data.total", f"says {total}, but the demos hold {sum(lengths.values())} steps"
            )
        record = loads(data.attrs.get("robocl_schema"), self.path, "data.robocl_schema")
        # robomimic readers expect "dones", so exports write it even for stores without a done flag.
        self.features, meta = apply_schema(self._native_features(), record, implied=("dones",))
        self.fps = fps or (record or {}).get("fps") or DEFAULT_FPS
        env_args = loads(data.attrs.get("env_args"), self.path, "data.env_args")
        self.meta = meta or {"robomimic": {"env_args": env_args}}

    def _native_features(self) -> FeatureMap:
        first_name = self.demos[0][1]
        demo = self.file["data"][first_name]
        where = f"data/{first_name}"
        for key in ("actions", "obs"):
            if key not in demo:
                raise ConversionError(self.path, f"{where}/{key}", "missing")
        out: FeatureMap = {}
        for key, ds in demo["obs"].items():
            shape, dtype = tuple(ds.shape[1:]), str(ds.dtype)
            if len(shape) == 3 and shape[2] == 3 and dtype == "uint8":
                out[f"obs/{key}"] = (f"observation.images.{key}", Feature("rgb", "uint8", shape))
            else:
                out[f"obs/{key}"] = (f"observation.{key}", Feature("state", dtype, shape))
        out["actions"] = ("action", Feature("action", str(demo["actions"].dtype), demo["actions"].shape[1:]))
        if "rewards" in demo:
            out["rewards"] = ("reward", Feature("reward", reward_dtype(demo["rewards"].dtype)))
        if "dones" in demo:
            out["dones"] = ("done", Feature("flag", "bool"))
        if "states" in demo:
            out["states"] = (
                "sim_state",
                Feature("state", str(demo["states"].dtype), demo["states"].shape[1:]),
            )
        for key, ds in demo.items():
            # Other per-step arrays (robocl writes its flags and infos here; robomimic ignores them).
            if key not in ("actions", "rewards", "dones", "states") and hasattr(ds, "dtype") and ds.ndim >= 1:
                kind = "flag" if ds.dtype == bool else "state"
                out[key] = (key, Feature(kind, str(ds.dtype), ds.shape[1:]))  # type: ignore[arg-type]
        return out

    def __len__(self) -> int:
        return len(self.demos)

    def read(self, skip: set[int]) -> Iterator[SourceEpisode]:
        for number, name in self.demos:
            if number not in skip:
                yield self._episode(number, name)

    def _episode(self, number: int, name: str) -> SourceEpisode:
        demo = self.file["data"][name]
        where = f"data/{name}"
        length = len(demo["actions"]) if "actions" in demo else 0
        steps: dict[str, Any] = {}
        final: dict[str, Any] = {}
        for key, (store_name, feat) in self.features.items():
            if key not in demo:
                raise ConversionError(self.path, f"{where}/{key}", "missing")
            values = demo[key][:]
            if feat.kind == "flag":
                values = values.astype(bool)  # robomimic stores dones as integers
            steps[store_name] = reshape_steps(values, feat, length, self.path, f"{where}/{key}")
            if key.startswith("obs/"):
                next_key = "next_" + key
                if next_key in demo and len(demo[next_key]) == length:
                    final[store_name] = demo[next_key][length - 1].reshape(feat.shape)
        dones = steps.get(self.features["dones"][0]) if "dones" in self.features else None
        terminated = bool(dones[-1]) if dones is not None and length else False
        ep = SourceEpisode(
            index=number,
            steps=steps,
            final_obs=final if len(final) == sum(k.startswith("obs/") for k in self.features) else None,
            success=terminated,
            terminated=terminated,
            tags=tuple(self.tags.get(name, ())),
        )
        ep.apply_extras(loads(demo.attrs.get("robocl"), self.path, f"{where}.robocl"))
        return ep

    def close(self) -> None:
        self.file.close()


def ingest_robomimic(
    src: str | Path,
    store_path: str | Path,
    *,
    fps: float | None = None,
    cast: Mapping[str, str] | None = None,
    success: str = "last",
    progress: bool = True,
) -> TrajectoryStore:
    """Ingest (or resume ingesting) a robomimic HDF5 file; demo_<N> becomes source episode N."""
    return ingest_episodes(
        store_path, RobomimicSource(src, fps=fps), cast=cast, success=success, progress=progress
    )


def _robomimic_keys(store: TrajectoryStore) -> dict[str, str]:
    """Store feature name -> dataset path inside a demo group."""
    fixed = {"action": "actions", "reward": "rewards", "done": "dones", "sim_state": "states"}
    out = {}
    for name, feat in store.features.items():
        if feat.kind == "language":
            raise ConversionError(store.location, name, "robomimic files hold no language features")
        if name in fixed:
            out[name] = fixed[name]
        elif feat.is_observation:
            out[name] = "obs/" + name.removeprefix("observation.").removeprefix("images.")
        elif "/" not in name:
            out[name] = name  # an extra per-step array of the demo group
        else:
            raise ConversionError(store.location, name, "cannot name a dataset of a robomimic demo")
    if "action" not in out:
        raise ConversionError(store.location, "action", "missing: a robomimic export needs it")
    return out


def export_robomimic(
    store: TrajectoryStore | str | Path,
    dest: str | Path,
    *,
    episodes: Iterable[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a store as one robomimic HDF5 file: demo_<i> per episode, tags as mask/<tag> filter keys."""
    import h5py

    from robocl.progress import progress_iter

    with reading(store) as store:
        dest = Path(dest)
        mapping = _robomimic_keys(store)
        prepare_dest(dest, overwrite)
        dest.parent.mkdir(parents=True, exist_ok=True)
        masks: dict[str, list[str]] = {}
        total = 0
        with h5py.File(dest, "w") as f:
            data = f.create_group("data")
            for j, index in enumerate(
                progress_iter(export_order(store, episodes), desc="export robomimic", enabled=progress)
            ):
                ep = store.episode(int(index))
                name = f"demo_{j}"
                demo = data.create_group(name)
                demo.attrs["num_samples"] = len(ep)
                for store_name, key in mapping.items():
                    values = ep.steps[store_name]
                    image = store.features[store_name].is_image
                    demo.create_dataset(key, data=values, compression="lzf" if image else None)
                    if key.startswith("obs/"):
                        nxt = np.concatenate([values[1:], ep.final_obs[store_name][None]])
                        demo.create_dataset("next_" + key, data=nxt, compression="lzf" if image else None)
                if "done" not in mapping:
                    dones = np.zeros(len(ep), np.uint8)
                    dones[-1] = ep.terminated
                    demo.create_dataset("dones", data=dones)
                demo.attrs["robocl"] = dumps(episode_extras(store, int(index)))
                for tag in ep.tags:
                    masks.setdefault(tag, []).append(name)
                total += len(ep)
            data.attrs["total"] = total
            env_args = store.meta.get("robomimic", {}).get("env_args") or {
                "env_name": str(store.meta.get("env_id", "")),
                "type": GYM_ENV_TYPE,
                "env_kwargs": {},
            }
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["robocl_schema"] = dumps(schema_record(store, mapping))
            for tag, names in masks.items():
                f[f"mask/{tag}"] = np.array(names, dtype="S")
        return dest
