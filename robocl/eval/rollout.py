"""The rollout engine shared by ``robocl collect`` and ``robocl eval``.

Episodes run on ``num_envs`` sub-environments of a gymnasium vector env (``SyncVectorEnv`` for one,
``AsyncVectorEnv`` worker processes for more) with autoreset disabled: each finished sub-env is reset
explicitly with the next episode's seed, so the real final observation is recorded and episode ``i`` always
starts from ``reset(seed=seed + i)`` with an actor seeded from that same number. Scripted experts and the
random policy run inside the workers, beside the env they act in (an expert may read the simulator), and
hand their next action back through ``info``. Finished episodes come out in index order, so the results are
the same whatever ``num_envs`` is. Checkpoint or object policies get each observation batch keyed by store
feature names plus ``"task"`` (the instruction), one instance per sub-env.

Observations map to store features as :mod:`robocl.features` says; any other dict key ``K`` becomes
``observation.K`` (the robot-env contract, :mod:`robocl.robot`: ``state`` and ``images.<cam>`` are
``observation.state`` and ``observation.images.<cam>``). Envs with a flat ``Box`` observation whose
constructor takes ``render_mode``, ``width`` and ``height`` are rendered into ``observation.images.front``
when images are requested; constructor arguments reach an env only when its constructor takes them. An
episode's success is what the env reports (``info["success"]``), unknown (None) where it reports none; an
env that says up front that it never does (``reports_success = False``, as ``RobotEnv`` allows) also gets
no per-step ``success`` flag in the store.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import robocl_envs  # importing it registers the robocl/ task ids with gymnasium
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

import robocl
from robocl.features import IMAGE_PREFIX, INSTRUCTION_KEY, FeatureObs, world_mismatches
from robocl.progress import Progress
from robocl.store import Feature

LOCAL_POLICIES = ("scripted", "random")
POSITIONS = ("seen", "unseen")
ACTION_INFO_KEY = "policy_action"
# Constructor arguments collect sets from its own options.
RESERVED_ENV_KWARGS = frozenset(
    {"images", "image_size", "positions", "terminate_on_success", "render_mode", "width", "height"}
)
# Stream id mixed into actor seeds so an expert's noise is independent of the env's own reset noise
# even though both derive from the episode's reset seed.
ACTOR_SEED_STREAM = 0xAC7


def actor_seed(reset_seed: int) -> int:
    """Seed of the policy/expert for the episode that starts from ``reset(seed=reset_seed)``."""
    return int(np.random.SeedSequence((reset_seed, ACTOR_SEED_STREAM)).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- env wrappers
class _LocalActor(gym.Wrapper):
    """Runs a scripted expert or the random policy next to its env and puts its next action in ``info``."""

    def __init__(self, env: gym.Env, policy: str, noise: float, hesitation: float, detour: float) -> None:
        super().__init__(env)
        self._policy = policy
        self._expert_kwargs = {"noise": noise, "hesitation": hesitation, "detour": detour}
        self._act: Callable[[Any], np.ndarray] | None = None

    def _new_actor(self, seed: int | None) -> Callable[[Any], np.ndarray]:
        if self._policy == "random":
            rng = np.random.default_rng(seed)
            space = self.env.action_space
            return lambda obs: rng.uniform(space.low, space.high).astype(space.dtype)
        from robocl_envs.experts import make_expert

        expert = make_expert(self.env, seed=seed, **self._expert_kwargs)
        expert.reset()
        return expert

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._act = self._new_actor(None if seed is None else actor_seed(seed))
        return obs, {**info, ACTION_INFO_KEY: np.asarray(self._act(obs), dtype=np.float32)}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if not (terminated or truncated):
            assert self._act is not None, "reset() creates the actor"
            info = {**info, ACTION_INFO_KEY: np.asarray(self._act(obs), dtype=np.float32)}
        return obs, reward, terminated, truncated, info


def _accepts(env_id: str, name: str) -> bool:
    """Whether the env constructor takes a parameter called ``name`` (a bare ``**kwargs`` does not count)."""
    entry = gym.spec(_registered_id(env_id)).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    # Task classes forward **kwargs to their base (PickPlaceEnv -> PandaEnv), so look along the MRO.
    inits = (
        [c.__init__ for c in creator.__mro__ if "__init__" in vars(c)]
        if isinstance(creator, type)
        else [creator]
    )
    return any(name in inspect.signature(init).parameters for init in inits)


def _make_env(plan: _EnvPlan, actor: tuple | None) -> gym.Env:
    """Module-level factory so vector-env workers can rebuild the env under any start method."""
    env = gym.make(plan.env_id, **plan.env_kwargs)
    if actor is not None:
        env = _LocalActor(env, *actor)
    return FeatureObs(env, plan.render_front, plan.skip)


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class RolloutSettings:
    """How episodes are rolled out; the keyword arguments of :func:`rollout_episodes` and :func:`collect`."""

    policy: Any = "scripted"  # "scripted" | "random" | checkpoint path | object with reset()/predict(obs)
    noise: float = 0.0  # expert action noise std, or Gaussian noise added to a checkpoint policy's actions
    hesitation: float = 0.0  # the scripted expert's per-step probability of starting a short pause
    detour: float = 0.0  # the scripted expert's probability of a random waypoint on a free-space move
    images: bool = False  # record camera frames
    image_size: int = 96  # frame height and width in pixels (the arm tasks' default)
    positions: str = "seen"  # "seen" | "unseen" start positions of the arm tasks
    num_envs: int = 1  # sub-environments side by side (worker processes when > 1); data does not depend on it
    seed: int = 0  # episode i of each env starts from reset(seed=seed + i); its actor is seeded from that
    max_steps: int | None = None  # override of the registered episode length
    terminate_on_success: bool = True  # end episodes at success, for tasks that have the option
    object_state: bool = True  # record the arm tasks' privileged object state as observation.object
    device: str = "cpu"  # where a checkpoint policy runs
    force: bool = False  # run a checkpoint policy on an env that does not match the world it recorded
    # Further constructor arguments, each given to the envs whose constructor takes it (e.g.
    # {"planar": False} gives the pushers the 5-d action of the other arm tasks).
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.noise < 0 or not (0 <= self.hesitation <= 1 and 0 <= self.detour <= 1):
            raise ValueError(
                f"need noise >= 0 and hesitation, detour in [0, 1]; got {self.noise}, {self.hesitation}, "
                f"{self.detour}"
            )
        name = self.policy if isinstance(self.policy, str) else None
        if name == "random" and self.noise > 0:
            raise ValueError("noise has no meaning for the random policy")
        if name != "scripted" and (self.hesitation > 0 or self.detour > 0):
            raise ValueError(
                f"hesitation and detour belong to the scripted expert, not to policy {self.policy!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        reserved = sorted(set(self.env_kwargs) & RESERVED_ENV_KWARGS)
        if reserved:
            raise ValueError(f"env_kwargs {reserved} are set by collect's own options; use those")

    @property
    def local_actor(self) -> tuple[str, float, float, float] | None:
        """Arguments of the actor that runs beside each env, or None for a checkpoint/object policy."""
        if isinstance(self.policy, str) and self.policy in LOCAL_POLICIES:
            return (self.policy, self.noise, self.hesitation, self.detour)
        return None

    def as_meta(self) -> dict[str, Any]:
        """JSON-ready record of the settings for the store's metadata."""
        meta = {f.name: getattr(self, f.name) for f in fields(self)}
        if not isinstance(self.policy, str):
            meta["policy"] = type(self.policy).__name__
        meta["env_kwargs"] = dict(self.env_kwargs)
        return meta


