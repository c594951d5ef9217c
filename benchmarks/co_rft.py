"""CO-RFT vs imitation on pick-and-place from a few noisy demonstrations; wall time per update IL vs RL.

    python -m benchmarks.co_rft                                   # small budget, a few minutes on a CPU
    python -m benchmarks.co_rft --demos 30,60 --seeds 0,1,2 --il-updates 5000 --rl-updates 2000 --episodes 50

For each demo count (scripted mixed-quality demos, collection seed 0) and each seed, four policies:

- ``il``: stage 1 only, ``--il-updates`` BC steps;
- ``il+extra``: the same policy trained ``--rl-updates`` more BC steps (equal gradient steps to CO-RFT);
- ``co-rft``: the ``il`` policy plus ``--rl-updates`` stage-2 updates (h = 10);
- ``co-rft h=1``: both stages with one-action chunks (the chunking ablation).

Each is evaluated on seen and unseen object positions (success with a Wilson 95% interval over the episodes
of all seeds pooled, cycle time of the successes). The default budget is small and stated in the JSON; its
success numbers say little beyond "runs end to end". Result: benchmarks/results/co_rft.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table, run_info, write_result
from robocl.algos.co_rft import CORFT, CORFTConfig
from robocl.eval.metrics import wilson_interval
from robocl.store import TrajectoryStore
from robocl.train import to_torch

ENV = "robocl/PickPlace-v0"
METHODS = ("il", "il+extra", "co-rft", "co-rft h=1")
# Scripted demos: "mixed" as datasets/pick_place_50_mixed.toml (a less practised teleoperator: noise, pauses,
# detours; the data where a -1/step critic has faster chunks to prefer), "noisy" as pick_place_50_noisy.
QUALITY = {
    "mixed": {"noise": 0.2, "hesitation": 0.05, "detour": 0.3},
    "noisy": {"noise": 0.1},
}


def _train(algo: CORFT, sampler: Any, n_updates: int, batch_size: int, times: list[float]) -> None:
    for _ in range(n_updates):
        batch = to_torch(sampler.sample(batch_size), "cpu")
        t0 = time.perf_counter()
        algo.update(batch)
        times.append(time.perf_counter() - t0)


def _policies(
    store: TrajectoryStore, seed: int, args: argparse.Namespace, language: Any, times: dict[str, list[float]]
) -> dict[str, Any]:
    """The four trained policies of one (store, seed) cell."""
    out = {}
    for horizon in (10, 1):
        cfg = CORFTConfig(horizon=horizon, seed=seed, cql_n_samples=args.cql_n_samples)
        algo = CORFT.from_store(cfg, store, language=language)
        il_sampler, rl_sampler = algo.il_sampler(store), algo.rl_sampler(store)
        _train(algo, il_sampler, args.il_updates, args.batch_size, times[f"il h={horizon}"])
        if horizon == 10:
            out["il"] = copy.deepcopy(algo).policy()
            extra = copy.deepcopy(algo)
            _train(extra, il_sampler, args.rl_updates, args.batch_size, [])
            out["il+extra"] = extra.policy()
        algo.start_rl()
        _train(algo, rl_sampler, args.rl_updates, args.batch_size, times[f"rl h={horizon}"])
        out["co-rft" if horizon == 10 else "co-rft h=1"] = algo.policy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--demos", default="30,60", help="demo counts, comma-separated")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--il-updates", type=int, default=300, help="stage-1 BC updates")
    parser.add_argument("--rl-updates", type=int, default=30, help="stage-2 updates (and extra BC steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quality", choices=sorted(QUALITY), default="mixed", help="demo quality")
    parser.add_argument("--cql-n-samples", type=int, default=CORFTConfig.cql_n_samples)
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per seed and position set"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from robocl.collect import collect
    from robocl.eval.evaluate import evaluate
    from robocl.nets.language import LanguageEncoder

    demos = [int(x) for x in args.demos.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    language = LanguageEncoder()
    times: dict[str, list[float]] = {k: [] for k in ("il h=10", "rl h=10", "il h=1", "rl h=1")}
    cells: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n_demos in demos:
            path = Path(tmp) / f"pp{n_demos}.zarr"
            collect(ENV, n_demos, path, seed=0, progress=False, **QUALITY[args.quality])
            store = TrajectoryStore.open(path)
            demo_success = float(store.episodes["success"].mean())
            for seed in seeds:
                for method, policy in _policies(store, seed, args, language, times).items():
                    for positions in ("seen", "unseen"):
                        res = evaluate(
                            policy,
                            ENV,
                            n_episodes=args.episodes,
                            positions=positions,
                            seed=100_000 + 1_000 * seed,
                            out_dir=Path(tmp) / f"eval_{n_demos}_{seed}_{method}_{positions}",
                            progress=False,
                        )
                        cells.append(
                            {
                                "demos": n_demos,
                                "demo_success_rate": demo_success,
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
            store.close()
    rows, summary = [], []
    for n_demos in demos:
        for method in METHODS:
            for positions in ("seen", "unseen"):
                group = [
                    c
                    for c in cells
                    if (c["demos"], c["method"], c["positions"]) == (n_demos, method, positions)
                ]
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
    ms = {k: 1000 * statistics.median(v[1:] or v) for k, v in times.items() if v}
    payload = {
        **run_info(seeds[0]),
        "seeds": seeds,
        "env_id": ENV,
        "budget": {
            "demos": demos,
            "quality": {args.quality: QUALITY[args.quality]},
            "il_updates": args.il_updates,
            "rl_updates": args.rl_updates,
            "batch_size": args.batch_size,
            "cql_n_samples": args.cql_n_samples,
            "eval_episodes_per_seed": args.episodes,
        },
        "ms_per_update_median": ms,
        "wall_s": time.perf_counter() - t_start,
        "summary": summary,
        "cells": cells,
    }
    path = write_result("co_rft", payload)
    print(markdown_table(["demos", "method", "positions", "success (95% CI)", "cycle time"], rows))
    print()
    print(markdown_table(["phase", "ms / update (median)"], [[k, v] for k, v in ms.items()]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
