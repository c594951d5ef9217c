"""Language-conditioned pick-and-place with the robocl Panda (the setting CO-RFT's benchmark runs in)."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from robocl_envs import rewards as R
from robocl_envs.panda import PROPRIO_DIM, PROPRIO_DOC, Q_READY, PandaEnv, Region, scene_xml

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.7, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.95, 0.8, 0.1),
}
# Graspable shapes: MJCF geom type, half sizes (m), and the angle after which a top-down grasp repeats (rad).
SHAPES: dict[str, tuple[str, tuple[float, ...], float]] = {
    "cube": ("box", (0.02, 0.02, 0.02), np.pi / 2),
    "cylinder": ("cylinder", (0.02, 0.025), 2 * np.pi),
    "bar": ("box", (0.035, 0.015, 0.02), np.pi),
}
PLATE_RADIUS = 0.07  # m
PLACE_TOL = 0.05  # object centre within 5 cm of the plate centre counts as on the plate
REST_Z_MAX = 0.045  # m; every shape rests with its centre at <= 2.5 cm, so this means "down on the table"
LIFT_Z = 0.05  # m; object centre above this means lifted off the table

# Layout of the flat state (proprio first, see PandaEnv): object block.
OBJ_POS, OBJ_QUAT, OBJ_VEL, ZONE_POS = (
    slice(PROPRIO_DIM + i, PROPRIO_DIM + j) for i, j in ((0, 3), (3, 7), (7, 10), (10, 13))
)
EE_POS = slice(14, 17)


class PickPlaceEnv(PandaEnv):
    """Pick the named object up and put it on the named plate.

    ## Description
    A Panda (published DH kinematics, primitive shapes) stands at the back of a table. One object (a red,
    green, blue or yellow cube, cylinder or bar, with a random heading) lies in the object region; two plates
    of different colours lie left and right of it. The instruction names the object and the target plate, e.g.
    "put the red cube on the blue plate"; the other plate is a distractor.

    ## Action space
    ``Box(-1, 1, (5,), float32)`` in the default ``action_mode="ee_delta"``: tool-centre-point delta
    (dx, dy, dz) scaled to +-5 cm per step, twist about the vertical tool axis scaled to +-0.5 rad per step
    (capped by the Panda's joint speed limits), and gripper (-1 open, +1 closed). ``"joint_delta"`` (+-0.1 rad
    per joint) and ``"joint_pos"`` (absolute targets, [-1, 1] over each joint range) use ``Box(-1, 1, (8,))``
    with the gripper last. The policy runs at 10 Hz (20 physics steps of 5 ms).

    ## Observation space
    ``Dict`` with ``"proprio"`` ``Box(24,)`` float32, ``"object"`` ``Box(13,)`` float32, ``"instruction"``
    ``Text(96)``, and with ``images=True`` also ``"image_front"`` / ``"image_wrist"`` ``Box(0, 255, (S, S, 3),
    uint8)`` with S = ``image_size``.
    {proprio}
    | index | object entry | unit |
    |---|---|---|
    | 0-2 | object centre position (world) | m |
    | 3-6 | object quaternion (w, x, y, z) | - |
    | 7-9 | object linear velocity | m/s |
    | 10-12 | target plate centre position | m |

    ``env.unwrapped.get_state()`` returns ``concat(proprio, object)`` (37,), the input of ``reward_fn``.

    ## Rewards
    Dense (default): ``1`` on success, else ``0.2 reach + lifted (0.2 + 0.4 place)`` with
    ``reach = 1 - tanh(10 |tcp - object|)``, ``lifted = [object z > 5 cm]`` and
    ``place = 1 - tanh(10 |object_xy - plate_xy|)``; so it stays below 0.8 until success. Sparse: the success
    indicator. Every term is in ``info``.

    ## Success, starting state, episode end
    Success: the object centre is within 5 cm (horizontally) of the target plate's centre and down on the
    table (centre below 4.5 cm). The arm starts at the Panda's ready pose plus N(0, 0.02 rad) joint noise with
    the gripper open. ``positions="seen"`` draws the object's position from a central box, ``"unseen"`` from a
    ring around it (disjoint; see ``REGIONS``). Episodes are truncated after 120 steps (12 s) by the
    registered time limit; they terminate on success only with ``terminate_on_success=True``.

    ## Arguments
    ``images``, ``image_size`` (96), ``reward_type`` ("dense" | "sparse"), ``positions`` ("seen" | "unseen"),
    ``action_mode``, ``terminate_on_success``, ``render_mode`` (None | "rgb_array").

    ## Version history
    v0: first version.
    """

    OBJECT_NAMES = (
        *(f"object.{axis}" for axis in "xyz"),
        *(f"object.q{part}" for part in "wxyz"),
        *(f"object.v{axis}" for axis in "xyz"),
        *(f"plate.{axis}" for axis in "xyz"),
    )
    NOMINAL_ROT = np.diag(
        [1.0, -1.0, -1.0]
    )  # tool pointing down, fingers closing along world y at zero twist
    REGIONS: ClassVar[dict[str, Region]] = {
        "seen": Region(center=(0.5, 0.0), outer=(0.06, 0.08)),
        "unseen": Region(center=(0.5, 0.0), outer=(0.14, 0.16), inner=(0.09, 0.11)),
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.region = self.REGIONS[self.positions]
        self._setup(scene_xml(self._task_xml()))
        self._obj = self.model.body("object").id
        self._obj_qpos = self.model.jnt_qposadr[self.model.joint("object").id]
        self._obj_dof = self.model.jnt_dofadr[self.model.joint("object").id]
        self._shape_geoms = {name: self.model.geom(f"object_{name}").id for name in SHAPES}
        self._plates = [self.model.body(f"plate{i}").id for i in range(2)]
        self._plate_geoms = [
            [self.model.geom(f"plate{i}_{part}").id for part in ("disc", "rim")] for i in range(2)
        ]
        self.shape, self.colour, self.target_colour = "cube", "red", "blue"

    @staticmethod
    def _task_xml() -> str:
        shapes = "\n".join(
            f'<geom name="object_{name}" type="{kind}" size="{" ".join(map(str, size))}" '
            'friction="1.2 0.01 0.001"/>'
            for name, (kind, size, _) in SHAPES.items()
        )
        plates = "\n".join(
            f'<body name="plate{i}" pos="0.45 {0.28 * (1 - 2 * i)} 0">'
            f'<geom name="plate{i}_disc" type="cylinder" size="{PLATE_RADIUS} 0.002" pos="0 0 0.001" '
            'contype="0" conaffinity="0"/>'
            f'<geom name="plate{i}_rim" type="cylinder" size="{PLATE_RADIUS + 0.008} 0.0015" '
            'pos="0 0 0.0005" rgba="0.9 0.9 0.9 1" contype="0" conaffinity="0"/></body>'
            for i in range(2)
        )
        # One free body carries every shape; reset shows one and hides the others (no collisions,
        # transparent), so a single compiled model serves all episodes. Mass/inertia are those of a 60 g, 4 cm
        # cube for all.
        return f"""