def _registered_id(env_id: str) -> str:
    """The registry id of ``module:EnvId-v0`` (gymnasium's syntax for ids a module registers on import)."""
    return env_id.rsplit(":", 1)[-1]


def expand_env_ids(env_id: str | Sequence[str]) -> list[str]:
    """Env ids in order; an entry ``family:NAME`` stands for that family's ids in ``robocl_envs.FAMILIES``.

    ``module:EnvId-v0`` imports ``module`` first (gymnasium's convention), so an env a user registers for a
    real robot is evaluated the same way as the simulated tasks; worker processes import it again.
    """
    expanded = []
    for item in [env_id] if isinstance(env_id, str) else env_id:
        if item.startswith("family:"):
            family = item.removeprefix("family:")
            if family not in robocl_envs.FAMILIES:
                raise ValueError(f"unknown task family {family!r}; known: {sorted(robocl_envs.FAMILIES)}")
            expanded += robocl_envs.FAMILIES[family]
        else:
            if ":" in item:
                module = item.rsplit(":", 1)[0]
                try:
                    importlib.import_module(module)
                except ImportError as err:
                    raise ValueError(f"env {item!r}: cannot import module {module!r}: {err}") from err
            expanded.append(item)
    if not expanded:
        raise ValueError("no env id given")
    unknown = [i for i in expanded if _registered_id(i) not in gym.registry]
    if unknown:
        raise ValueError(f"unknown env id(s) {unknown}")
    return expanded


