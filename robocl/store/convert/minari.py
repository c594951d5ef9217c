"""Minari datasets <-> the trajectory store, through the ``minari`` package (the ``minari`` extra).

Minari keeps T + 1 observations per episode (the last is the observation after the final action, which
becomes the store's final observation), T actions, rewards, terminations and truncations, and infos with
T + 1 rows when recorded by ``DataCollector`` (row 0 comes from ``reset``; row t + 1 from step t). Both of
its data formats (``hdf5`` and ``arrow``) are read and written through ``MinariStorage``.

Mapping: a Box observation space -> ``observation.state`` (an image Box -> ``observation.images.image``);
a Dict space -> ``observation.<path>`` per leaf, image leaves under ``observation.images.``; the action ->
``action``; rewards -> ``reward``; numeric infos -> ``info.<key>``. Episodes end terminated/truncated as
their last step says. Exports write images raw (``jpeg_encoding=False``) so they round-trip bit-exactly,
and carry robocl's schema in the dataset metadata and its extras in each episode's metadata.
"""

from __future__ import annotations

import shutil
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
    require,
    reshape_steps,
    reward_dtype,
    schema_record,
)

DEFAULT_FPS = 10.0
#: Dataset metadata a store keeps under meta["minari"] and an export writes back, so that
#: ingest -> export keeps ``recover_environment()`` working and the dataset's card whole.
CARRIED_METADATA = (
    "env_spec",
    "eval_env_spec",
    "author",
    "author_email",
    "code_permalink",
    "description",
    "algorithm_name",
    "requirements",
)


def _minari() -> Any:
    return require("minari", "minari")


def _is_image(shape: tuple[int, ...], dtype: Any) -> bool:
    return len(shape) == 3 and shape[2] == 3 and np.dtype(dtype) == np.uint8


