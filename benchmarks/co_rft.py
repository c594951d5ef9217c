"""CO-RFT vs imitation from a few noisy, mixed-quality demonstrations; wall time per update IL vs RL.

    python -m benchmarks.co_rft                                  # small budget, a few minutes on a CPU
    python -m benchmarks.co_rft --task push --demos 30,60 --seeds 0,1,2,3,4 --il-updates 2000 \
        --rl-updates 1000 --batch-size 256 --episodes 50

For each demo count (scripted mixed-quality demos of ``--task``, collection seed 0) and each seed, six
policies, the CO-RFT variants starting from the same stage-1 policy:

- ``il``: stage 1 only, ``--il-updates`` BC steps (h = 10);
- ``il+extra``: the same policy trained ``--rl-updates`` more BC steps (equal gradient steps to CO-RFT);
- ``co-rft``: the ``il`` policy plus ``--rl-updates`` stage-2 updates (defaults: -1/step reward, Cal-QL);
- ``co-rft sparse``: the same with the sparse +1-at-success reward (the reward ablation);
- ``il h=1`` and ``co-rft h=1``: both stages with one-action chunks (the ablation that isolates chunked TD).

Each is evaluated on seen and unseen object positions (success with a Wilson 95% interval over the episodes
of all seeds pooled, cycle time of the successes). The default budget is small and stated in the JSON; its
success numbers say little beyond "runs end to end". ``--images`` adds both cameras to the policy (stage 2
encodes the frames once, so its cost stays the critic's).
Result: benchmarks/results/co_rft_<task>[_images].json.
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")  # --images renders on a headless CPU

from benchmarks.common import markdown_table, run_info, write_result
from robocl.algos.co_rft import CORFT, CORFTConfig
from robocl.eval.metrics import wilson_interval
from robocl.nets.vla import VLAConfig
from robocl.store import TrajectoryStore
from robocl.train import to_torch

# Scripted demos of a less practised teleoperator (noise, pauses, detours; datasets/pick_place_50_mixed.toml
# for pick-and-place): the data where a -1/step critic has faster chunks to prefer. Push uses the block with
# unequal halves (HyperCRL's second task): it turns under a straight push, so a constant action fails (0/10;
# it succeeds 10/10 on the uniform block); its expert is noise-sensitive (noise 0.1 with pauses and detours:
# 30% success), so its noise is 0.05. Demo success: pick-place ~97%, push ~93%.
TASKS = {
    "pick-place": {"env": "robocl/PickPlace-v0", "gripper": True,
                   "demos": {"noise": 0.2, "hesitation": 0.05, "detour": 0.3}},
    "push": {"env": "robocl/Push-Density1-v0", "gripper": False,
             "demos": {"noise": 0.05, "hesitation": 0.05, "detour": 0.3}},
}  # fmt: skip
RL_VARIANTS = {"co-rft": {}, "co-rft sparse": {"reward": "sparse"}}
NETWORK_FIELDS = set(VLAConfig.__annotations__)


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:field=value,field=value`` -> (NAME, CORFTConfig overrides), values parsed as JSON or text."""
    name, _, fields = text.partition(":")
    overrides = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        if key not in CORFTConfig.__dataclass_fields__:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {key!r} is not a CORFTConfig field")
        if key in NETWORK_FIELDS:  # the variant copies the trained IL network, built from these
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {key!r} shapes the IL policy network")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return name, overrides


def _train(algo: CORFT, sampler: Any, n_updates: int, batch_size: int, times: list[list[float]]) -> None:
    """``n_updates`` updates; appends this run's wall time per update (sampling excluded) to ``times``."""
    run = []
    for _ in range(n_updates):
        batch = to_torch(sampler.sample(batch_size), "cpu")
        t0 = time.perf_counter()
        algo.update(batch)
        run.append(time.perf_counter() - t0)
    times.append(run)