@dataclass(frozen=True)
class _EnvPlan:
    """How to build one env id's sub-envs: constructor arguments and the observation conversion."""

    env_id: str
    env_kwargs: dict[str, Any]
    render_front: bool  # render frames for an env without cameras of its own
    skip: frozenset[str]  # dict-observation keys not recorded
    positions: str | None  # the start-position set; None for envs that have none

    @classmethod
    def build(cls, env_id: str, s: RolloutSettings) -> _EnvPlan:
        kwargs = {key: value for key, value in s.env_kwargs.items() if _accepts(env_id, key)}
        if s.max_steps is not None:
            kwargs["max_episode_steps"] = s.max_steps
        if _accepts(env_id, "terminate_on_success"):
            kwargs["terminate_on_success"] = s.terminate_on_success
        render_front = False
        if _accepts(env_id, "images"):
            kwargs.update(images=s.images, image_size=s.image_size)
        elif s.images and all(_accepts(env_id, k) for k in ("render_mode", "width", "height")):
            render_front = True
            kwargs.update(render_mode="rgb_array", width=s.image_size, height=s.image_size)
        positions = s.positions if env_has_positions(env_id) else None
        if positions is not None:
            kwargs["positions"] = positions
        elif s.positions != "seen":
            raise ValueError(
                f"{env_id} has no held-out start positions, so positions={s.positions!r} is undefined"
            )
        skip = frozenset() if s.object_state else frozenset({"object"})
        return cls(env_id, kwargs, render_front, skip, positions)


def env_has_positions(env_id: str) -> bool:
    """Whether the env has seen/unseen start-position sets (robocl's arm tasks); imports ``module:Id``."""
    return _accepts(expand_env_ids(env_id)[0], "positions")


@dataclass(frozen=True)
class RolloutPlan:
    """Everything checked before the first episode: per-env plans and the schema they share."""

    envs: list[_EnvPlan]
    features: dict[str, Feature]
    fps: float
    robot: str
    action_space: gym.spaces.Box

    @classmethod
    def build(cls, env_ids: list[str], s: RolloutSettings) -> RolloutPlan:
        envs = [_EnvPlan.build(i, s) for i in env_ids]
        unused = sorted(k for k in s.env_kwargs if not any(_accepts(i, k) for i in env_ids))
        if unused:
            raise ValueError(f"env_kwargs {unused} are taken by none of {env_ids}")
        if s.local_actor is not None and s.policy == "scripted":
            try:
                import robocl_envs.experts  # noqa: F401
            except ImportError as err:
                raise ValueError(
                    "policy 'scripted' needs robocl_envs.experts, which failed to import"
                ) from err
        schema = None
        for plan in envs:
            # Reset once with the actor too, so a task without an expert fails before anything is written.
            probe = _make_env(plan, s.local_actor)
            try:
                probe.reset(seed=s.seed)
                features = probe.features()
                fps = float(probe.metadata.get("render_fps") or 1.0 / probe.unwrapped.dt)
                robot = getattr(probe.unwrapped, "robot", None) or type(probe.unwrapped).__name__
                action_space = probe.action_space
            finally:
                probe.close()
            if schema is None:
                schema = (features, fps, robot, action_space)
            elif (features, fps) != schema[:2]:
                raise ValueError(
                    f"{plan.env_id} records {features} at {fps} fps but {envs[0].env_id} records {schema[0]} "
                    f"at {schema[1]} fps, so they cannot share one store (object_state=False drops the "
                    "task-specific object state)"
                )
        assert schema is not None, "expand_env_ids returns at least one id"
        plan = cls(envs, *schema)
        if isinstance(s.policy, str | Path) and s.local_actor is None and not s.force:
            plan.check_policy(str(s.policy))
        return plan

    def check_policy(self, checkpoint: str) -> None:
        """Before the first step: the env must match what the checkpoint's policy learnt from (its recorded
        world); one line names every mismatch."""
        # Imported here: torch is not for the env workers that import this module.
        from robocl.checkpoint import recorded_world, resolve_checkpoint

        # Nothing to check for checkpoints from before robocl recorded it, or for paths that another
        # robocl.load_policy (a wrapper's) took without a robocl checkpoint there.
        world = recorded_world(checkpoint) if resolve_checkpoint(checkpoint) is not None else {}
        if not world:
            return
        for env in self.envs:
            problems = world_mismatches(
                world,
                env_id=env.env_id,
                robot=self.robot,
                fps=self.fps,
                features=self.features,
                action_low=self.action_space.low,
                action_high=self.action_space.high,
            )
            if problems:
                raise ValueError(
                    f"policy {checkpoint} does not fit {env.env_id}: {'; '.join(problems)} (--force runs it "
                    "anyway)"
                )


