"""``make demo``: the CO-RFT story on 2 CPU cores in a few minutes.

1. collect 50 mixed-quality scripted pick-and-place demonstrations (noise, pauses, detours: a less practised
   operator; datasets/pick_place_50_mixed.toml) into a trajectory store,
2. check the store (``robocl info``/``validate``),
3. stage 1: imitation with the flow-matching VLA-style policy (proprioception and object state, with the
   positions of the object and the plate given relative to the tool only; ``--images`` adds both cameras
   and the instruction),
4. stage 2: chunked offline RL from that policy (Cal-QL chunk critic on all but 10% of the demos; the
   policy executes 5 actions of the best of 32 flow samples, scored by the twin critics' smaller value of
   those 5, before choosing again),
   validated on the held-out demos,
5. evaluate both stages at seen and at unseen object positions (success rate with Wilson intervals, cycle
   time of the successes), write a video of each stage's first episode, and print the table.

Everything lands in ``runs/demo`` (``--out``); rerunning reuses the demonstrations and the trained stages.
The same run from the command line: ``robocl train co-rft --data STORE --run-dir DIR --language-model none``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

RECIPE = Path(__file__).resolve().parents[1] / "datasets" / "pick_place_50_mixed.toml"
ENV = "robocl/PickPlace-v0"


def main(argv: list[str] | None = None) -> int:
    from robocl.algos.co_rft_config import IL_UPDATES_PER_EPISODE, RL_UPDATES, il_updates_for

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/demo", help="folder for the store, run and evaluations")
    parser.add_argument(
        "--il-updates", type=int, help=f"stage-1 updates (default {IL_UPDATES_PER_EPISODE} per demo)"
    )
    parser.add_argument("--rl-updates", type=int, default=RL_UPDATES, help="stage-2 offline RL updates")
    parser.add_argument("--images", action="store_true", help="add both 96x96 cameras (slower on a CPU)")
    parser.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes per position set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from robocl.algos.co_rft import CORFT
    from robocl.algos.co_rft_config import CORFTConfig
    from robocl.checkpoint import load_checkpoint
    from robocl.collect import collect, load_recipe
    from robocl.eval.evaluate import EnvEvaluation, evaluate
    from robocl.run.layout import RunDir
    from robocl.run.loop import LoopConfig
    from robocl.run.train import train_co_rft
    from robocl.store import TrajectoryStore
    from robocl.store.validate import validate_store

    out = Path(args.out)
    store_path = out / f"pick_place_50_mixed{'_images' if args.images else ''}.zarr"
    started = time.perf_counter()
    print(f"== 1. demonstrations: {RECIPE.name} -> {store_path}")
    if not (store_path / "zarr.json").exists():
        recipe = load_recipe(RECIPE) | {"images": args.images}
        collect(recipe.pop("env"), recipe.pop("episodes"), store_path, num_envs=2, **recipe)
    with TrajectoryStore.open(store_path) as store:
        info = store.summary()
        cameras = tuple(k for k, f in store.features.items() if f.is_image) if args.images else ()
    print(
        f"   {info['n_episodes']} episodes, {info['n_steps']} steps, "
        f"demo success {info['success_rate']:.0%}, {info['bytes_stored'] / 1e6:.1f} MB; "
        f"tasks e.g. {info['tasks'][0]!r}"
    )
    report = validate_store(store_path)
    print(f"   validate: {'OK' if report.ok else report.problems}")

    run_dir = out / f"co_rft{'_images' if args.images else ''}_seed{args.seed}"
    if args.il_updates is None:
        args.il_updates = il_updates_for(info["n_episodes"])
    print(f"== 2. CO-RFT -> {run_dir}: {args.il_updates} imitation updates, {args.rl_updates} RL updates")
    # The benchmark's recipe (benchmarks/co_rft.py): with the object state the instruction is redundant and
    # left out; with cameras the policy sees proprioception, both cameras and the instruction.
    if args.images:
        config = CORFTConfig(state_keys=("observation.state",), image_keys=cameras, seed=args.seed)
    else:
        config = CORFTConfig(language_model=None, seed=args.seed)
    loop = {"batch_size": 128, "checkpoint_every": 500}
    run = RunDir(run_dir)
    paths = train_co_rft(
        config,
        store_path,
        run_dir,
        il_loop=LoopConfig(n_updates=args.il_updates, **loop),
        # 0: IL only; stage 2 validates its critic on the held-out demos every 500 updates (TensorBoard)
        rl_loop=LoopConfig(n_updates=args.rl_updates, eval_every=500, **loop) if args.rl_updates else None,
        # every stage ends with the shared evaluator at seen and unseen positions, into run_dir/eval/
        evaluate=EnvEvaluation(ENV, args.eval_episodes, ("seen", "unseen")),
        resume=run.info_path.exists(),
    )

    if "rl" in paths:  # how well the critic the actor climbs scores demonstrations it never saw
        algo = CORFT.from_checkpoint(load_checkpoint(paths["rl"]))
        with TrajectoryStore.open(store_path) as store:
            _, held_out = algo.split(store)
            val = {} if held_out is None else algo.validate(algo.val_sampler(held_out))
            if "val_q_mc_corr" in val:  # scored on the successful ones (see CORFT.validate)
                print(
                    f"   critic on {held_out.n_episodes} held-out demos ({val['val_failed_episodes']:.0f} "
                    f"failed, scored apart): Q vs Monte-Carlo return correlation {val['val_q_mc_corr']:.2f}, "
                    f"mean |Q - return| {val['val_q_abs_err']:.1f} steps"
                )

    print("== 3. evaluation of both stages (the shared evaluator at the end of each stage)")
    rows = []
    for stage in paths:
        history = list(run.evaluations(stage))
        final = max(step for step, _ in history)
        reports = [json.loads(path.read_text()) for step, path in history if step == final]
        rows += [(stage, info["positions"], info["aggregate"]) for info in reports]
    print(_table(rows))
    for stage, ckpt in paths.items():
        videos = run.path / "videos" / stage
        evaluate(str(ckpt), ENV, n_episodes=1, out_dir=videos, video=True, n_videos=1, progress=False)
        print(f"video ({stage}): {videos / 'videos' / 'episode_000.mp4'}")
    print(f"compare the stages: robocl compare {run_dir}")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _table(rows: list[tuple[str, str, dict]]) -> str:
    lines = [f"{'stage':<6} {'positions':<9} {'success (95% CI)':<24} cycle time (successes)"]
    for stage, positions, s in rows:
        lo, hi = s["success_rate_ci95"]
        success = f"{s['success_rate']:.0%} [{lo:.0%}, {hi:.0%}]"
        cycle = "-" if s["cycle_time_mean"] is None else f"{s['cycle_time_mean']:.2f} s"
        lines.append(f"{stage:<6} {positions:<9} {success:<24} {cycle}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
