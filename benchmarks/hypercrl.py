"""HyperCRL on the push family: planner latency per MPC action, and a continual comparison with the baselines.

    python -m benchmarks.hypercrl latency [--threads 1]    # this planner vs the previous one, warm starts
    python -m benchmarks.hypercrl compare --methods hypercrl,finetune [--n-random 2000 --n-mpc 4000 ...]
    python -m benchmarks.hypercrl lr --family push --lrs 1e-4,3e-4,1e-3 --steps 2000 --n-tasks 5
    python -m benchmarks.hypercrl warm --episodes 10 --n-random 2000 --steps 2000 --eval-max-steps 100
    python -m benchmarks.hypercrl combine --parts a.json,b.json --name hypercrl_door   # seeds run apart

Latency uses the push reference planner (H 20, K 500, E 40, 5 iterations + the final draw) on the reference
model sizes, on an untrained model (latency does not depend on the weights); it times the planner as of
5fbb8a4 beside this one in the same process, and a matmul-only floor. ``lr`` fits the reference-size
model to random-action data of each task in turn (no MPC, so every learning rate sees the same transitions):
the validation error curve of every task, and the after-task model-error matrix whose drift on earlier tasks
is the model-error forgetting (results: hypercrl_lr_<family>.json). ``warm`` compares episode returns of the
reference CEM and of warm-started CEM on one fitted push model (hypercrl_warm_start.json). The comparison's
defaults are a small budget (stated in the JSON); pass the reference numbers to run the full one. Forward
transfer divides by a single-task run's diagonal, so ``single`` is always run. Results:
benchmarks/results/hypercrl*.json + PNGs. ``--threads`` (default 1) sets torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, markdown_table, run_info, write_result
from robocl.algos.cem import cem_plan
from robocl.algos.dynamics import HyperCRLConfig, TaskData, stream_seed
from robocl.algos.hypercrl import HyperCRL
from robocl.nets.hypernet import mlp_forward
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


def _previous_plan(
    algo: HyperCRL, state: np.ndarray, weights: list[torch.Tensor], reward_fn: Any, gen: torch.Generator
) -> np.ndarray:
    """The planner as of 5fbb8a4, kept to time against: the same CEM and model maths with batch-major
    (K, H, .) rollouts, the input normalisation folded per call, a bias copy per first layer, the full
    output layer, and a stack and a cat of the states per cost call."""
    s0 = torch.as_tensor(state, dtype=torch.float32)
    st = algo.stats[0]
    mean = torch.cat([st["feature_mean"], st["action_mean"]])
    weight = weights[0] / torch.cat([st["feature_std"], st["action_std"]])
    bias = weights[1] - weight @ mean
    w_state, w_action = weight[:, : algo.codec.feature_dim], weight[:, algo.codec.feature_dim :]

    def cost(actions: torch.Tensor) -> torch.Tensor:
        action_term = F.linear(actions, w_action, bias)  # (K, H, hidden)
        s, states = s0.expand(actions.shape[0], -1), []
        for h in range(actions.shape[1]):
            first = torch.addmm(action_term[:, h], algo.codec.features(s), w_state.T).relu_()
            out = mlp_forward(first, weights[2:])
            nxt = s + out[..., : algo.state_dim]
            nxt[..., algo.codec.absolute] = out[..., algo.codec.absolute]
            s = nxt
            states.append(s)
        nxt = torch.stack(states, 1)  # (K, H, D)
        prev = torch.cat([s0.expand(len(nxt), 1, -1), nxt[:, :-1]], 1)
        return -reward_fn(prev, actions, nxt).sum(1)

    return cem_plan(cost, algo.action_dim, algo.config.cem(), gen)[0].numpy()


def _gemm_floor(algo: HyperCRL, populations: int) -> float:
    """Seconds of only the rollout matmuls of one plan (no bias, activation, state, reward or CEM work)."""
    cem, hidden = algo.config.cem(), list(algo.config.hidden or ())
    inputs = [torch.randn(cem.n_samples, w) for w in [algo.codec.feature_dim, *hidden]]
    ws = [
        torch.randn(b, a)
        for a, b in zip([algo.codec.feature_dim, *hidden], [*hidden, algo.state_dim], strict=True)
    ]
    t0 = time.perf_counter()
    for _ in range(populations * cem.horizon):
        for x, w in zip(inputs, ws, strict=True):
            torch.mm(x, w.T)
    return time.perf_counter() - t0


def _flops_per_action(algo: HyperCRL, populations: int) -> float:
    """Multiply-adds x 2 of the rollouts: per sample and step the state half of the first layer and the
    other layers, plus the action half of the first layer."""
    cem = algo.config.cem()
    widths = [algo.codec.feature_dim, *(algo.config.hidden or ()), algo.state_dim]
    per_step = sum(2 * a * b for a, b in itertools.pairwise(widths)) + 2 * algo.action_dim * widths[1]
    return populations * cem.n_samples * cem.horizon * per_step


@torch.no_grad()
def latency(seed: int, repeats: int, warm_iters: list[int]) -> dict[str, Any]:
    """ms per MPC action of the previous and the current planner, interleaved per repeat so that machine
    noise hits all alike; medians. Warm-started plans are timed in their steady state (after a plan)."""
    algo, env, state = _planner_setup(seed)
    reward_fn = env.unwrapped.reward_fn
    gen = torch.Generator().manual_seed(seed)
    weights = [w.detach() for w in algo.learner.weights(0)]
    cem = algo.config.cem()
    variants: dict[str, tuple[str, int | None]] = {
        "previous planner (5fbb8a4), float32": ("float32", None),
        "this planner, reference CEM, float32": ("float32", None),
        **{f"this planner, warm start + {w} refits, float32": ("float32", w) for w in warm_iters},
        "this planner, reference CEM, bfloat16 layers": ("bfloat16", None),
    }
    floor = "matmuls only, reference CEM, float32"
    times: dict[str, list[float]] = {name: [] for name in [*variants, floor]}
    build = []
    for _ in range(repeats):
        for name, (dtype, warm) in variants.items():
            algo.config.planner_dtype, algo.config.warm_iters = dtype, warm
            t0 = time.perf_counter()
            algo._model_version += 1  # what an update does: the next plan regenerates W_t
            algo.planning_model(0)
            build.append(time.perf_counter() - t0)
            previous = algo.plan(0, state, reward_fn, gen) if warm is not None else None
            t0 = time.perf_counter()
            if name.startswith("previous"):
                _previous_plan(algo, state, weights, reward_fn, gen)
            else:
                algo.plan(0, state, reward_fn, gen, previous)
            times[name].append(time.perf_counter() - t0)
        times[floor].append(_gemm_floor(algo, cem.n_iters + 1))
    algo.config.planner_dtype, algo.config.warm_iters = "float32", None
    populations = {name: (w if w is not None else cem.n_iters) + 1 for name, (_, w) in variants.items()}
    populations[floor] = cem.n_iters + 1
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
        "ms_per_action_median": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "ms_per_action_all": {name: [1e3 * x for x in t] for name, t in times.items()},
        "gflop_per_action": {name: _flops_per_action(algo, p) / 1e9 for name, p in populations.items()},
        # W_t = h(e_t) and the folding, once per update (the planner caches it in between)
        "model_build_ms_median": 1e3 * statistics.median(build),
        "target_ms": 20.0,
    }


def _random_data(env_id: str, algo: HyperCRL, n: int, seed: int) -> TaskData:
    """``n`` transitions under N(0, I) actions (stored unclipped), each in train with p = train_fraction."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    data = TaskData(algo.state_dim, algo.action_dim)
    state = env.unwrapped.get_state()
    for _ in range(n):
        action = rng.standard_normal(algo.action_dim).astype(np.float32)
        _, _, terminated, truncated, _ = env.step(np.clip(action, -1, 1))
        nxt = env.unwrapped.get_state()
        data.add(state, action, nxt, bool(rng.random() < algo.config.train_fraction))
        state = nxt
        if terminated or truncated:
            env.reset()
            state = env.unwrapped.get_state()
    env.close()
    return data