def _reads_cameras(policy: Any) -> bool:
    """Whether a policy's inputs (its ``obs_keys``, as robocl's policies list them) include a camera."""
    return any(key.startswith(IMAGE_PREFIX) for key in getattr(policy, "obs_keys", ()))


def settings_for_policy(s: RolloutSettings, policy: Any, given: Mapping[str, Any]) -> RolloutSettings:
    """``s`` with what a camera policy needs: frames rendered, recorded or not, at the size it learnt from
    (the square frames of its ``obs_shapes``, as robocl's policies list them). ``given``: the settings the
    caller named, so that an ``image_size`` asked for and a different one learnt is an error, not a guess."""
    if not _reads_cameras(policy):
        return s
    shapes = getattr(policy, "obs_shapes", {})
    frames = [shape for key, shape in shapes.items() if key.startswith(IMAGE_PREFIX)]
    sizes = {shape[0] for shape in frames if shape[0] == shape[1]}
    if len(sizes) != 1:  # a policy that names no frame size (or several) gets the default, or what was asked
        return replace(s, images=True)
    size = sizes.pop()
    if "image_size" in given and given["image_size"] != size:
        raise ValueError(f"image_size={given['image_size']}, but the policy reads {size}x{size} frames")
    return replace(s, images=True, image_size=size)


def make_policies(policy: Any, n: int, device: str = "cpu") -> list[Any] | None:
    """``None`` for the policies that run beside the env, else one policy instance per sub-env.

    One instance per sub-env keeps per-episode state (action queues, ``reset()``) apart and makes every call
    a batch of one, so the actions do not depend on how many sub-envs run. A checkpoint is loaded once, and
    the instances share its networks (evaluation only reads them).
    """
    if isinstance(policy, str) and policy in LOCAL_POLICIES:
        return None
    if isinstance(policy, str | Path):
        load_policy = getattr(robocl, "load_policy", None)
        if load_policy is None:
            raise ValueError(f"policy {policy!r}: loading policies from checkpoints needs robocl.load_policy")
        policy = load_policy(str(policy), device)
    shared = {id(m): m for m in _modules(policy)}
    return [policy] + [copy.deepcopy(policy, dict(shared)) for _ in range(n - 1)]


def _modules(obj: Any, depth: int = 2) -> list[Any]:
    """The torch modules a policy holds, in its attributes and theirs (a chooser's critics)."""
    import torch

    found = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.nn.Module):
            found.append(value)
        elif depth > 1 and hasattr(value, "__dict__") and not isinstance(value, type):
            found += _modules(value, depth - 1)
    return found


def _vector_env(plan: _EnvPlan, actor: tuple | None, num_envs: int) -> gym.vector.VectorEnv:
    factory = functools.partial(_make_env, plan, actor)
    if num_envs == 1:
        return SyncVectorEnv([factory], autoreset_mode=AutoresetMode.DISABLED)
    # Spawned, not forked, workers: a fork of a process that has already rendered (an earlier collect in
    # the same session) inherits its GL state, and rendering in the child then hangs.
    return AsyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.DISABLED, context="spawn")


# ---------------------------------------------------------------------------------------------- rollouts
@dataclass
class RolloutEpisode:
    """One finished episode: steps keyed by store feature names (observation before the action)."""

    env_id: str
    index: int  # episode number within its env's run
    seed: int  # its reset seed
    task: str  # the instruction, or the env id for tasks without one
    steps: dict[str, np.ndarray]  # (T, ...) per feature
    final_obs: dict[str, np.ndarray]  # the observation after the last action
    success: bool | None  # info["success"] after the last action; None: the env does not report it
    terminated: bool
    truncated: bool
    fps: float
    positions: str | None  # the start-position set; None for envs that have none
    features: dict[str, Feature]  # the store schema of ``steps`` (with the names of dimensions)


class _Recorder(Protocol):
    def add_step(self, step: Mapping[str, Any]) -> None: ...

    def commit(
        self, *, final_obs: Mapping[str, Any], success: bool | None, terminated: bool, truncated: bool
    ) -> Any: ...

    def discard(self) -> None: ...


