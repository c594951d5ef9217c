"""``robocl collect``: episodes, seeds, vectorisation, recipes and the command line."""

import os

# MuJoCo picks its OpenGL backend when first imported; EGL renders without a display.
os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import robocl_envs

import robocl
from robocl.cli import build_parser
from robocl.collect import collect, load_recipe, run
from robocl.eval.rollout import actor_seed, expand_env_ids, rollout_episodes
from robocl.store import TrajectoryStore

CHEETAH = "robocl/HalfCheetah-BigThigh-v0"


def _collect_cheetah(path, **kwargs):
    settings = dict(policy="random", max_steps=20, tags=("train",), progress=False) | kwargs
    return collect(CHEETAH, settings.pop("n_episodes", 3), path, **settings)


def _assert_same_episodes(a: TrajectoryStore, b: TrajectoryStore) -> None:
    assert a.n_episodes == b.n_episodes
    for i in range(a.n_episodes):
        x, y = a.episode(i), b.episode(i)
        for key in a.features:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"episode {i} {key}")
        for key in x.final_obs:
            np.testing.assert_array_equal(
                x.final_obs[key], y.final_obs[key], err_msg=f"episode {i} final {key}"
            )


def _parse(argv):
    return build_parser(argv).parse_args(argv)


def test_cheetah_random_episodes_are_recorded(tmp_path):
    store = _collect_cheetah(tmp_path / "s.zarr", seed=7)
    assert store.n_episodes == 3 and store.n_steps == 60
    table = store.episodes
    np.testing.assert_array_equal(table["length"], [20, 20, 20])
    np.testing.assert_array_equal(table["truncated"], [True, True, True])
    np.testing.assert_array_equal(table["terminated"], [False, False, False])
    np.testing.assert_array_equal(table["success"], [False, False, False])
    np.testing.assert_array_equal(table["source_episode"], [0, 1, 2])
    assert table["has_final_obs"].all()
    assert store.tag_names == ["train", "seen"]
    assert store.fps == 20.0
    assert store.meta["env_id"] == CHEETAH and store.meta["robot"] == "half_cheetah"
    assert store.meta["collect"]["seed"] == 7 and store.meta["collect"]["policy"] == "random"
    assert set(store.features) == {"observation.state", "action", "reward", "success"}

    ep = store.episode(1)
    assert ep.task == CHEETAH and ep.source == f"sim:{CHEETAH}" and ep.tags == ("train", "seen")
    assert ep["observation.state"].shape == (20, 18) and ep["action"].shape == (20, 6)
    # Episode i starts from reset(seed=seed + i).
    first_obs, _ = gym.make(CHEETAH).reset(seed=8)
    np.testing.assert_array_equal(ep["observation.state"][0], first_obs)
    # The stored final observation is the real one after the last action, not the next episode's reset:
    # the cheetah's reward is v_x of the next observation minus 0.1 |a|^2.
    next_states = np.concatenate([ep["observation.state"][1:], ep.final_obs["observation.state"][None]])
    expected = next_states[:, 0] - 0.1 * (ep["action"] ** 2).sum(-1)
    np.testing.assert_allclose(ep["reward"], expected, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(ep.final_obs["observation.state"], store.episode(2)["observation.state"][0])
    # Random actions come from the episode's own actor seed.
    rng = np.random.default_rng(actor_seed(8))
    np.testing.assert_array_equal(ep["action"][0], rng.uniform(-1, 1, size=6).astype(np.float32))


def test_same_seed_gives_identical_store_and_other_seed_differs(tmp_path):
    a = _collect_cheetah(tmp_path / "a.zarr", seed=3)
    b = _collect_cheetah(tmp_path / "b.zarr", seed=3)
    _assert_same_episodes(a, b)
    c = _collect_cheetah(tmp_path / "c.zarr", seed=4)
    assert not np.array_equal(a.episode(0)["observation.state"], c.episode(0)["observation.state"])
    # Episode 0 of seed 4 is episode 1 of seed 3: the seed is per episode, not per run.
    np.testing.assert_array_equal(c.episode(0)["action"], a.episode(1)["action"])


def test_result_does_not_depend_on_num_envs(tmp_path):
    # 3 episodes on 2 workers: episodes finish out of order and one worker idles at the end.
    one = _collect_cheetah(tmp_path / "one.zarr", seed=11, max_steps=12)
    two = _collect_cheetah(tmp_path / "two.zarr", seed=11, max_steps=12, num_envs=2)
    _assert_same_episodes(one, two)
    np.testing.assert_array_equal(two.episodes["source_episode"], [0, 1, 2])


def test_rendered_frames_for_envs_without_cameras(tmp_path):
    store = _collect_cheetah(tmp_path / "img.zarr", n_episodes=1, max_steps=4, images=True, image_size=32)
    ep = store.episode(0)
    assert store.features["observation.images.front"].kind == "rgb"
    assert ep["observation.images.front"].shape == (4, 32, 32, 3)
    assert ep.final_obs["observation.images.front"].dtype == np.uint8
    assert ep["observation.images.front"].max() > 0  # an actual render, not an empty buffer


def test_rollout_episodes_yields_what_collect_stores(tmp_path):
    store = _collect_cheetah(tmp_path / "s.zarr", n_episodes=2, max_steps=5, seed=9)
    episodes = list(rollout_episodes(CHEETAH, 2, policy="random", max_steps=5, seed=9, progress=False))
    assert [(ep.index, ep.seed, ep.env_id, ep.fps) for ep in episodes] == [
        (0, 9, CHEETAH, 20.0),
        (1, 10, CHEETAH, 20.0),
    ]
    for ep in episodes:
        stored = store.episode(ep.index)
        assert ep.truncated and not ep.terminated and not ep.success and ep.task == CHEETAH
        for key in store.features:
            np.testing.assert_array_equal(ep.steps[key], stored[key])
        np.testing.assert_array_equal(
            ep.final_obs["observation.state"], stored.final_obs["observation.state"]
        )


def test_gymnasium_flat_box_env_is_state_only(tmp_path):
    store = collect("Pusher-v5", 2, tmp_path / "pusher.zarr", policy="random", max_steps=3, progress=False)
    assert store.features["observation.state"].shape == (23,)
    assert store.features["observation.state"].dtype == "float32"  # gymnasium's float64 converted
    assert store.features["action"].shape == (7,)
    np.testing.assert_array_equal(store.steps("success"), np.zeros(6, dtype=bool))  # no success in info
    assert store.tasks == ["Pusher-v5"]


def test_checkpoint_policy_goes_through_load_policy(tmp_path, monkeypatch):
    monkeypatch.delattr(robocl, "load_policy", raising=False)
    with pytest.raises(ValueError, match=r"loading policies from checkpoints needs robocl\.load_policy"):
        _collect_cheetah(tmp_path / "none.zarr", policy=str(tmp_path / "ckpt"))
    assert not (tmp_path / "none.zarr").exists()

    class ZeroPolicy:
        n_resets = 0

        def reset(self):
            ZeroPolicy.n_resets += 1

        def predict(self, obs):
            assert obs["observation.state"].shape == (1, 18)  # batched, keyed by store feature names
            return np.zeros((1, 6), dtype=np.float32)

    loaded = []
    monkeypatch.setattr(
        robocl, "load_policy", lambda path, device: loaded.append(path) or ZeroPolicy(), raising=False
    )
    store = _collect_cheetah(tmp_path / "p.zarr", policy="ckpt-dir", n_episodes=2, max_steps=5)
    assert loaded == ["ckpt-dir"] and ZeroPolicy.n_resets == 2  # one instance, reset at each episode start
    np.testing.assert_array_equal(store.steps("action"), np.zeros((10, 6), dtype=np.float32))


def test_invalid_settings_are_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match="no held-out start positions"):
        _collect_cheetah(tmp_path / "x.zarr", positions="unseen")
    with pytest.raises(ValueError, match="noise has no meaning"):
        _collect_cheetah(tmp_path / "x.zarr", noise=0.1)
    with pytest.raises(ValueError, match="unknown env id"):
        collect("robocl/NoSuchTask-v0", 1, tmp_path / "x.zarr", policy="random")
    with pytest.raises(ValueError, match="scripted expert"):  # found by the probe, before the store exists
        collect(CHEETAH, 1, tmp_path / "x.zarr", policy="scripted", progress=False)
    with pytest.raises(ValueError, match=r"env_kwargs \['planar'\] are taken by none of"):
        _collect_cheetah(tmp_path / "x.zarr", env_kwargs={"planar": False})
    assert not (tmp_path / "x.zarr").exists()


