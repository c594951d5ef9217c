"""Half-cheetah body-size family: HyperCRL's five locomotion tasks (see ``HalfCheetahBodyEnv``)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, TypeVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

STOCK_XML = os.path.join(os.path.dirname(gym.__file__), "envs", "mujoco", "assets", "half_cheetah.xml")

FAMILY = "cheetah"

# Task name -> bodies whose geom of the same name is scaled, in HyperCRL's task order.
TASKS: dict[str, tuple[str, ...]] = {
    "Standard": (),
    "BigTorso": ("torso",),
    "BigThigh": ("bthigh", "fthigh"),
    "BigShin": ("bshin", "fshin"),
    "BigFoot": ("bfoot", "ffoot"),
}

SIZE_SCALE = 1.25  # HyperCRL / gym-extensions body-size factor
EPISODE_STEPS = 1000  # HyperCRL's episode length for half-cheetah

if TYPE_CHECKING:
    import torch

# Rewards are written once for numpy and torch; torch is only imported by the callers that use it.
Array = TypeVar("Array", "np.ndarray", "torch.Tensor")


def _scale_attr(element: ET.Element, attr: str, scale: float) -> None:
    if attr in element.attrib:
        values = [float(v) * scale for v in element.attrib[attr].split()]
        element.attrib[attr] = " ".join(repr(v) for v in values)


def scaled_cheetah_xml(
    parts: tuple[str, ...], scale: float = SIZE_SCALE, xml_path: str = STOCK_XML
) -> tuple[str, float | None]:
    """Scale each body in ``parts`` of the stock MJCF by ``scale`` about its joint.

    The body's geom named like the body grows (size, fromto, pos); the body's other geoms and its child bodies
    and joints move outward by the same factor so they stay attached to the bigger part.

    Returns the MJCF text and the ``settotalmass`` value taken out of its compiler element: MuJoCo 4
    deprecates that attribute, so ``build_model`` applies it to the compiled model instead (bit-identical
    masses).
    """
    tree = ET.parse(xml_path)
    bodies = {body.get("name"): body for body in tree.iter("body")}
    unknown = sorted(set(parts) - set(bodies))
    if unknown:
        raise ValueError(f"unknown half-cheetah parts {unknown}; bodies are {sorted(bodies)}")
    for name in parts:
        for child in bodies[name]:
            if child.tag == "geom":
                _scale_attr(child, "pos", scale)
                if child.get("name") == name:
                    _scale_attr(child, "size", scale)
                    _scale_attr(child, "fromto", scale)
            elif child.tag in ("body", "joint"):
                _scale_attr(child, "pos", scale)
    total_mass = None
    for compiler in tree.iter("compiler"):
        if "settotalmass" in compiler.attrib:
            total_mass = float(compiler.attrib.pop("settotalmass"))
    return ET.tostring(tree.getroot(), encoding="unicode"), total_mass


def build_model(parts: tuple[str, ...], scale: float = SIZE_SCALE) -> mujoco.MjModel:
    """Compile the half-cheetah with ``parts`` scaled (see ``scaled_cheetah_xml``)."""
    xml, total_mass = scaled_cheetah_xml(parts, scale)
    model = mujoco.MjModel.from_xml_string(xml)
    if total_mass is not None:
        mujoco.mj_setTotalmass(model, total_mass)
        # Masses feed derived constants (subtree masses, inverse weights); recompute them.
        mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


class HalfCheetahBodyEnv(MujocoEnv, utils.EzPickle):
    r"""Half-cheetah whose body parts are scaled, as in HyperCRL's locomotion task sequence.

    Huang et al., "Continual Model-Based Reinforcement Learning with Hypernetworks" (ICRA 2021) train one
    dynamics model on a sequence of half-cheetahs whose parts grow one pair at a time (the gym-extensions
    body-size tasks). Each task is gymnasium's v5 half-cheetah model with the listed parts scaled by 1.25,
    generated at construction from the MJCF that ships with gymnasium.

    ## Tasks (HyperCRL's order; ``register()`` returns them under the family key ``"cheetah"``)

    | id                                 | scaled parts   |
    |------------------------------------|----------------|
    | ``robocl/HalfCheetah-Standard-v0`` | none           |
    | ``robocl/HalfCheetah-BigTorso-v0`` | torso          |
    | ``robocl/HalfCheetah-BigThigh-v0`` | bthigh, fthigh |
    | ``robocl/HalfCheetah-BigShin-v0``  | bshin, fshin   |
    | ``robocl/HalfCheetah-BigFoot-v0``  | bfoot, ffoot   |

    A part is scaled about its own joint: its capsule's radius, half-length (or ``fromto`` end points) and
    offset grow by the factor, and so do the positions of everything hung from it (child bodies, their joints,
    and other geoms of the same body such as the head on the torso), so the chain stays connected. The stock
    total mass of 14 kg is kept, so a bigger part takes mass from the others rather than adding it.

    ## Action space

    ``Box(-1, 1, (6,), float32)``: torques of bthigh, bshin, bfoot, fthigh, fshin, ffoot, multiplied by the
    actuator gears 120, 90, 60, 120, 60, 30 (N m).

    ## Observation space

    ``Box(-inf, inf, (18,), float32)`` in HyperCRL's layout:

    | index | meaning                                                              | unit  |
    |-------|----------------------------------------------------------------------|-------|
    | 0     | forward velocity: x displacement of the root over the last step / dt | m/s   |
    | 1     | rootz, height of the torso                                           | m     |
    | 2     | rooty, pitch of the torso                                            | rad   |
    | 3-8   | joint angles of bthigh, bshin, bfoot, fthigh, fshin, ffoot           | rad   |
    | 9-10  | rootx, rootz velocities                                              | m/s   |
    | 11    | rooty angular velocity                                               | rad/s |
    | 12-17 | joint angular velocities, same order as 3-8                          | rad/s |

    Index 0 is 0 right after a reset, because no step has been taken yet.

    ## Reward

    ``r = v_x - 0.1 * ||a||^2`` with ``v_x`` the observation's index 0 after the step, as in HyperCRL's
    planner. The same function is exposed batched as ``env.unwrapped.reward_fn(state, action, next_state)``
    (numpy arrays or torch tensors with any leading batch shape), and ``step`` computes its reward with it.
    ``info`` has both terms (``reward_forward``, ``reward_ctrl``), ``x_position``, ``x_velocity`` and
    ``success``, which is always False: locomotion has no success condition, but every robocl task reports
    the flag.

    ## Starting state

    The stock pose plus uniform noise in [-0.1, 0.1] on every qpos and Gaussian noise with std 0.1 on every
    qvel, drawn from ``self.np_random`` (seeded by ``reset(seed=...)``).

    ## Episode end

    Never terminates. Truncated after 1000 steps by the time limit set at registration. One step is 5 physics
    steps of 0.01 s (dt = 0.05 s).

    ## Arguments

    ``scaled_parts`` (bodies to scale), ``size_scale`` (1.25), ``ctrl_cost_weight`` (0.1),
    ``reset_noise_scale`` (0.1), ``frame_skip`` (5); anything else (``render_mode``, ``width``, ``height``,
    camera options) goes to gymnasium's ``MujocoEnv``.

    ## Version history

    * v0: initial release (gymnasium v5 model, HyperCRL observation and reward).
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]}  # noqa: RUF012
    robot = "half_cheetah"

    def __init__(
        self,
        scaled_parts: tuple[str, ...] = (),
        size_scale: float = SIZE_SCALE,
        ctrl_cost_weight: float = 0.1,
        reset_noise_scale: float = 0.1,
        frame_skip: int = 5,
        **kwargs: Any,
    ) -> None:
        utils.EzPickle.__init__(
            self, scaled_parts, size_scale, ctrl_cost_weight, reset_noise_scale, frame_skip, **kwargs
        )
        self.scaled_parts = tuple(scaled_parts)
        self._size_scale = size_scale
        self._ctrl_cost_weight = ctrl_cost_weight
        self._reset_noise_scale = reset_noise_scale
        kwargs.setdefault("default_camera_config", {"distance": 4.0})
        # MujocoEnv insists on an existing file path; the stock file passes that check and
        # `_initialize_simulation` below compiles the scaled model instead.
        MujocoEnv.__init__(self, STOCK_XML, frame_skip, observation_space=None, **kwargs)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.dt)}
        obs_size = 1 + (self.model.nq - 1) + self.model.nv  # v_x, qpos without rootx, qvel
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float32)
        self._forward_velocity = 0.0

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = build_model(self.scaled_parts, self._size_scale)
        # Same offscreen-buffer rule as MujocoEnv: grow to the requested render size, never shrink.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def reward_fn(self, state: Array, action: Array, next_state: Array) -> Array:
        """Batched reward ``next_state[..., 0] - w * ||action||^2`` (numpy arrays or torch tensors).

        ``state`` is unused by this task; it is kept so every robocl reward has the planner's signature.
        """
        return next_state[..., 0] - self._ctrl_cost_weight * (action**2).sum(-1)

    def get_state(self) -> np.ndarray:
        """The current 18-d observation, the state HyperCRL's dynamics model and planner work in."""
        return self._get_obs()

    def _get_obs(self) -> np.ndarray:
        obs = np.concatenate([[self._forward_velocity], self.data.qpos[1:], self.data.qvel])
        return obs.astype(np.float32)  # float64 physics stops here: policies and stores are float32

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs = self._get_obs()
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        self._forward_velocity = (self.data.qpos[0] - x_before) / self.dt
        next_obs = self._get_obs()
        action = np.asarray(action, dtype=np.float32)
        reward = float(self.reward_fn(obs, action, next_obs))
        info = {
            "reward_forward": float(next_obs[0]),
            "reward_ctrl": -self._ctrl_cost_weight * float((action**2).sum()),
            "x_position": float(self.data.qpos[0]),
            "x_velocity": float(next_obs[0]),
            "success": False,
        }
        if self.render_mode == "human":
            self.render()
        return next_obs, reward, False, False, info

    def reset_model(self) -> np.ndarray:
        noise = self._reset_noise_scale
        # Copies: MujocoEnv keeps init_qpos/init_qvel as the reference pose for every reset.
        qpos = self.init_qpos.copy() + self.np_random.uniform(-noise, noise, size=self.model.nq)
        qvel = self.init_qvel.copy() + noise * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        self._forward_velocity = 0.0
        return self._get_obs()

    def _get_reset_info(self) -> dict[str, Any]:
        return {"x_position": float(self.data.qpos[0]), "success": False}


def task_id(name: str) -> str:
    """Gymnasium id of the task called ``name`` in ``TASKS``."""
    return f"robocl/HalfCheetah-{name}-v0"


def register() -> dict[str, list[str]]:
    """Register the five tasks with gymnasium; return ``{"cheetah": [ids in HyperCRL's task order]}``."""
    ids = []
    for name, parts in TASKS.items():
        env_id = task_id(name)
        # A second call (tests, reloads) keeps the first registration instead of overriding it.
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="robocl_envs.cheetah:HalfCheetahBodyEnv",
                kwargs={"scaled_parts": parts},
                max_episode_steps=EPISODE_STEPS,
            )
        ids.append(env_id)
    return {FAMILY: ids}