def _leaves(
    space: Any, prefix: tuple[str, ...], path: Path, what: str
) -> Iterator[tuple[tuple[str, ...], Feature]]:
    """(path in the space, store feature) for every leaf of a gymnasium space."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        for key, sub in space.spaces.items():
            yield from _leaves(sub, (*prefix, str(key)), path, what)
    elif isinstance(space, gym.spaces.Box | gym.spaces.MultiBinary | gym.spaces.MultiDiscrete):
        shape = tuple(space.shape)
        kind = "rgb" if _is_image(shape, space.dtype) else "state"
        yield prefix, Feature(kind, str(np.dtype(space.dtype)), shape)  # type: ignore[arg-type]
    elif isinstance(space, gym.spaces.Discrete):
        yield prefix, Feature("state", str(np.dtype(space.dtype)), ())
    elif isinstance(space, gym.spaces.Text):
        yield prefix, Feature("language")
    else:
        raise ConversionError(path, what, f"{type(space).__name__} spaces are not supported")


def _get(tree: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        tree = tree[key]
    return tree


class MinariSource:
    """A local Minari dataset: a path to it (or its ``data`` folder) or a dataset id."""

    def __init__(self, src: str | Path, *, fps: float | None = None) -> None:
        minari = _minari()
        from minari.dataset.minari_storage import MinariStorage

        self.data_path = _data_path(str(src))
        try:
            self.dataset = minari.MinariDataset(self.data_path)
            raw = MinariStorage.read_raw_metadata(self.data_path)
        except (ValueError, KeyError, OSError, AssertionError) as exc:
            raise ConversionError(
                self.data_path / "metadata.json", "metadata", f"not a readable Minari dataset ({exc})"
            ) from exc
        self.storage = self.dataset.storage
        self.source = f"minari:{self.dataset.id}"
        native = self._native_features()
        record = raw.get("robocl")
        self.features, meta = apply_schema(native, record)
        self.fps = fps or (record or {}).get("fps") or DEFAULT_FPS
        kept = (
            "dataset_id",
            "observation_space",
            "action_space",
            "ref_min_score",
            "ref_max_score",
            "data_format",
        )
        self.meta = meta or {
            "minari": {
                # Minari reads authors as sets, which JSON cannot hold.
                k: sorted(raw[k]) if isinstance(raw[k], set) else raw[k]
                for k in (*kept, *CARRIED_METADATA)
                if k in raw
            }
        }
        if not meta and "ref_min_score" in raw and "ref_max_score" in raw:
            # The store's one place for normalised-score references (see d4rl.normalized_score).
            self.meta["d4rl"] = {"ref_min_score": raw["ref_min_score"], "ref_max_score": raw["ref_max_score"]}

    def _native_features(self) -> FeatureMap:
        out: FeatureMap = {}
        where = self.data_path / "metadata.json"
        leaves = list(_leaves(self.dataset.observation_space, (), where, "observation_space"))
        for keys, feat in leaves:
            if not keys:
                name = "observation.images.image" if feat.kind == "rgb" else "observation.state"
            elif feat.kind == "rgb" and keys[0] != "images":
                name = "observation.images." + ".".join(keys)
            else:
                name = "observation." + ".".join(keys)
            out["/".join(("observations", *keys))] = (name, feat)
        actions = list(_leaves(self.dataset.action_space, (), where, "action_space"))
        if len(actions) != 1 or actions[0][1].kind == "language":
            raise ConversionError(where, "action_space", "robocl needs one Box or Discrete action space")
        out["actions"] = ("action", Feature("action", actions[0][1].dtype, actions[0][1].shape))
        out["rewards"] = ("reward", Feature("reward", "float64"))  # Minari's own reward dtype
        if self.storage.total_episodes:
            first = next(iter(self._episodes([0])))
            out["rewards"] = ("reward", Feature("reward", reward_dtype(np.asarray(first["rewards"]).dtype)))
            for keys, values in _info_leaves(first.get("infos") or {}, ()):
                kind = "flag" if values.dtype == bool else "state"
                out["/".join(("infos", *keys))] = (
                    "info." + ".".join(keys),
                    Feature(kind, str(values.dtype), values.shape[1:]),
                )
        return out

    def __len__(self) -> int:
        return int(self.storage.total_episodes)

    def close(self) -> None:
        """Nothing stays open: Minari's storage opens its HDF5 file per read."""

    def read(self, skip: set[int]) -> Iterator[SourceEpisode]:
        wanted = [i for i in range(len(self)) if i not in skip]
        metas = self.storage.get_episode_metadata(wanted)
        for index, ep, meta in zip(wanted, self._episodes(wanted), metas, strict=True):
            yield self._episode(index, ep, meta)

    def _episodes(self, indices: list[int]) -> Iterator[dict[str, Any]]:
        """Minari's decoded episodes, its read failures reported against the dataset's files."""
        episodes = iter(self.storage.get_episodes(indices))
        for index in indices:
            try:
                yield next(episodes)
            except (ValueError, KeyError, OSError, TypeError) as exc:
                raise ConversionError(
                    self.data_path, f"episode {index}", f"Minari cannot read it ({exc})"
                ) from exc

    def _episode(self, index: int, ep: dict[str, Any], meta: dict[str, Any]) -> SourceEpisode:
        where = self.data_path
        length = len(ep["rewards"])
        steps: dict[str, Any] = {}
        final: dict[str, Any] = {}
        for key, (name, feat) in self.features.items():
            group, *keys = key.split("/")
            what = f"episode {index} {key}"
            try:
                values = _get(ep[group], tuple(keys))
            except (KeyError, TypeError, IndexError):
                raise ConversionError(where, what, "missing") from None
            text = feat.kind == "language"
            values = [str(v) for v in values] if text else np.asarray(values)
            if group == "observations":
                if len(values) != length + 1:
                    raise ConversionError(
                        where, what, f"{len(values)} observations for {length} steps (need T + 1)"
                    )
                final[name] = values[length] if text else values[length].reshape(feat.shape)
                values = values[:length]
            elif group == "infos" and len(values) == length + 1:
                values = values[1:]  # row 0 is the reset's info
            steps[name] = values if text else reshape_steps(values, feat, length, where, what)
        episode = SourceEpisode(
            index=index,
            steps=steps,
            final_obs=final,
            terminated=bool(length and ep["terminations"][-1]),
            truncated=bool(length and ep["truncations"][-1]),
        )
        episode.apply_extras(loads(meta.get("robocl"), where, f"episode {index} metadata"))
        return episode