def test_cli_recipe_with_command_line_override(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'env = "{CHEETAH}"\nepisodes = 4\npolicy = "random"\nmax_steps = 6\ntags = ["train", "demo"]\n'
    )
    out = tmp_path / "cli.zarr"
    args = _parse(["collect", "--recipe", str(recipe), "--out", str(out), "--episodes", "2", "--quiet"])
    assert args.func is run
    assert run(args) == 0
    assert "wrote 2 episodes (12 steps" in capsys.readouterr().out
    with TrajectoryStore.open(out) as store:
        assert store.n_episodes == 2 and store.tag_names == ["train", "demo", "seen"]
        assert store.meta["collect"]["max_steps"] == 6

    # The store exists now: without --overwrite the command fails cleanly.
    assert run(_parse(["collect", "--recipe", str(recipe), "--out", str(out), "--quiet"])) == 2
    assert "already exists" in capsys.readouterr().err

    recipe.write_text('env = "x"\nepisode = 3\n')
    assert run(_parse(["collect", "--recipe", str(recipe), "--out", str(out)])) == 2
    assert "unknown recipe key(s) ['episode']" in capsys.readouterr().err
    recipe.write_text('env = "x"\nepisodes = "3"\n')
    assert run(_parse(["collect", "--recipe", str(recipe), "--out", str(out)])) == 2
    assert "episodes = '3' has the wrong type" in capsys.readouterr().err


