"""What an observation means to robocl: store feature names and kinds, the flat state vector, what a policy
reads from a store, and the world a checkpoint records.

One module owns the mapping that collection, evaluation and every method use, so a stored episode, an
online run's replay and a policy's inputs all agree:

- a flat ``Box`` observation (the half-cheetahs, gymnasium ids such as ``Humanoid-v5``) is
  ``observation.state``; a ``Dict`` observation's key ``k`` is ``observation.<k>``, except the arm tasks'
  ``proprio`` / ``object`` / ``image_front`` / ``image_wrist``, which are ``observation.state`` /
  ``observation.object`` / ``observation.images.front`` / ``observation.images.wrist``;
- the ``instruction`` key is text: it becomes the episode's task, not a feature;
- ``observation.images.*`` are ``rgb`` frames; ``action``, ``reward`` and boolean arrays are what they say;
  every other array is ``state``;
- the flat state vector of a dict observation (what Symphony's actor and HyperCRL's planner read, and what
  the arm tasks' ``get_state()`` returns) is ``observation.state`` then ``observation.object``.

Methods that train from a store default to every ``state`` feature (``observation.state`` first, the
proprioception of LeRobot datasets and robocl's tasks alike) and, when asked for images, every camera
(``rgb``/``depth``), so a real-robot store works without naming simulator keys.
:func:`check_training_data` is what every method that trains from a store runs before its first update:
features, cameras, and the rewards or success flags its losses need, with the command that fixes each
problem. :func:`data_world` is what a checkpoint records of that data, and :func:`world_mismatches` is how
``robocl eval`` checks an env against it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from robocl.store import CameraCalibration, Feature, StoreView, TrajectoryStore
from robocl.store.integrity import describe_episodes
from robocl.store.schema import FeatureKind

# Arm-task observation keys -> store feature names.
OBS_FEATURES = {
    "proprio": "observation.state",
    "object": "observation.object",
    "image_front": "observation.images.front",
    "image_wrist": "observation.images.wrist",
}
INSTRUCTION_KEY = "instruction"
IMAGE_PREFIX = "observation.images."
#: The features a flat state vector is made of, in order.
FLAT_STATE_KEYS = ("observation.state", "observation.object")


def feature_name(key: str) -> str:
    """Store feature name of a dict-observation key."""
    return OBS_FEATURES.get(key, f"observation.{key}")


def feature_kind(name: str, array: np.ndarray) -> FeatureKind:
    """The kind of a stored array, from its feature name and dtype."""
    if name.startswith(IMAGE_PREFIX):
        return "rgb"
    if name in ("action", "reward"):
        return name  # type: ignore[return-value]
    return "flag" if np.asarray(array).dtype == bool else "state"


def features_from_space(
    obs_space: gym.spaces.Dict,
    action_space: gym.Space,
    names: Mapping[str, tuple[str, ...]] | None = None,
    *,
    cameras: Mapping[str, Mapping[str, Any]] | None = None,
    success: bool = True,
) -> dict[str, Feature]:
    """The store schema of rollouts of an env whose observations :class:`FeatureObs` renamed:
    its observation features (``cameras``: feature name -> calibration of a fixed camera), ``action``,
    ``reward`` and (``success``) the per-step ``success`` flag."""
    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"robocl stores Box actions, got {type(action_space).__name__}")
    names, cameras = names or {}, cameras or {}
    features = {
        name: Feature(
            kind="rgb" if name.startswith(IMAGE_PREFIX) else "state",
            dtype=str(space.dtype),
            shape=space.shape,
            names=names.get(name),
            camera=cameras.get(name),  # Feature converts and checks the calibration
        )
        for name, space in obs_space.spaces.items()
    }
    features["action"] = Feature(kind="action", dtype="float32", shape=action_space.shape)
    features["reward"] = Feature(kind="reward", dtype="float32", shape=())
    if success:
        features["success"] = Feature(kind="flag", dtype="bool", shape=())
    return features


def flatten_obs(obs: np.ndarray | Mapping[str, Any], keys: tuple[str, ...] = FLAT_STATE_KEYS) -> np.ndarray:
    """An observation keyed by store feature names -> its flat state vector (a flat array passes through);
    a leading batch axis is kept."""
    if isinstance(obs, Mapping):
        return np.concatenate([np.asarray(obs[k], dtype=np.float32) for k in keys if k in obs], axis=-1)
    return np.asarray(obs, dtype=np.float32)


class FeatureObs(gym.Wrapper):
    """Renames observations to store feature names; moves the instruction to the reset ``info``.

    ``skip`` names dict-observation keys left out (e.g. ``"object"``, the privileged state);
    ``render_front`` renders envs without cameras of their own into ``observation.images.front``.
    """

    def __init__(self, env: gym.Env, render_front: bool = False, skip: frozenset[str] = frozenset()) -> None:
        super().__init__(env)
        self._render_front = render_front
        space = env.observation_space
        subspaces: dict[str, gym.Space] = {}
        self._sources: dict[str, str] = {}  # feature name -> key of the env's dict observation
        if isinstance(space, gym.spaces.Box):
            # float64 states (gymnasium's MuJoCo envs) become float32 here, the dtype policies train in.
            low, high = space.low.astype(np.float32), space.high.astype(np.float32)
            subspaces["observation.state"] = gym.spaces.Box(low, high, space.shape, np.float32)
            if render_front:
                frame_shape = (env.unwrapped.height, env.unwrapped.width, 3)
                subspaces[f"{IMAGE_PREFIX}front"] = gym.spaces.Box(0, 255, frame_shape, np.uint8)
        elif isinstance(space, gym.spaces.Dict):
            for key, sub in space.spaces.items():
                if key == INSTRUCTION_KEY or key in skip:
                    continue
                if not isinstance(sub, gym.spaces.Box):
                    raise ValueError(
                        f"observation key {key!r} is a {type(sub).__name__}; robocl stores Box keys"
                    )
                name = feature_name(key)
                subspaces[name], self._sources[name] = sub, key
        else:
            raise ValueError(f"robocl needs a Box or Dict observation space, got {type(space).__name__}")
        self.observation_space = gym.spaces.Dict(subspaces)

    def feature_names(self) -> dict[str, tuple[str, ...]]:
        """Per-dimension names of the stored features, where the env names its observation keys'
        dimensions (``env.unwrapped.observation_names``, as robocl's arm tasks do)."""
        names = getattr(self.env.unwrapped, "observation_names", {})
        return {feat: tuple(names[key]) for feat, key in self._sources.items() if key in names}

    def camera_calibrations(self) -> dict[str, dict[str, Any]]:
        """Calibrations of the stored cameras that are fixed, where the env gives them
        (``env.unwrapped.camera_calibrations``, as robocl's arm tasks do; see :class:`CameraCalibration`)."""
        calibrations = getattr(self.env.unwrapped, "camera_calibrations", {})
        return {feat: dict(calibrations[key]) for feat, key in self._sources.items() if key in calibrations}

    def features(self) -> dict[str, Feature]:
        """The store schema of this env's rollouts (:func:`features_from_space`); no per-step success flag
        for an env that says it never reports success (``reports_success = False``, as RobotEnv allows)."""
        success = getattr(self.env.unwrapped, "reports_success", True)
        return features_from_space(
            self.observation_space,
            self.action_space,
            self.feature_names(),
            cameras=self.camera_calibrations(),
            success=success,
        )

    def _convert(self, obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, Mapping):
            return {name: obs[key] for name, key in self._sources.items()}
        out = {"observation.state": np.asarray(obs, dtype=np.float32)}
        if self._render_front:
            out[f"{IMAGE_PREFIX}front"] = self.env.render()
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        task = obs[INSTRUCTION_KEY] if isinstance(obs, Mapping) and INSTRUCTION_KEY in obs else None
        return self._convert(obs), {**info, INSTRUCTION_KEY: task}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, info


# ---------------------------------------------------------------------------------- what a policy reads
PROPRIOCEPTION = "observation.state"


def state_keys(store: TrajectoryStore) -> tuple[str, ...]:
    """Every low-dimensional observation (kind ``state``), ``observation.state`` first."""
    keys = [k for k, f in store.features.items() if f.kind == "state"]
    return tuple(sorted(keys, key=lambda k: k != PROPRIOCEPTION))


def camera_keys(store: TrajectoryStore) -> tuple[str, ...]:
    """Every camera feature (kind ``rgb`` or ``depth``), in store order."""
    return tuple(k for k, f in store.features.items() if f.is_image)


# A policy's input statistics leave out an episode that alone makes some dimension's std this many times
# what the other episodes give it (the benchmarks' demos: 12-392x for the outliers below, at most 1.6x else).
OUTLIER_STD_RATIO = 2.0


def normalization_stats(
    store: TrajectoryStore, keys: Sequence[str], max_ratio: float = OUTLIER_STD_RATIO
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Mean, std, min and max of the state features ``keys`` to normalise a policy's inputs with, and the
    boolean mask of the store's steps they come from.

    The store keeps exact statistics over every step, and one episode unlike the others can set them alone:
    in the CO-RFT benchmark's 60 pick-and-place demos an object knocked off the table rolled 4 m across the
    floor (before the floor collided it fell to z = -312 m) and made the object's x std 0.52 m instead of
    0.04, squeezing every other episode into a sliver of the normalised range; in its push demos one
    failure turned the wrist joint 0.67 rad where the others stay within 0.06 (its std 6x). So an episode
    is left out of the statistics when, without it, some dimension's std is more than ``max_ratio`` times
    smaller. A store without such episodes gets its own statistics unchanged; with them, a warning names
    the episodes and the features. Training still samples every episode; only the scale comes from the rest.
    """
    lengths = np.asarray(store.episodes["length"], dtype=np.int64)
    if len(lengths) < 3:  # leaving one of two out says nothing about which one is unlike the rest
        return {k: dict(store.stats[k]) for k in keys}, np.ones(store.n_steps, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n, n_e = float(lengths.sum()), lengths[:, None].astype(np.float64)
    keep, reasons = np.ones(len(lengths), dtype=bool), []
    for key in keys:
        values = store.steps(key).reshape(store.n_steps, -1).astype(np.float64)
        total, total_sq = values.sum(0), (values**2).sum(0)
        ep_sum, ep_sq = np.add.reduceat(values, starts), np.add.reduceat(values**2, starts)  # (episodes, D)
        var_all = total_sq / n - (total / n) ** 2
        rest = np.maximum(n - n_e, 1.0)
        var_without = (total_sq - ep_sq) / rest - ((total - ep_sum) / rest) ** 2  # leave one episode out
        # Dimensions the other episodes hold constant are left unscaled by the Normalizer either way.
        sets_scale = (var_without > 1e-12) & (var_all > max_ratio**2 * var_without)
        outliers = np.flatnonzero(sets_scale.any(1))
        if len(outliers):
            reasons.append(f"{key} ({describe_episodes(outliers.tolist())})")
            keep[outliers] = False
    if keep.all() or not keep.any():
        return {k: dict(store.stats[k]) for k in keys}, np.ones(store.n_steps, dtype=bool)
    steps = np.repeat(keep, lengths)
    warnings.warn(
        f"input statistics leave out {describe_episodes(np.flatnonzero(~keep).tolist())} of {len(keep)}: "
        f"alone, each makes some dimension's std over {max_ratio:g}x the others' in " + ", ".join(reasons),
        stacklevel=2,
    )
    stats = {}
    for key in keys:
        kept = store.steps(key)[steps].astype(np.float64)
        stats[key] = {"mean": kept.mean(0), "std": kept.std(0), "min": kept.min(0), "max": kept.max(0)}
    return stats, steps


def check_training_data(
    data: TrajectoryStore | StoreView,
    *,
    method: str,
    state: Sequence[str],
    images: Sequence[str] = (),
    reward: str | None = None,
) -> None:
    """Raise one ValueError naming everything ``method`` cannot get from ``data``, each with its fix.

    ``state``/``images``: the features the policy reads; ``reward``: how rewards are made ("store" = the
    stored ``reward`` feature, anything else = from success), None for methods that need no rewards.
    """
    view = data if isinstance(data, StoreView) else data.view()
    store = view.store
    feats = store.features
    problems = []
    if view.n_episodes == 0:
        problems.append("no episodes to train on (do the --tags match any episode? robocl info lists tags)")
    for key in [*state, *images]:
        feat = feats.get(key)
        if feat is None:
            problems.append(
                f"feature {key!r} is not in the store (its state features: {list(state_keys(store))}, "
                f"cameras: {list(camera_keys(store))})"
            )
        elif key in images and not feat.is_image:
            problems.append(f"feature {key!r} is {feat.kind}, not a camera")
        elif key not in images and (feat.is_image or feat.kind == "language"):
            problems.append(f"feature {key!r} is {feat.kind}, not a low-dimensional observation")
    if "action" not in feats:
        problems.append(f"the store has no 'action' feature (features: {sorted(feats)})")
    if reward == "store" and "reward" not in feats:
        problems.append("reward='store' needs a 'reward' feature (or derive rewards from success)")
    elif reward not in (None, "store") and view.n_episodes:
        problems += _success_problems(view)
    if problems:
        raise ValueError(f"{method} cannot train on {store.location}: " + "; ".join(problems))


def _success_problems(view: StoreView) -> list[str]:
    """Rewards come from success: the per-step flags where the store has them, else each episode's."""
    store, episodes = view.store, view.episode_indices
    table = store.episodes
    if "success" in store.features:
        flags = store.steps("success")
        starts, lengths = table["start"][episodes], table["length"][episodes]
        if any(flags[s : s + n].any() for s, n in zip(starts, lengths, strict=True)):
            return []
        return ["no step of the training episodes has its 'success' flag set, so every reward is the same"]
    fix = f"mark them with robocl edit {store.location} --episodes 0-9,12 --success true|false"
    unknown = episodes[~store.success_known[episodes]]
    if unknown.size:
        return [
            f"its rewards come from episode success, which {describe_episodes(unknown.tolist())} do not "
            f"record ({fix}, or train by imitation only with --rl-updates 0)"
        ]
    if not table["success"][episodes].any():
        return [f"no training episode is marked successful, so every reward is the same ({fix})"]
    return []


# ---------------------------------------------------------------------------------------------- the world
def data_world(store: TrajectoryStore, obs_keys: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint records of the data it learnt from (config.json's ``spec.world``): the env id and
    robot the store names, its rate, and name, kind, dtype, shape and per-dimension names of every feature
    the policy reads and of the action, with the action range the data covers."""

    stats = store.stats.get("action", {})
    action = store.features["action"].to_dict()
    if "min" in stats:
        action["range"] = [np.asarray(stats["min"]).tolist(), np.asarray(stats["max"]).tolist()]
    return {
        "env_id": store.meta.get("env_id"),
        "robot": store.meta.get("robot"),
        "fps": store.fps,
        "observation": {key: store.features[key].to_dict() for key in obs_keys},
        "action": action,
    }


# How far two calibrations of a camera may differ and still be the same camera: a re-calibration of a
# fixed camera moves it by millimetres and a fraction of a degree; the frames then differ by under a pixel.
CAMERA_TOLERANCE = {"cm": 1.0, "deg": 1.0, "px": 1.0}


def camera_difference(a: CameraCalibration, b: CameraCalibration) -> str | None:
    """How far ``b`` is from ``a`` ('2.5 cm, 3.1 deg and 0.0 px away') when beyond ``CAMERA_TOLERANCE``,
    else None."""
    cm = 100 * float(np.linalg.norm(np.subtract(a.position, b.position)))
    relative = np.asarray(a.rotation).T @ np.asarray(b.rotation)
    deg = float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0))))
    px = float(np.abs(np.subtract(a.intrinsics, b.intrinsics)).max())
    limits = CAMERA_TOLERANCE
    if cm <= limits["cm"] and deg <= limits["deg"] and px <= limits["px"]:
        return None
    return f"{cm:.1f} cm, {deg:.1f} deg and {px:.1f} px away"


def world_mismatches(
    world: Mapping[str, Any],
    *,
    env_id: str,
    robot: str,
    fps: float,
    features: Mapping[str, Feature],
    action_low: np.ndarray,
    action_high: np.ndarray,
) -> list[str]:
    """Every way an env differs from the ``world`` a checkpoint recorded, as 'what: expected X, got Y'.

    ``features``: the env's observations and action as store features (what its rollouts record). A camera
    both calibrate must be where the policy's data had it (:func:`camera_difference`)."""
    out = []
    trained_on = world.get("env_id")
    if trained_on is not None:
        ids = [trained_on] if isinstance(trained_on, str) else list(trained_on)
        if env_id.rsplit(":", 1)[-1] not in [i.rsplit(":", 1)[-1] for i in ids]:
            out.append(f"env: expected {' or '.join(ids)}, got {env_id}")
    if world.get("robot") and robot and world["robot"] != robot:
        out.append(f"robot: expected {world['robot']}, got {robot}")
    if not np.isclose(world["fps"], fps):
        out.append(f"fps: expected {world['fps']:g}, got {fps:g}")
    for key, want in [*world["observation"].items(), ("action", world["action"])]:
        got = features.get(key)
        expected = f"{tuple(want['shape'])} {want['dtype']}"
        if got is None:
            out.append(f"{key}: expected {expected}, got no such feature (the env has {sorted(features)})")
            continue
        if tuple(want["shape"]) != got.shape or np.dtype(want["dtype"]).kind != np.dtype(got.dtype).kind:
            out.append(f"{key}: expected {expected}, got {got.shape} {got.dtype}")
        elif want["names"] and got.names and tuple(want["names"]) != got.names:
            out.append(f"{key} names: expected {list(want['names'])}, got {list(got.names)}")
        elif want.get("camera") and got.camera is not None:
            moved = camera_difference(CameraCalibration.from_dict(want["camera"]), got.camera)
            if moved is not None:
                out.append(f"{key} camera: expected the calibration the policy learnt with, got one {moved}")
    lo_hi = world["action"].get("range")
    if (
        lo_hi is not None
        and features.get("action") is not None
        and features["action"].shape == tuple(world["action"]["shape"])
    ):
        lo, hi = (np.asarray(v, np.float64).reshape(-1) for v in lo_hi)
        low, high = (
            np.asarray(action_low, np.float64).reshape(-1),
            np.asarray(action_high, np.float64).reshape(-1),
        )
        # A few percent of the env's range of slack: teleoperated data brushes the limits.
        slack = 0.05 * np.where(np.isfinite(high - low), high - low, 0.0)
        if (lo < low - slack).any() or (hi > high + slack).any():
            out.append(
                f"action range: expected the data's {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()} "
                f"within the env's, got {np.round(low, 3).tolist()}..{np.round(high, 3).tolist()}"
            )
    return out