# (env id, episode index, reset seed, task) -> a recorder for that episode
RecorderFactory = Callable[[str, int, int, str], _Recorder]


class _EpisodeBuffer:
    """A recorder that keeps the episode in memory and returns it as a :class:`RolloutEpisode`."""

    def __init__(self, env_id: str, index: int, seed: int, task: str, *, plan: RolloutPlan) -> None:
        self.head = (env_id, index, seed, task)
        self.plan = plan
        self.positions = next(env.positions for env in plan.envs if env.env_id == env_id)
        self.steps: list[Mapping[str, Any]] = []

    def add_step(self, step: Mapping[str, Any]) -> None:
        self.steps.append(step)

    def commit(
        self, *, final_obs: Mapping[str, Any], success: bool | None, terminated: bool, truncated: bool
    ) -> RolloutEpisode:
        stacked = {key: np.stack([step[key] for step in self.steps]) for key in self.steps[0]}
        return RolloutEpisode(*self.head, steps=stacked, final_obs=dict(final_obs), success=success,
                              terminated=terminated, truncated=truncated, fps=self.plan.fps,
                              positions=self.positions, features=self.plan.features)  # fmt: skip

    def discard(self) -> None:
        self.steps = []


@dataclass
class _Running:
    index: int  # episode number within this env's run; its reset seed is seed + index
    task: str  # the instruction, given to language-conditioned policies as obs["task"]
    recorder: _Recorder
    rng: np.random.Generator  # exploration noise of a checkpoint policy
    reported_success: bool = False  # whether info["success"] came with any of its steps