<body name="object" pos="0.5 0 0.02">
  <freejoint name="object"/>
  <inertial pos="0 0 0" mass="0.06" diaginertia="1.6e-5 1.6e-5 1.6e-5"/>
  {shapes}
</body>
{plates}"""

    # ------------------------------------------------------------------------------------------ episode
    def _reset_task(self) -> None:
        rng = self.np_random
        self._set_arm(Q_READY + rng.normal(0.0, 0.02, size=7))
        self.shape = list(SHAPES)[rng.integers(len(SHAPES))]
        colours = list(COLOURS)
        self.colour = colours[rng.integers(len(colours))]
        plate_colours = rng.choice(len(colours), size=2, replace=False)
        self.target_colour = colours[plate_colours[0]]
        for name, geom in self._shape_geoms.items():
            visible = name == self.shape
            self.model.geom_contype[geom] = 1 if visible else 0
            self.model.geom_conaffinity[geom] = 3 if visible else 0
            self.model.geom_rgba[geom] = (*COLOURS[self.colour], 1.0 if visible else 0.0)
        # Plate 0 is the target; it goes left or right at random, the distractor opposite.
        side = 1.0 if rng.random() < 0.5 else -1.0
        for i, plate in enumerate(self._plates):
            y = side * (1 - 2 * i) * rng.uniform(0.25, 0.30)
            self.model.body_pos[plate] = (rng.uniform(0.40, 0.55), y, 0.0)
            self.model.geom_rgba[self._plate_geoms[i][0]] = (*COLOURS[colours[plate_colours[i]]], 1.0)
        half_height = SHAPES[self.shape][1][-1]
        xy = self.region.sample(rng)
        yaw = rng.uniform(-np.pi / 2, np.pi / 2)
        self.data.qpos[self._obj_qpos : self._obj_qpos + 7] = (
            *xy,
            half_height,
            np.cos(yaw / 2),
            0.0,
            0.0,
            np.sin(yaw / 2),
        )
        self._instruction = f"put the {self.colour} {self.shape} on the {self.target_colour} plate"

    def _object_state(self) -> np.ndarray:
        q = self.data.qpos[self._obj_qpos : self._obj_qpos + 7]
        return np.concatenate(
            [q, self.data.qvel[self._obj_dof : self._obj_dof + 3], self.data.xpos[self._plates[0]]]
        )

    # ------------------------------------------------------------------------------------------- reward
    def success_fn(self, state: Any) -> Any:
        """Object down on the table within ``PLACE_TOL`` of the target plate centre (batched, pure)."""
        obj = state[..., OBJ_POS]
        near = R.norm(obj[..., :2] - state[..., ZONE_POS][..., :2]) < PLACE_TOL
        return near & (obj[..., 2] < REST_Z_MAX)

    def reward_terms(self, state: Any, action: Any, next_state: Any) -> dict[str, Any]:
        """Staged dense reward and its terms for a batch of transitions; only ``next_state`` matters here."""
        obj = next_state[..., OBJ_POS]
        reach = 1 - R.xp(obj).tanh(10 * R.norm(next_state[..., EE_POS] - obj))
        lifted = R.to_float(obj[..., 2] > LIFT_Z, obj)
        place = 1 - R.xp(obj).tanh(10 * R.norm(obj[..., :2] - next_state[..., ZONE_POS][..., :2]))
        success = R.to_float(self.success_fn(next_state), obj)
        reward = success + (1 - success) * (0.2 * reach + lifted * (0.2 + 0.4 * place))
        return {"reward": reward, "reach": reach, "lifted": lifted, "place": place}


def register() -> dict[str, list[str]]:
    """Register the pick-and-place task with gymnasium; returns its family."""
    # A second call (tests, reloads) keeps the first registration instead of overriding it.
    if "robocl/PickPlace-v0" not in gym.registry:
        gym.register(
            id="robocl/PickPlace-v0", entry_point="robocl_envs.pick_place:PickPlaceEnv", max_episode_steps=120
        )
    return {"pick_place": ["robocl/PickPlace-v0"]}


PickPlaceEnv.__doc__ = (PickPlaceEnv.__doc__ or "").replace("{proprio}", PROPRIO_DOC)
