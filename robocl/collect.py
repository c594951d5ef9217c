"""``robocl collect``: roll out a policy in simulation and stream the episodes into a trajectory store.

The rollouts come from :mod:`robocl.eval.rollout` (vectorised, episode ``i`` reset with ``seed + i``, the
real final observation kept); :func:`collect` streams them into a new store through its episode writer, in
index order, so the store is the same whatever ``num_envs`` is. :func:`add_parser`/:func:`run` are the
command line, with TOML recipes: a file, or the name of one robocl ships (``robocl/recipes``, links to the
repository's ``datasets/``, so there is one copy of each).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from robocl.eval.rollout import (
    POSITIONS,
    RolloutPlan,
    RolloutSettings,
    expand_env_ids,
    make_policies,
    run_rollouts,
    settings_for_policy,
)
from robocl.store import EpisodeWriter, TrajectoryStore


def collect(
    env_id: str | Sequence[str],
    n_episodes: int,
    out: str | Path,
    *,
    tags: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = True,
    **settings: Any,
) -> TrajectoryStore:
    """Collect ``n_episodes`` episodes of each env into a new store at ``out`` and return it read-only.

    ``env_id``: one id, several, or ``family:NAME``, all sharing one schema. ``settings``: the fields of
    :class:`RolloutSettings` (``policy="scripted"``, ``noise``, ``images``, ``positions``, ``num_envs``,
    ``seed``, ``hesitation``, ``detour``, ...). Each episode gets ``tags`` plus its positions value, source
    ``"sim:<env id>"`` and source_episode = its index (its reset seed is ``seed + index``).
    """
    s = RolloutSettings(**settings)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    env_ids = expand_env_ids(env_id)
    policies = make_policies(s.policy, s.num_envs)  # a checkpoint loads before its world is checked
    if policies:
        s = settings_for_policy(s, policies[0], settings)
    plan = RolloutPlan.build(env_ids, s)
    meta = {
        "env_id": env_ids[0] if len(env_ids) == 1 else env_ids,
        "robot": plan.robot,
        "collect": {"env": env_ids, "episodes": n_episodes, "tags": list(tags), **s.as_meta()},
    }
    store = TrajectoryStore.create(out, plan.features, fps=plan.fps, meta=meta, overwrite=overwrite)

    def writer(env: str, index: int, seed: int, task: str) -> EpisodeWriter:
        return store.episode_writer(
            task=task, source=f"sim:{env}", source_episode=index, tags=(*tags, s.positions)
        )

    try:
        for _ in run_rollouts(plan, n_episodes, s, policies, writer, progress):
            pass
    finally:
        store.close()
    return TrajectoryStore.open(out, mode="r")


# ---------------------------------------------------------------------------------------------- command line
RECIPES = Path(__file__).parent / "recipes"
# Options of the command line and of recipe files: the rollout settings and collect's own arguments.
_OPTIONS = frozenset(
    {"env", "episodes", "out", "tags", "overwrite", "progress"} | {f.name for f in fields(RolloutSettings)}
)
# Command-line/recipe names that differ from collect()'s parameter names.
_RENAMED = {"env": "env_id", "episodes": "n_episodes"}
# Value types a recipe may give (bool is checked apart: it is an int to isinstance).
_RECIPE_TYPES: dict[str, type | tuple[type, ...]] = {
    "env": (str, list), "episodes": int, "out": str, "policy": str, "noise": (int, float), "images": bool,
    "image_size": int, "positions": str, "num_envs": int, "seed": int, "hesitation": (int, float),
    "detour": (int, float), "tags": (str, list), "max_steps": int, "terminate_on_success": bool,
    "object_state": bool, "env_kwargs": dict, "overwrite": bool,
}  # fmt: skip


def json_object(text: str) -> dict[str, Any]:
    """argparse type of ``--env-kwargs``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add ``robocl collect``'s options to its parser (made with ``argument_default=SUPPRESS``, so unset
    flags stay out of the namespace and a recipe's values apply unless a flag overrides them)."""
    p.add_argument(
        "--recipe",
        help="recipe: a TOML file whose keys are this command's options, or the name of one robocl ships "
        f"({', '.join(recipe_names())}); flags override it",
    )
    p.add_argument("--env", help="env id, several comma-separated ids for one store, or family:NAME")
    p.add_argument("--episodes", type=int, help="episodes per env id")
    p.add_argument("--policy", help="scripted | random | path to a policy checkpoint (default: scripted)")
    p.add_argument("--noise", type=float, help="action noise std (default: 0)")
    p.add_argument("--out", help="store path or URL to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument(
        "--images", action=argparse.BooleanOptionalAction, help="record camera frames (default: no)"
    )
    p.add_argument("--image-size", type=int, help="camera frame height and width (default: 96)")
    p.add_argument("--positions", choices=POSITIONS, help="start positions of the arm tasks (default: seen)")
    p.add_argument("--num-envs", type=int, help="sub-environments run in parallel (default: 1)")
    p.add_argument("--seed", type=int, help="episode i starts from reset(seed=seed + i) (default: 0)")
    p.add_argument(
        "--hesitation", type=float, help="the expert's per-step probability of pausing (default: 0)"
    )
    p.add_argument("--detour", type=float, help="the expert's probability of a detour per move (default: 0)")
    p.add_argument("--tags", help="comma-separated episode tags, e.g. train,noisy")
    p.add_argument("--max-steps", type=int, help="episode length override")
    p.add_argument(
        "--env-kwargs",
        type=json_object,
        help="JSON object of further env constructor arguments, e.g. '{\"planar\": false}'",
    )
    p.add_argument(
        "--object-state",
        action=argparse.BooleanOptionalAction,
        help="record the arm tasks' privileged object state (default: yes)",
    )
    p.add_argument(
        "--terminate-on-success",
        action=argparse.BooleanOptionalAction,
        help="end episodes at success, for tasks that support it (default: yes)",
    )
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress output")
    p.set_defaults(func=run)