def _info_leaves(
    infos: dict[str, Any], prefix: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    for key, value in infos.items():
        if isinstance(value, dict):
            yield from _info_leaves(value, (*prefix, str(key)))
        else:
            arr = np.asarray(value)
            if arr.dtype.kind in "biuf" and arr.ndim >= 1:  # strings and objects have no store feature
                yield (*prefix, str(key)), arr


def _data_path(src: str) -> Path:
    path = Path(src)
    for candidate in (path / "data", path):
        if (candidate / "metadata.json").is_file():
            return candidate
    if not path.exists():
        from minari.storage.datasets_root_dir import get_dataset_path

        by_id = Path(get_dataset_path(src)) / "data"
        if (by_id / "metadata.json").is_file():
            return by_id
    raise ConversionError(path, "metadata.json", "missing: not a Minari dataset (nor a local dataset id)")


def ingest_minari(
    src: str | Path,
    store_path: str | Path,
    *,
    fps: float | None = None,
    cast: Mapping[str, str] | None = None,
    success: str = "last",
    progress: bool = True,
) -> TrajectoryStore:
    """Ingest (or resume ingesting) a local Minari dataset: a path or a dataset id."""
    return ingest_episodes(
        store_path, MinariSource(src, fps=fps), cast=cast, success=success, progress=progress
    )


# ---------------------------------------------------------------------------------------------- export
def _spaces(store: TrajectoryStore) -> tuple[Any, Any, dict[str, str]]:
    """(observation space, action space, store feature -> minari key) for a store."""
    import gymnasium as gym

    def box(feat: Feature) -> Any:
        if feat.kind == "rgb":
            return gym.spaces.Box(0, 255, feat.shape, np.uint8)
        dt = np.dtype(feat.dtype)
        if dt.kind == "b":
            raise ConversionError(store.location, "features", "Minari Box spaces hold no bool observations")
        low, high = (np.iinfo(dt).min, np.iinfo(dt).max) if dt.kind in "iu" else (-np.inf, np.inf)
        return gym.spaces.Box(low, high, feat.shape, dt)

    obs = {n: f for n, f in store.features.items() if f.is_observation}
    if any(f.kind == "language" for f in obs.values()):
        raise ConversionError(store.location, "features", "language observations are not exported to Minari")
    if "action" not in store.features or "reward" not in store.features:
        raise ConversionError(store.location, "features", "a Minari export needs 'action' and 'reward'")
    mapping = {"action": "actions", "reward": "rewards"}
    if list(obs) == ["observation.state"]:
        obs_space: Any = box(obs["observation.state"])
        mapping["observation.state"] = "observations"
    else:
        tree: dict[str, Any] = {}
        for name, feat in obs.items():
            keys = name.removeprefix("observation.").split(".")
            node = tree
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = box(feat)
            mapping[name] = "/".join(("observations", *keys))
        obs_space = _dict_space(tree)
    for name, feat in store.features.items():
        if name not in mapping and not feat.is_observation:
            mapping[name] = "infos/" + name.removeprefix("info.")
    return (
        _recorded(store, "observation_space", obs_space),
        _recorded(store, "action_space", box(store.features["action"])),
        mapping,
    )


def _recorded(store: TrajectoryStore, key: str, ours: Any) -> Any:
    """The source's own space (exact bounds, Discrete actions) when it still describes these features."""
    from minari.serialization import deserialize_space

    text = store.meta.get("minari", {}).get(key)
    if text is None:
        return ours
    theirs = deserialize_space(text)

    def layout(space: Any) -> list[tuple[tuple[str, ...], tuple[int, ...], str]]:
        return [(p, f.shape, f.dtype) for p, f in _leaves(space, (), Path(store.location), key)]

    return theirs if layout(theirs) == layout(ours) else ours


def _dict_space(tree: dict[str, Any]) -> Any:
    import gymnasium as gym

    return gym.spaces.Dict({k: _dict_space(v) if isinstance(v, dict) else v for k, v in tree.items()})


def export_minari(
    store: TrajectoryStore | str | Path,
    dest: str | Path,
    *,
    dataset_id: str | None = None,
    data_format: str = "hdf5",
    episodes: Iterable[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a store as Minari dataset ``dataset_id`` under the datasets root ``dest``.

    The dataset lands in ``dest/<dataset_id>/data``; ``minari.load_dataset(dataset_id)`` opens it with
    ``MINARI_DATASETS_PATH=dest``, and ``minari.MinariDataset(path)`` opens it anywhere.
    """
    _minari()  # the extra's install hint before any work
    with reading(store) as store:
        obs_space, act_space, mapping = _spaces(store)
        dataset_id = (
            dataset_id
            or store.meta.get("minari", {}).get("dataset_id")
            or f"robocl/{Path(store.location).stem}-v0"
        )
        dest = Path(dest).resolve()  # Minari's storage joins relative paths onto themselves
        root = dest / dataset_id
        prepare_dest(root, overwrite)
        root.mkdir(parents=True)
        try:
            _write_dataset(
                store, root, dataset_id, obs_space, act_space, mapping, data_format, episodes, progress
            )
        except BaseException:
            shutil.rmtree(root)  # no half-written dataset that Minari would list
            raise
        for parent in list(Path(dataset_id).parents)[
            :-1
        ]:  # namespaces, as minari.create_namespace marks them
            marker = dest / parent / "namespace_metadata.json"
            if not marker.exists():
                marker.write_text("{}")
        return root


def _write_dataset(
    store: TrajectoryStore,
    root: Path,
    dataset_id: str,
    obs_space: Any,
    act_space: Any,
    mapping: dict[str, str],
    data_format: str,
    episodes: Iterable[int] | None,
    progress: bool,
) -> None:
    minari = _minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    from robocl.progress import progress_iter

    storage = MinariStorage.new(
        root / "data",
        observation_space=obs_space,
        action_space=act_space,
        data_format=data_format,
        jpeg_encoding=False,
    )
    refs = {**store.meta.get("d4rl", {}), **store.meta.get("minari", {})}
    recorded = store.meta.get("minari", {})
    carried = {
        k: set(v) if k.startswith("author") else v for k, v in recorded.items() if k in CARRIED_METADATA
    }
    storage.update_metadata(
        {
            "dataset_id": dataset_id,
            "minari_version": minari.__version__,
            "robocl": schema_record(store, mapping),
            **{k: refs[k] for k in ("ref_min_score", "ref_max_score") if k in refs},
            **carried,
        }
    )
    for j, index in enumerate(
        progress_iter(export_order(store, episodes), desc="export minari", enabled=progress)
    ):
        storage.update_episodes([_buffer(EpisodeBuffer, store, int(index), mapping)])
        storage.update_episode_metadata([{"robocl": dumps(episode_extras(store, int(index)))}], [j])


def _buffer(buffer_cls: Any, store: TrajectoryStore, index: int, mapping: dict[str, str]) -> Any:
    ep = store.episode(index)
    length = len(ep)
    obs: Any = None
    infos: dict[str, Any] = {}
    tree: dict[str, Any] = {}
    for name, key in mapping.items():
        group, *keys = key.split("/")
        values = ep.steps[name]
        if group == "observations":
            full = np.concatenate([values, ep.final_obs[name][None]])
            if not keys:
                obs = full
                continue
            node = tree
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = full
        elif group == "infos":
            # T + 1 rows like DataCollector's (row 0 stands for reset's info); scalars as (T + 1, 1) because
            # Minari's arrow writer cannot read back a zero-length shape.
            rows = np.concatenate([values[:1], values]).reshape(length + 1, -1)
            infos["/".join(keys)] = rows
    terminations = np.zeros(length, bool)
    truncations = np.zeros(length, bool)
    terminations[-1], truncations[-1] = ep.terminated, ep.truncated
    return buffer_cls(
        observations=obs if obs is not None else tree,
        actions=ep.steps["action"],
        rewards=ep.steps["reward"],
        terminations=terminations,
        truncations=truncations,
        infos=infos or None,
    )
