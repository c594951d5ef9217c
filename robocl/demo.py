"""``make demo``: the whole robocl story on 2 CPU cores in a few minutes.

1. collect 50 noisy scripted pick-and-place demonstrations into a trajectory store (datasets/ recipe),
2. check the store (``robocl info``/``validate``),
3. train a policy on them by imitation (chunked behaviour cloning on proprioception + object state),
4. evaluate it at seen and at unseen object positions (success rate, cycle time, Wilson intervals),
   write a video of the first episode, and print the table.

Everything lands in ``runs/demo`` (``--out``); rerunning reuses the collected demonstrations.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RECIPE = Path(__file__).resolve().parents[1] / "datasets" / "pick_place_50_noisy.toml"
ENV = "robocl/PickPlace-v0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/demo", help="folder for the store, run and evaluations")
    parser.add_argument("--updates", type=int, default=3000, help="imitation gradient updates")
    parser.add_argument("--eval-episodes", type=int, default=30, help="evaluation episodes per position set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from robocl.algos.bc import BC, BCConfig
    from robocl.collect import collect, load_recipe
    from robocl.eval.evaluate import evaluate
    from robocl.store import TrajectoryStore
    from robocl.store.validate import validate_store
    from robocl.train import LoopConfig, fit

    out = Path(args.out)
    store_path = out / "pick_place_50_noisy.zarr"
    started = time.perf_counter()
    print(f"== 1. demonstrations: {RECIPE.name} -> {store_path}")
    if not (store_path / "zarr.json").exists():
        recipe = load_recipe(RECIPE)
        collect(recipe.pop("env"), recipe.pop("episodes"), store_path, num_envs=2, **recipe)
    store = TrajectoryStore.open(store_path)
    info = store.summary()
    print(
        f"   {info['n_episodes']} episodes, {info['n_steps']} steps, "
        f"demo success {info['success_rate']:.0%}, {info['bytes_stored'] / 1e6:.1f} MB; "
        f"tasks e.g. {info['tasks'][0]!r}"
    )
    report = validate_store(store_path)
    print(f"   validate: {'OK' if report.ok else report.problems}")

    print(f"== 2. imitation: chunked BC, {args.updates} updates")
    run_dir = out / f"bc_seed{args.seed}"
    config = BCConfig(
        obs_keys=("observation.state", "observation.object"), horizon=10, n_action_steps=5, seed=args.seed
    )
    algo = BC.from_store(config, store)
    sampler = algo.sampler(store)
    resume = (run_dir / "checkpoints" / "last").exists()
    fit(
        algo,
        sampler,
        LoopConfig(n_updates=args.updates, batch_size=256, checkpoint_every=1000),
        run_dir,
        resume=resume,
    )

    print("== 3. evaluation")
    tables = []
    for positions in ("seen", "unseen"):
        result = evaluate(
            algo.policy(),
            ENV,
            n_episodes=args.eval_episodes,
            positions=positions,
            out_dir=run_dir / "eval" / positions,
            num_envs=2,
            video=positions == "seen",
            n_videos=1,
            progress=False,
        )
        tables.append(result["table"])
    print("\n".join(tables))
    print(f"\nvideo: {run_dir / 'eval' / 'seen' / 'videos' / 'episode_000.mp4'}")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