def recipe_names() -> list[str]:
    """The recipes shipped with robocl, by name (``--recipe pick_place_50_noisy``)."""
    return sorted(p.stem for p in RECIPES.glob("*.toml"))


def recipe_file(recipe: str | Path) -> Path:
    """A recipe's file: ``recipe`` itself if it is one, else the shipped recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = RECIPES / f"{path.name.removesuffix('.toml')}.toml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"recipe {str(recipe)!r}: no such file, and robocl ships {recipe_names()}")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Read a recipe (a file, or a shipped recipe's name): a flat TOML table whose keys are ``robocl
    collect`` options (underscored)."""
    path = recipe_file(name_or_path)
    with open(path, "rb") as f:
        recipe = tomllib.load(f)
    unknown = sorted(set(recipe) - set(_RECIPE_TYPES))
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s) {unknown}; allowed: {sorted(_RECIPE_TYPES)}")
    for key, value in recipe.items():
        expected = _RECIPE_TYPES[key]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise ValueError(f"{path}: {key} = {value!r} has the wrong type")
    return recipe


def _as_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def run(args: argparse.Namespace) -> int:
    """Run ``robocl collect`` from parsed arguments; returns the exit status."""
    from robocl.errors import user_errors

    # The namespace also carries the main parser's fields (the subcommand name, func); keep collect's own.
    given = {k: v for k, v in vars(args).items() if k in _OPTIONS or k == "recipe"}
    try:
        recipe = load_recipe(given.pop("recipe")) if "recipe" in given else {}
        settings = {**recipe, **given}
        missing = [name for name in ("env", "episodes", "out") if name not in settings]
        if missing:
            raise ValueError(
                f"missing {', '.join('--' + m for m in missing)} (on the command line or in --recipe)"
            )
        settings["env"] = _as_list(settings["env"])
        if "tags" in settings:
            settings["tags"] = _as_list(settings["tags"])
        kwargs = {_RENAMED.get(k, k): v for k, v in settings.items()}
        store = collect(**kwargs)
    except user_errors() as err:  # TOML syntax errors are ValueErrors
        print(f"robocl collect: error: {err}", file=sys.stderr)
        return 2
    rate = store.summary()["success_rate"]
    print(
        f"wrote {store.n_episodes} episodes ({store.n_steps} steps, success rate "
        f"{'unknown' if rate is None else f'{rate:.2f}'}) to {store.location}"
    )
    store.close()
    return 0