class _Collector:
    """Drives one vector env through ``n_episodes`` episodes of one env id, finishing them in index order."""

    def __init__(
        self,
        vec: gym.vector.VectorEnv,
        plan: _EnvPlan,
        policies: list[Any] | None,
        settings: RolloutSettings,
        recorder: RecorderFactory,
        record_success: bool,
    ) -> None:
        self.vec, self.plan, self.policies, self.recorder = vec, plan, policies, recorder
        self.record_success = record_success  # the store has a per-step success flag
        self.noise, self.seed = settings.noise, settings.seed
        self.n_envs = vec.num_envs
        self.space = vec.single_action_space
        self.slots: list[_Running | None] = [None] * self.n_envs
        self.finished: dict[int, tuple[_Recorder, dict[str, Any]]] = {}
        self.next_commit = 0
        self.next_episode = 0
        # Idle sub-envs of a checkpoint policy keep stepping with this in-bounds filler action.
        self.actions = np.clip(
            np.zeros((self.n_envs, *self.space.shape), np.float32), self.space.low, self.space.high
        )

    def run(self, n_episodes: int) -> Iterator[Any]:
        """Yield what each episode's recorder returns on commit, in episode order."""
        self.n_episodes = n_episodes
        obs = self._reset(np.ones(self.n_envs, dtype=bool), None)
        while any(slot is not None for slot in self.slots):
            next_obs, rewards, terminated, truncated, infos = self.vec.step(self.actions)
            success = infos.get("success", np.zeros(self.n_envs, dtype=bool))
            reported = infos.get("_success", np.zeros(self.n_envs, dtype=bool))
            done = terminated | truncated
            for k, slot in enumerate(self.slots):
                if slot is None:
                    continue
                slot.reported_success |= bool(reported[k])
                step = {key: v[k] for key, v in obs.items()}
                step.update(action=self.actions[k].copy(), reward=rewards[k])
                if self.record_success:
                    step["success"] = success[k]
                slot.recorder.add_step(step)
                if done[k]:
                    result = dict(
                        final_obs={key: v[k] for key, v in next_obs.items()},
                        success=bool(success[k]) if slot.reported_success else None,
                        terminated=bool(terminated[k]),
                        truncated=bool(truncated[k]),
                    )
                    self.finished[slot.index] = (slot.recorder, result)
                    self.slots[k] = None
            yield from self._commit_in_order()
            if self.next_episode == self.n_episodes and all(slot is None for slot in self.slots):
                break
            self._next_actions(next_obs, infos, ~done)
            obs = self._reset(done, next_obs) if done.any() else next_obs

    def _reset(self, mask: np.ndarray, obs: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """Reset the sub-envs in ``mask``: each gets the next episode, or idles once all are handed out."""
        seeds: list[int | None] = [None] * self.n_envs
        for k in np.flatnonzero(mask):
            if self.next_episode < self.n_episodes:
                seeds[k] = self.seed + self.next_episode
                self.next_episode += 1
        # An idle sub-env is still reset (unseeded): stepping a finished env is not allowed by every task.
        reset_obs, infos = self.vec.reset(seed=seeds, options={"reset_mask": mask})
        if obs is not None:
            reset_obs = {
                key: np.where(mask.reshape(-1, *[1] * (v.ndim - 1)), v, obs[key])
                for key, v in reset_obs.items()
            }
        for k, reset_seed in enumerate(seeds):
            if reset_seed is None:
                continue
            index = reset_seed - self.seed
            task = infos[INSTRUCTION_KEY][k] or self.plan.env_id
            recorder = self.recorder(self.plan.env_id, index, reset_seed, task)
            self.slots[k] = _Running(index, task, recorder, np.random.default_rng(actor_seed(reset_seed)))
            if self.policies is not None:
                self.policies[k].reset()
        self._next_actions(reset_obs, infos, mask)
        return reset_obs

    def _next_actions(self, obs: dict[str, np.ndarray], infos: dict[str, Any], rows: np.ndarray) -> None:
        """Set the actions of the sub-envs in ``rows`` for the coming step."""
        if not rows.any():  # every sub-env just finished; infos then has no actions at all
            return
        if self.policies is None:
            self.actions[rows] = infos[ACTION_INFO_KEY][rows]
            return
        for k in np.flatnonzero(rows):
            slot = self.slots[k]
            if slot is None:
                continue
            batch = {key: v[k : k + 1] for key, v in obs.items()}
            action = np.asarray(self.policies[k].predict({**batch, "task": [slot.task]}))[0]
            if self.noise > 0:
                action = action + self.noise * slot.rng.standard_normal(action.shape)
            self.actions[k] = np.clip(action, self.space.low, self.space.high)

    def _commit_in_order(self) -> Iterator[Any]:
        while self.next_commit in self.finished:
            recorder, result = self.finished.pop(self.next_commit)
            self.next_commit += 1
            yield recorder.commit(**result)

    def discard(self) -> None:
        for slot in self.slots:
            if slot is not None:
                slot.recorder.discard()
        for recorder, _ in self.finished.values():
            recorder.discard()


class WorkerDiedError(RuntimeError):
    """A vector-env worker process ended without answering."""


def run_rollouts(
    plan: RolloutPlan,
    n_episodes: int,
    settings: RolloutSettings,
    policies: list[Any] | None,
    recorder: RecorderFactory,
    progress: bool,
) -> Iterator[Any]:
    with Progress(n_episodes * len(plan.envs), unit="ep", enabled=progress) as bar:
        for env_plan in plan.envs:
            bar.set_description(env_plan.env_id)
            vec = _vector_env(env_plan, settings.local_actor, settings.num_envs)
            collector = _Collector(vec, env_plan, policies, settings, recorder, "success" in plan.features)
            try:
                for result in collector.run(n_episodes):
                    bar.update(1)
                    yield result
            except (EOFError, ConnectionError) as exc:  # what a pipe to a dead worker process raises
                # close() would wait on the dead worker's pipe and raise again: end the others directly.
                for process in getattr(vec, "processes", []):
                    process.terminate()
                    process.join()
                vec.closed = True
                raise WorkerDiedError(
                    f"{env_plan.env_id}: an env worker process died mid-episode ({type(exc).__name__}: the "
                    "env crashed in native code or was killed, e.g. out of memory); episodes finished "
                    "before it were kept"
                ) from exc
            finally:
                collector.discard()
                if not vec.closed:
                    vec.close()


def rollout_episodes(
    env_id: str | Sequence[str], n_episodes: int, *, progress: bool = True, **settings: Any
) -> Iterator[RolloutEpisode]:
    """Roll out ``n_episodes`` episodes of each env and yield them in order, without storing them.

    ``env_id``: one id, several, or ``family:NAME``; ``settings``: the fields of :class:`RolloutSettings`.
    """
    s = RolloutSettings(**settings)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    policies = make_policies(s.policy, s.num_envs, s.device)
    if policies:
        s = settings_for_policy(s, policies[0], settings)
    plan = RolloutPlan.build(expand_env_ids(env_id), s)
    buffers = functools.partial(_EpisodeBuffer, plan=plan)
    yield from run_rollouts(plan, n_episodes, s, policies, buffers, progress)
