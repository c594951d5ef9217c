"""HyperCRL on the push family: planner latency per MPC action, and a continual comparison with the baselines.

    python -m benchmarks.hypercrl latency                       # batched CEM vs a per-sample rollout loop
    python -m benchmarks.hypercrl compare --methods hypercrl,finetune [--n-random 2000 --n-mpc 4000 ...]

Latency uses the push reference planner (H 20, K 500, E 40, 5 iterations + the final draw) on the reference
model sizes, on an untrained model (latency does not depend on the weights). The comparison's defaults are a
small budget (stated in the JSON); pass the reference numbers to run the full one. Forward transfer divides by
a single-task run's diagonal, so ``single`` is always run. Results: benchmarks/results/hypercrl*.json + PNGs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table, run_info, write_result
from robocl.algos.dynamics import HyperCRLConfig, TaskData
from robocl.algos.hypercrl import HyperCRL
from robocl.run.continual import train_hypercrl

SMALL_BUDGET = {
    "n_tasks": 2,
    "n_random": 200,
    "n_mpc": 20,
    "retrain_every": 10,
    "grad_steps": 50,
    "n_samples": 100,
    "horizon": 10,
    "n_iters": 3,
    "n_elites": 10,
    "eval_every": 110,
    "eval_episodes": 1,
    "eval_max_steps": 15,
}


def _planner_setup(seed: int) -> tuple[HyperCRL, Any, np.ndarray]:
    import gymnasium as gym

    algo = HyperCRL(HyperCRLConfig(family="push", n_tasks=1, seed=seed))
    env = gym.make(algo.env_ids[0])
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    data = TaskData(algo.state_dim, algo.action_dim)
    state = env.unwrapped.get_state()
    for _ in range(50):  # a few transitions so the task has statistics
        action = rng.standard_normal(2).astype(np.float32)
        env.step(np.clip(action, -1, 1))
        nxt = env.unwrapped.get_state()
        data.add(state, action, nxt, True)
        state = nxt
    algo.data, algo.stats = [data], [data.stats(algo.codec)]
    algo.learner.start_task(0, algo.data)
    return algo, env, state


def _naive_plan(algo: HyperCRL, state: np.ndarray, weights: list[torch.Tensor], reward_fn: Any) -> np.ndarray:
    """The same CEM, but each sampled sequence rolled out on its own, one model call per step."""
    cem = algo.config.cem()
    gen = torch.Generator().manual_seed(0)
    s0 = torch.as_tensor(state)
    mean, std = torch.zeros(cem.horizon, 2), torch.full((cem.horizon, 2), cem.init_std)
    best = mean
    for it in range(cem.n_iters + 1):
        samples = mean + std * torch.randn((cem.n_samples, cem.horizon, 2), generator=gen)
        costs = []
        for seq in samples:
            s, total = s0, 0.0
            for a in seq:
                nxt = algo.predict_next(weights, 0, s[None], a[None])[0]
                total -= float(reward_fn(s, a, nxt))
                s = nxt
            costs.append(total)
        cost = torch.tensor(costs)
        if it == cem.n_iters:
            best = samples[torch.argmin(cost)]
        else:
            elites = samples[torch.topk(cost, cem.n_elites, largest=False).indices]
            mean, std = elites.mean(0), elites.std(0, correction=0)
    return best[0].numpy()


@torch.no_grad()
def latency(seed: int, repeats: int) -> dict[str, Any]:
    algo, env, state = _planner_setup(seed)
    reward_fn = env.unwrapped.reward_fn
    gen = torch.Generator().manual_seed(seed)
    batched, with_weights, bf16 = [], [], []
    for _ in range(repeats):  # the two dtypes interleaved, so machine noise hits both alike
        algo.config.planner_dtype = "float32"
        t0 = time.perf_counter()
        weights = [w.detach() for w in algo.learner.weights(0)]  # once per env step
        t1 = time.perf_counter()
        algo.plan(0, state, weights, reward_fn, gen)
        t2 = time.perf_counter()
        batched.append(t2 - t1)
        with_weights.append(t2 - t0)
        algo.config.planner_dtype = "bfloat16"
        t0 = time.perf_counter()
        algo.plan(0, state, weights, reward_fn, gen)
        bf16.append(time.perf_counter() - t0)
    algo.config.planner_dtype = "float32"
    t0 = time.perf_counter()
    _naive_plan(algo, state, weights, reward_fn)
    naive = time.perf_counter() - t0
    cem = algo.config.cem()
    return {
        "settings": {
            "horizon": cem.horizon,
            "n_samples": cem.n_samples,
            "n_elites": cem.n_elites,
            "n_iters": cem.n_iters,
            "model_hidden": list(algo.config.hidden or ()),
            "torch_threads": torch.get_num_threads(),
            "repeats": repeats,
        },
        "batched_ms_median": 1e3 * statistics.median(batched),
        "batched_plus_hnet_ms_median": 1e3 * statistics.median(with_weights),
        "batched_bf16_ms_median": 1e3 * statistics.median(bf16),
        "naive_ms": 1e3 * naive,
        "speedup": naive / statistics.median(batched),
        "target_ms": 50.0,
    }


def compare(
    family: str, seeds: list[int], methods: list[str], budget: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Every method on the family's task sequence, per seed; the table averages over seeds."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in dict.fromkeys(["single", *methods])}
    for seed in seeds:
        for method in runs:
            t0 = time.perf_counter()
            config = HyperCRLConfig(family=family, method=method, seed=seed, **budget)
            run_dir = out / family / f"seed{seed}" / method
            metrics = train_hypercrl(config, run_dir, progress=False)
            metrics["wall_s"] = time.perf_counter() - t0
            metrics["seed"] = seed
            runs[method].append(metrics)
            print(
                f"{family} seed {seed} {method}: average {metrics['average']:.2f} ({metrics['wall_s']:.0f} s)"
            )
    return {"family": family, "seeds": seeds, "runs": runs, "table": summary_table(runs, methods)}


def summary_table(runs: dict[str, list[dict[str, Any]]], methods: list[str]) -> str:
    """Per method, mean +- std over seeds of the continual metrics; memory of the first seed's run."""
    table = []
    for method in methods:
        per_seed = []
        for m, single in zip(runs[method], runs["single"], strict=True):
            diagonal = np.diag(np.array(single["after_task_matrix"], dtype=float))
            R = np.array(m["after_task_matrix"], dtype=float)
            m["forward_transfer_ratio"] = [float(R[k, k] / diagonal[k]) for k in range(len(diagonal))]
            per_seed.append(
                [
                    m["average"],
                    np.mean(m["forgetting"]),
                    np.mean(m["forgetting_ratio"]),
                    np.mean(m["forward_transfer_ratio"]),
                    np.mean(m["model_error_matrix"][-1]),
                    np.mean(m["model_error_forgetting"]),
                ]
            )
        arr = np.array(per_seed)
        mem = runs[method][0]["memory_bytes"]
        table.append(
            [method]
            + [f"{arr[:, c].mean():.3g} +- {arr[:, c].std():.2g}" for c in range(arr.shape[1])]
            + [mem["model"] / 1e6, mem["data"] / 1e6, float(np.mean([m["wall_s"] for m in runs[method]]))]
        )
    headers = [
        "method",
        "final avg reward",
        "forgetting (reward lost)",
        "forgetting ratio R_T,k / R_k,k",
        "fwd transfer R_k,k / single",
        "model error, final (all tasks)",
        "model error forgetting",
        "model MB",
        "data MB",
        "wall s per seed",
    ]
    return markdown_table(headers, table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=("latency", "compare"))
    parser.add_argument("--seed", type=int, default=777)  # the first of HyperCRL's run-script seeds
    parser.add_argument("--seeds", default="777,855,1045", help="compare: HyperCRL's run-script seeds")
    parser.add_argument("--family", default="push", choices=("push", "door", "cheetah"))
    parser.add_argument("--repeats", type=int, default=10, help="latency: batched plans timed")
    parser.add_argument("--methods", default="hypercrl,finetune")
    parser.add_argument("--out", default="/tmp/robocl_hypercrl_bench", help="compare: run dirs")
    for key, value in SMALL_BUDGET.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=value)
    for key in ("hidden", "hnet_hidden"):  # e.g. 200,200: smaller than the family's reference on a CPU
        parser.add_argument("--" + key.replace("_", "-"), help="widths, comma-separated (default: reference)")
    args = parser.parse_args()
    info = run_info(args.seed)
    if args.part == "latency":
        result = latency(args.seed, args.repeats)
        rows = [
            ["batched CEM (this code)", result["batched_ms_median"]],
            ["batched CEM + hypernetwork forward", result["batched_plus_hnet_ms_median"]],
            ["batched CEM, bfloat16 layers (--planner-dtype bfloat16)", result["batched_bf16_ms_median"]],
            ["naive per-sample loop", result["naive_ms"]],
        ]
        table = markdown_table(["planner, push settings", "ms per MPC action"], rows)
        path = write_result("hypercrl_latency", {**info, **result, "table": table})
    else:
        budget = {k: getattr(args, k) for k in SMALL_BUDGET}
        for key in ("hidden", "hnet_hidden"):
            if getattr(args, key):
                budget[key] = tuple(int(w) for w in getattr(args, key).split(","))
        seeds = [int(x) for x in args.seeds.split(",")]
        result = compare(args.family, seeds, args.methods.split(","), budget, Path(args.out))
        table = result["table"]
        for method in result["runs"]:  # the first seed's per-task curves
            src = Path(args.out) / args.family / f"seed{seeds[0]}" / method / "curves.png"
            (RESULTS / f"hypercrl_{args.family}_curves_{method}.png").write_bytes(src.read_bytes())
        path = write_result(
            f"hypercrl_{args.family}",
            {**info, "budget": budget, **json.loads(json.dumps(result, default=float))},
        )
    print(table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