def fit_tasks(algo: HyperCRL, data: list[TaskData], steps: int, log_every: int) -> dict[str, Any]:
    """``steps`` updates per task in order on shuffled epochs (batch 100, last partial batch dropped, as the
    loop draws them); the validation error of the task being fitted every ``log_every`` steps."""
    config = algo.config
    order_gen = torch.Generator().manual_seed(config.seed)
    curves, t0 = [], time.perf_counter()
    for task, task_data in enumerate(data):
        algo.start_task(task)
        algo.data[task] = task_data
        algo.refresh_stats()
        train_idx = torch.nonzero(task_data.train).flatten()
        batches: list[torch.Tensor] = []
        curve = [[0, algo.model_error(task)]]
        for step in range(1, steps + 1):
            if not batches:
                perm = train_idx[torch.randperm(len(train_idx), generator=order_gen)]
                batches = list(
                    perm[: len(perm) // config.batch_size * config.batch_size].split(config.batch_size)
                )
            algo.update({"idx": batches.pop()})
            if step % log_every == 0:
                curve.append([step, algo.model_error(task)])
        curves.append(curve)
        algo.end_task(task)
    errors = algo.model_errors
    return {
        "validation_curves": curves,
        "model_error_matrix": errors,
        "model_error_forgetting": [errors[-1][k] - errors[k][k] for k in range(len(errors) - 1)],
        "wall_s": time.perf_counter() - t0,
    }


def lr_study(
    family: str,
    lrs: list[float],
    seed: int,
    n_tasks: int,
    n_random: int,
    steps: int,
    log_every: int,
    sizes: dict[str, tuple[int, ...]],
) -> dict[str, Any]:
    """HyperCRL at each lr and the fine-tune MLP baseline at its own lr, on the same random-action data;
    ``sizes``: hidden / hnet_hidden overrides (empty: the family's reference sizes)."""
    config = HyperCRLConfig(family=family, n_tasks=n_tasks, seed=seed, **sizes)
    probe = HyperCRL(config)
    data = [
        _random_data(env_id, probe, n_random, stream_seed(seed, task, 1))
        for task, env_id in enumerate(probe.env_ids)
    ]
    no_change = [float((probe.codec.target(d.state, d.next_state)[~d.train] ** 2).mean()) for d in data]
    runs = {}
    for name, method, lr in [*(("hypercrl", "hypercrl", lr) for lr in lrs), ("finetune", "finetune", None)]:
        lr_arg = {"lr": lr} if lr else {}
        cfg = HyperCRLConfig(family=family, method=method, n_tasks=n_tasks, seed=seed, **sizes, **lr_arg)
        label = f"{name} lr {lr if lr else cfg.baseline_lr:g}"
        runs[label] = fit_tasks(HyperCRL(cfg), data, steps, log_every)
        run = runs[label]
        forgetting = np.mean(run["model_error_forgetting"]) if n_tasks > 1 else float("nan")
        final0 = run["validation_curves"][0][-1][1]
        print(f"{family} {label}: task 0 {final0:.4g}, forgetting {forgetting:.3g} ({run['wall_s']:.0f} s)")
    rows = []
    for label, run in runs.items():
        curve0 = dict((s, e) for s, e in run["validation_curves"][0])
        forgetting = run["model_error_forgetting"]
        rows.append(
            [label]
            + [curve0.get(s, float("nan")) for s in _checkpoints(steps)]
            + [
                float(np.mean(run["model_error_matrix"][-1])),
                float(np.mean(forgetting)) if forgetting else float("nan"),
            ]
        )
    headers = ["model", *(f"task 0 val error @{s}" for s in _checkpoints(steps))]
    headers += ["final error, mean over tasks", "model-error forgetting, mean over earlier tasks"]
    return {
        "family": family,
        "budget": {"n_tasks": n_tasks, "n_random": n_random, "steps_per_task": steps, "seed": seed},
        "sizes": {"hidden": list(config.hidden or ()), "hnet_hidden": list(config.hnet_hidden or ())},
        "no_change_error": no_change,  # validation error of predicting s' = s, per task
        "runs": runs,
        "table": markdown_table(headers, rows),
    }


def _checkpoints(steps: int) -> list[int]:
    return sorted({s for s in (200, 400, 800) if s < steps} | {steps})


def warm_returns(
    seed: int, warm_iters: list[int], episodes: int, n_random: int, steps: int, max_steps: int
) -> dict[str, Any]:
    """Push task-0 episode returns of MPC with the reference CEM and with warm starts, on one model.

    The model is the MLP baseline's (method single) fitted to random-action data: a short fit, and the
    planner is the same whatever learner made the weights. Every planner gets the same reset seeds; the
    reward is the env's; ms per action time the plan only."""
    import gymnasium as gym

    algo = HyperCRL(HyperCRLConfig(family="push", method="single", n_tasks=1, seed=seed))
    data = _random_data(algo.env_ids[0], algo, n_random, stream_seed(seed, 0, 1))
    fit = fit_tasks(algo, [data], steps, steps)
    env = gym.make(algo.env_ids[0])
    runs: dict[str, dict[str, Any]] = {}
    for warm in [None, *warm_iters]:
        name = "reference CEM" if warm is None else f"warm start + {warm} refits"
        algo.config.warm_iters = warm
        policy = algo.policy(0, seed=stream_seed(seed, 0, 7))
        returns, plan_s = [], []
        for episode in range(episodes):
            env.reset(seed=stream_seed(seed, episode, 8))
            policy.reset()
            total, done, t = 0.0, False, 0
            while not done and t < max_steps:
                t0 = time.perf_counter()
                action = policy.act(env.unwrapped.get_state())
                plan_s.append(time.perf_counter() - t0)
                _, reward, terminated, truncated, _ = env.step(np.clip(action, -1, 1))
                total, done, t = total + float(reward), terminated or truncated, t + 1
            returns.append(total)
        runs[name] = {
            "returns": returns,
            "mean": float(np.mean(returns)),
            "ci95": float(1.96 * np.std(returns, ddof=1) / np.sqrt(len(returns))),
            "ms_per_action_median": 1e3 * statistics.median(plan_s),
        }
        print(f"{name}: return {runs[name]['mean']:.2f} +- {runs[name]['ci95']:.2f}", flush=True)
    algo.config.warm_iters = None
    rows = [[name, r["mean"], r["ci95"], r["ms_per_action_median"]] for name, r in runs.items()]
    headers = ["push task 0 planner", "mean episode return", "95% CI half-width", "ms per action"]
    return {
        "budget": {"n_random": n_random, "fit_steps": steps, "episodes": episodes, "max_steps": max_steps},
        "model_validation_error": fit["validation_curves"][0][-1][1],
        "runs": runs,
        "table": markdown_table(headers, rows),
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


def combine(paths: list[Path]) -> dict[str, Any]:
    """Parts of one comparison run as separate jobs (``compare --seeds S --name PART``), merged: every part
    must have the same family, budget and methods, and no seed may appear twice."""
    parts = [json.loads(path.read_text()) for path in paths]
    first = parts[0]
    for path, part in zip(paths, parts, strict=True):
        if (part["family"], part["budget"], list(part["runs"])) != (
            first["family"], first["budget"], list(first["runs"]),
        ):  # fmt: skip
            raise SystemExit(f"combine: {path} ran another family, budget or methods than {paths[0]}")
    seeds = [seed for part in parts for seed in part["seeds"]]
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"combine: a seed appears in two parts ({seeds})")
    runs = {method: [run for part in parts for run in part["runs"][method]] for method in first["runs"]}
    methods = [m for m in runs if m != "single"]
    return {
        **{k: v for k, v in first.items() if k not in ("seeds", "runs", "table")},
        "commit": ", ".join(sorted({part["commit"] for part in parts})),
        "parts": [
            {"file": path.name, "seeds": part["seeds"], "commit": part["commit"]}
            for path, part in zip(paths, parts, strict=True)
        ],
        "seeds": seeds,
        "runs": runs,
        "table": summary_table(runs, methods),
    }


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
    parser.add_argument("part", choices=("latency", "compare", "lr", "warm", "combine"))
    parser.add_argument("--seed", type=int, default=777)  # the first of HyperCRL's run-script seeds
    parser.add_argument("--seeds", default="777,855,1045", help="compare: HyperCRL's run-script seeds")
    parser.add_argument("--family", default="push", choices=("push", "door", "cheetah"))
    parser.add_argument("--repeats", type=int, default=10, help="latency: batched plans timed")
    parser.add_argument("--methods", default="hypercrl,finetune")
    parser.add_argument("--warm-iters", default="1,2", help="latency, warm: warm-start refits")
    parser.add_argument("--episodes", type=int, default=10, help="warm: episodes per planner")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="lr: hypernetwork learning rates")
    parser.add_argument("--steps", type=int, default=800, help="lr: updates per task")
    parser.add_argument("--log-every", type=int, default=100, help="lr: updates between validation errors")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--out", default="/tmp/robocl_hypercrl_bench", help="compare: run dirs (under <name>/)"
    )
    parser.add_argument("--name", default="", help="result file name (default hypercrl_<part>[_<family>])")
    parser.add_argument("--parts", default="", help="combine: compare results, comma-separated JSON paths")
    for key, value in SMALL_BUDGET.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=value)
    for key in ("hidden", "hnet_hidden"):  # e.g. 200,200: smaller than the family's reference on a CPU
        parser.add_argument("--" + key.replace("_", "-"), help="widths, comma-separated (default: reference)")
    parser.add_argument(
        "--early-stop-fraction", type=float, default=0.0,
        help="compare: share of each task's validation transitions that selects each session's weights",
    )  # fmt: skip
    parser.add_argument("--early-stop-every", type=int, default=50, help="compare: updates between scores")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info, load_start = run_info(args.seed), os.getloadavg()
    if args.part == "combine":
        if not args.name or not args.parts:
            parser.error("combine needs --parts and --name for the merged file")
        result = combine([Path(p) for p in args.parts.split(",")])
        print(result["table"])
        print(f"wrote {write_result(args.name, result)}")
        return
    if args.part == "compare":
        budget = {k: getattr(args, k) for k in SMALL_BUDGET}
        if args.early_stop_fraction:  # budgets without it keep the keys of the earlier results
            budget.update(
                early_stop_fraction=args.early_stop_fraction, early_stop_every=args.early_stop_every
            )
        for key in ("hidden", "hnet_hidden"):
            if getattr(args, key):
                budget[key] = _widths(getattr(args, key))
        seeds = [int(x) for x in args.seeds.split(",")]
        name = args.name or f"hypercrl_{args.family}"
        out = Path(args.out) / name  # runs of other budgets (names) may share --out
        result = compare(args.family, seeds, args.methods.split(","), budget, out)
        table = result["table"]
        for method in result["runs"]:  # the first seed's per-task curves
            src = out / args.family / f"seed{seeds[0]}" / method / "curves.png"
            (RESULTS / f"{name}_curves_{method}.png").write_bytes(src.read_bytes())
        path = write_result(name, {**info, "budget": budget, **json.loads(json.dumps(result, default=float))})
    else:
        if args.part == "lr":
            lrs = [float(x) for x in args.lrs.split(",")]
            sizes = {k: _widths(getattr(args, k)) for k in ("hidden", "hnet_hidden") if getattr(args, k)}
            result = lr_study(
                args.family, lrs, args.seed, args.n_tasks, args.n_random, args.steps, args.log_every, sizes
            )
            name = f"hypercrl_lr_{args.family}"
        elif args.part == "warm":
            warm = [int(w) for w in args.warm_iters.split(",")]
            result = warm_returns(
                args.seed, warm, args.episodes, args.n_random, args.steps, args.eval_max_steps
            )
            name = "hypercrl_warm_start"
        else:
            result = latency(args.seed, args.repeats, [int(w) for w in args.warm_iters.split(",")])
            rows = [
                [label, ms, result["gflop_per_action"][label], result["gflop_per_action"][label] / ms * 1e3]
                for label, ms in result["ms_per_action_median"].items()
            ]
            headers = ["planner, push reference sizes", "ms per MPC action", "GFLOP per action", "GFLOP/s"]
            result["table"] = markdown_table(headers, rows)
            name = "hypercrl_latency" + ("" if args.threads == 1 else f"_threads{args.threads}")
        # timings on a shared machine mean little without its load beside them
        load = {"start": load_start, "end": os.getloadavg()}
        table, path = (
            result["table"],
            write_result(args.name or name, {**info, "load_1_5_15min": load, **result}),
        )
    print(table)
    print(f"wrote {path}")


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


if __name__ == "__main__":
    main()
