"""What a policy reads from a store, chosen by the store's feature kinds, checked before training starts, and
recorded with its checkpoint so that ``robocl eval`` can check an env against it.

Methods default to every ``state`` feature (``observation.state`` first, the proprioception of LeRobot
datasets and robocl's tasks alike) and, when asked for images, every camera (``rgb``/``depth``), so a
real-robot store works without naming simulator keys. :func:`check_training_data` is what every method
that trains from a store runs before its first update: features, cameras, and the rewards or success
flags its losses need, with the command that fixes each problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robocl.store import Feature, StoreView, TrajectoryStore
from robocl.store.integrity import describe_episodes

PROPRIOCEPTION = "observation.state"


def state_keys(store: TrajectoryStore) -> tuple[str, ...]:
    """Every low-dimensional observation (kind ``state``), ``observation.state`` first."""
    keys = [k for k, f in store.features.items() if f.kind == "state"]
    return tuple(sorted(keys, key=lambda k: k != PROPRIOCEPTION))


def camera_keys(store: TrajectoryStore) -> tuple[str, ...]:
    """Every camera feature (kind ``rgb`` or ``depth``), in store order."""
    return tuple(k for k, f in store.features.items() if f.is_image)


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

    ``features``: the env's observations and action as store features (what its rollouts record)."""
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
