"""What a policy reads from a store, chosen by the store's feature kinds, and checked before training starts.

Methods default to every ``state`` feature (``observation.state`` first, the proprioception of LeRobot
datasets and robocl's tasks alike) and, when asked for images, every camera (``rgb``/``depth``), so a
real-robot store works without naming simulator keys. :func:`check_training_data` is what every method
that trains from a store runs before its first update: features, cameras, and the rewards or success
flags its losses need, with the command that fixes each problem.
"""

from __future__ import annotations

from collections.abc import Sequence

from robocl.store import StoreView, TrajectoryStore
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