def _without_expert(env_ids: list[str]) -> list[str]:
    from robocl_envs.experts import EXPERTS

    return [i for i in env_ids if not isinstance(gym.make(i).unwrapped, tuple(EXPERTS))]


RECIPES = sorted((Path(__file__).parents[1] / "datasets").glob("*.toml"))


def test_standard_recipes_exist():
    names = {path.stem for path in RECIPES}
    assert {"pick_place_50_noisy", "pick_place_30_noisy", "push_density_20_noisy", "generalist"} <= names


def test_recipes_are_shipped_by_name_from_one_source(tmp_path, monkeypatch, capsys):
    from robocl.collect import RECIPES as SHIPPED
    from robocl.collect import recipe_names

    assert recipe_names() == [path.stem for path in RECIPES]
    for path in RECIPES:  # the package's recipes are the repository's files, not copies of them
        assert (SHIPPED / path.name).resolve() == path.resolve()
    monkeypatch.chdir(tmp_path)  # a folder without datasets/
    assert load_recipe("cheetah_random_5") == load_recipe(RECIPES[0].parent / "cheetah_random_5.toml")
    argv = ["collect", "--recipe", "no_such_recipe", "--out", "x.zarr"]
    assert run(_parse(argv)) == 2
    assert (
        "recipe 'no_such_recipe': no such file, and robocl ships ['cheetah_random_5'"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_with_one_command(path, tmp_path):
    recipe = load_recipe(path)
    try:
        env_ids = expand_env_ids(recipe["env"])
    except ValueError as err:
        pytest.skip(f"a task family of this recipe is not registered yet: {err}")
    if recipe["policy"] == "scripted" and _without_expert(env_ids):
        pytest.skip(f"no scripted expert yet for {_without_expert(env_ids)}")
    out = tmp_path / "r.zarr"
    # The recipe as written, shortened: 1 episode of 2 steps per env, no cameras.
    argv = ["collect", "--recipe", str(path), "--out", str(out), "--episodes", "1", "--max-steps", "2",
            "--no-images", "--quiet"]  # fmt: skip
    assert run(_parse(argv)) == 0
    with TrajectoryStore.open(out) as store:
        assert store.n_episodes == len(env_ids)
        assert store.meta["collect"]["policy"] == recipe["policy"]
        assert store.meta["collect"]["seed"] == recipe["seed"]
        assert set(store.tag_names) == {*recipe["tags"], recipe.get("positions", "seen")}
        arm_tasks = any(env not in robocl_envs.FAMILIES["cheetah"] for env in env_ids)
        assert ("observation.object" in store.features) == (arm_tasks and recipe.get("object_state", True))


@pytest.mark.skipif("robocl/PickPlace-v0" not in gym.registry, reason="arm tasks not available")
def test_pick_place_dict_observations_and_instruction(tmp_path):
    store = collect(
        "robocl/PickPlace-v0",
        2,
        tmp_path / "pp.zarr",
        policy="random",
        images=True,
        image_size=32,
        max_steps=3,
        positions="unseen",
        progress=False,
    )
    assert set(store.features) >= {
        "observation.state",
        "observation.object",
        "observation.images.front",
        "observation.images.wrist",
    }
    ep = store.episode(0)
    assert ep["observation.state"].shape == (3, 24) and ep["observation.images.wrist"].shape == (3, 32, 32, 3)
    assert ep.task.startswith("put the ") and ep.tags == ("unseen",)
    # Every state dimension is named (positions as <entity>.x/y/z), so policies can find the tool, the
    # object and the plate; the names are what the env's state table documents.
    state, obj = store.features["observation.state"].names, store.features["observation.object"].names
    assert state[14:17] == ("tcp.x", "tcp.y", "tcp.z") and len(state) == 24
    assert obj[:3] == ("object.x", "object.y", "object.z") and obj[10:] == ("plate.x", "plate.y", "plate.z")
    # The fixed front camera's calibration is recorded at the stored frame size; the moving wrist's is not.
    front = store.features["observation.images.front"].camera
    assert front is not None and front.intrinsics[2:] == (15.5, 15.5)
    assert store.features["observation.images.wrist"].camera is None


def _has_experts() -> bool:
    try:
        import robocl_envs.experts  # noqa: F401
    except ImportError:
        return False
    return "robocl/PickPlace-v0" in gym.registry


@pytest.mark.skipif(not _has_experts(), reason="scripted experts not available yet")
def test_scripted_pick_place_succeeds(tmp_path):
    store = collect("robocl/PickPlace-v0", 2, tmp_path / "demo.zarr", policy="scripted", progress=False)
    np.testing.assert_array_equal(store.episodes["success"], [True, True])
    np.testing.assert_array_equal(store.episodes["terminated"], [True, True])
    assert store.episode(1)["success"][-1]
