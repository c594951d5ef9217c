"""What an observation means to robocl: store feature names, their kinds, and the flat state vector.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from robocl.store.schema import Feature, FeatureKind

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
STATE_KEYS = ("observation.state", "observation.object")


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
    obs_space: gym.spaces.Dict, action_space: gym.Space, names: Mapping[str, tuple[str, ...]] | None = None
) -> dict[str, Feature]:
    """The store schema of rollouts of an env whose observations :class:`FeatureObs` renamed:
    its observation features, ``action``, ``reward`` and the per-step ``success`` flag."""
    if not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"robocl stores Box actions, got {type(action_space).__name__}")
    names = names or {}
    features = {
        name: Feature(
            kind="rgb" if name.startswith(IMAGE_PREFIX) else "state",
            dtype=str(space.dtype),
            shape=space.shape,
            names=names.get(name),
        )
        for name, space in obs_space.spaces.items()
    }
    features["action"] = Feature(kind="action", dtype="float32", shape=action_space.shape)
    features["reward"] = Feature(kind="reward", dtype="float32", shape=())
    features["success"] = Feature(kind="flag", dtype="bool", shape=())
    return features


def flatten_obs(obs: np.ndarray | Mapping[str, Any], keys: tuple[str, ...] = STATE_KEYS) -> np.ndarray:
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

    def features(self) -> dict[str, Feature]:
        """The store schema of this env's rollouts (:func:`features_from_space`)."""
        return features_from_space(self.observation_space, self.action_space, self.feature_names())

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