def _policies(
    store: TrajectoryStore,
    task: dict[str, Any],
    seed: int,
    args: argparse.Namespace,
    language: Any,
    times: dict[str, list[list[float]]],
) -> dict[str, Any]:
    """The trained policies of one (store, seed) cell, keyed by method name (``args.methods``)."""
    out, wanted = {}, set(args.methods)
    for horizon in (10, 1) if wanted & {"il h=1", "co-rft h=1"} else (10,):
        cameras = tuple(k for k, f in store.features.items() if f.is_image)
        cfg = CORFTConfig(
            image_keys=cameras,
            horizon=horizon,
            seed=seed,
            gripper=task["gripper"],
            cql_n_samples=args.cql_n_samples,
        )
        algo = CORFT.from_store(cfg, store, language=language)
        il_sampler = algo.il_sampler(store)
        _train(algo, il_sampler, args.il_updates, args.batch_size, times[f"il h={horizon}"])
        if horizon == 1:
            out["il h=1"] = copy.deepcopy(algo).policy()
            if "co-rft h=1" in wanted:
                algo.start_rl()
                _train(algo, algo.rl_sampler(store), args.rl_updates, args.batch_size, times["rl h=1"])
                out["co-rft h=1"] = algo.policy()
            continue
        out["il"] = copy.deepcopy(algo).policy()
        if "il+extra" in wanted:
            extra = copy.deepcopy(algo)
            _train(extra, il_sampler, args.rl_updates, args.batch_size, [])  # the same stream, continued
            out["il+extra"] = extra.policy()
        for name, overrides in args.variants.items():
            if name not in wanted:
                continue
            variant = copy.deepcopy(algo)
            variant.config = dataclasses.replace(cfg, **overrides)
            variant.start_rl()
            key = "rl h=10" + ("" if name == "co-rft" else f" {name}")
            _train(variant, variant.rl_sampler(store), args.rl_updates, args.batch_size, times[key])
            out[name] = variant.policy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--demos", default="30,60", help="demo counts, comma-separated")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--il-updates", type=int, default=300, help="stage-1 BC updates")
    parser.add_argument("--rl-updates", type=int, default=30, help="stage-2 updates (and extra BC steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--task", choices=sorted(TASKS), default="pick-place")
    parser.add_argument("--images", action="store_true", help="the policy also sees both 96x96 cameras")
    parser.add_argument("--cql-n-samples", type=int, default=CORFTConfig.cql_n_samples)
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per seed and position set"
    )
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        help="an extra stage-2 variant from the IL policy, NAME:field=value,... (stage-2 CORFTConfig "
        "fields, scalar values)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated methods to run (il always runs); default: all"
    )
    parser.add_argument("--name", default="", help="result file name (default co_rft_<task>[_images])")
    args = parser.parse_args()
    args.variants = {**RL_VARIANTS, **dict(args.variant)}
    args.methods = ["il", "il+extra", *args.variants, "il h=1", "co-rft h=1"]
    if args.only:
        only = {"il", *args.only.split(",")}
        if only - set(args.methods):
            parser.error(f"--only: unknown methods {sorted(only - set(args.methods))}")
        args.methods = [m for m in args.methods if m in only]
    torch.set_num_threads(1)
    from robocl.collect import collect
    from robocl.eval.evaluate import evaluate
    from robocl.nets.language import LanguageEncoder

    demos = [int(x) for x in args.demos.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    language = LanguageEncoder()
    task = TASKS[args.task]
    env = task["env"]
    times: dict[str, list[list[float]]] = collections.defaultdict(list)  # phase -> runs -> s per update
    cells: list[dict[str, Any]] = []
    demo_stats: dict[int, dict[str, float]] = {}
    t_start = time.perf_counter()
    name = args.name or f"co_rft_{args.task.replace('-', '_')}{'_images' if args.images else ''}"
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for n_demos in demos:
            path = Path(tmp) / f"demos{n_demos}.zarr"
            collect(env, n_demos, path, seed=0, progress=False, images=args.images, **task["demos"])
            stores[n_demos] = store = TrajectoryStore.open(path)
            table = store.episodes
            demo_stats[n_demos] = {
                "success_rate": float(table["success"].mean()),
                "cycle_time_mean": float(table["length"][table["success"]].mean() / store.fps),
            }
        # Seeds outermost, and the JSON rewritten after every cell: a run stopped early still reports
        # every demo count over the seeds it finished.
        for seed in seeds:
            for n_demos, store in stores.items():
                for method, policy in _policies(store, task, seed, args, language, times).items():
                    for positions in ("seen", "unseen"):
                        res = evaluate(
                            policy,
                            env,
                            n_episodes=args.episodes,
                            positions=positions,
                            seed=100_000 + 1_000 * seed,
                            out_dir=Path(tmp) / f"eval_{n_demos}_{seed}_{method}_{positions}",
                            progress=False,
                        )
                        cells.append(
                            {
                                "demos": n_demos,
                                "seed": seed,
                                "method": method,
                                "positions": positions,
                                "successes": int(sum(r.success for r in res["episodes"])),
                                "episodes": len(res["episodes"]),
                                "cycle_times": [
                                    r.cycle_time for r in res["episodes"] if r.cycle_time is not None
                                ],
                            }
                        )
                run = {"seeds": sorted({c["seed"] for c in cells}), "wall_s": time.perf_counter() - t_start}
                tables = _report(name, args, env, task, demo_stats, times, cells, run)
                print(f"seed {seed}, {n_demos} demos done after {run['wall_s']:.0f} s", flush=True)
        for store in stores.values():
            store.close()
    print(tables)


def _report(
    name: str,
    args: argparse.Namespace,
    env: str,
    task: dict[str, Any],
    demo_stats: dict[int, dict[str, float]],
    times: dict[str, list[list[float]]],
    cells: list[dict[str, Any]],
    run: dict[str, Any],
) -> str:
    """Write the JSON for the cells so far; returns the printed tables."""
    rows, summary = [], []
    for n_demos in demo_stats:
        for method in args.methods:
            for positions in ("seen", "unseen"):
                group = [
                    c
                    for c in cells
                    if (c["demos"], c["method"], c["positions"]) == (n_demos, method, positions)
                ]
                if not group:
                    continue
                k, n = sum(c["successes"] for c in group), sum(c["episodes"] for c in group)
                cycles = [t for c in group for t in c["cycle_times"]]
                lo, hi = wilson_interval(k, n)
                cycle = float(np.mean(cycles)) if cycles else None
                summary.append(
                    {
                        "demos": n_demos,
                        "method": method,
                        "positions": positions,
                        "success_rate": k / n,
                        "success_ci95": [lo, hi],
                        "episodes": n,
                        "cycle_time_mean": cycle,
                    }
                )
                rows.append(
                    [n_demos, method, positions, f"{k}/{n} = {k / n:.0%} [{lo:.0%}, {hi:.0%}]",
                     "-" if cycle is None else f"{cycle:.2f} s"]
                )  # fmt: skip
    # The first stage-2 update of each run also encodes every history once (the frozen-trunk feature table).
    ms = {k: 1000 * statistics.median([t for run in v for t in run[1:] or run]) for k, v in times.items()}
    first_ms = {k: 1000 * statistics.median(run[0] for run in v) for k, v in times.items()}
    payload = {
        **run_info(run["seeds"][0]),
        **run,
        "env_id": env,
        "demo_settings": task["demos"],
        "demos_collected": demo_stats,
        "budget": {
            "demos": list(demo_stats),
            "images": args.images,
            "il_updates": args.il_updates,
            "rl_updates": args.rl_updates,
            "batch_size": args.batch_size,
            "cql_n_samples": args.cql_n_samples,
            "eval_episodes_per_seed": args.episodes,
            "variants": {name: args.variants[name] for name in args.methods if name in args.variants},
        },
        "ms_per_update_median": ms,
        "ms_first_update_median": first_ms,
        "summary": summary,
        "cells": cells,
    }
    path = write_result(name, payload)
    return "\n".join(
        [
            markdown_table(["demos", "method", "positions", "success (95% CI)", "cycle time"], rows),
            "",
            markdown_table(
                ["phase", "ms / update (median)", "first update ms"],
                [[k, v, first_ms[k]] for k, v in ms.items()],
            ),
            f"\nwrote {path}",
        ]
    )


if __name__ == "__main__":
    main()
