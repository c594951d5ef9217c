"""Symphony learning curves beside Stable-Baselines3 SAC, same env steps, same evaluation seeds.

    python -m benchmarks.symphony --device cuda            # the paper-sized run (S3 defaults), on a GPU
    python -m benchmarks.symphony --envs Walker2d-v5 --name symphony_walker2d --steps 40000 \
        --hidden 128 --n-q 32 --batch-size 96 --n-explore 2560 --tile 8 --threads 1 --compile  # 2-core CPU
    python -m benchmarks.symphony --speed --baseline 5fbb8a4   # update and env-step speed vs that commit
    python -m benchmarks.symphony --speed --device cuda        # updates/s on a GPU: eager, compiled, graphed

The CPU budget shrinks the networks by S3's own rules (h = 512 -> 128, n_q = h / 4 = 32 nodes per critic,
batch = number of nodes = 96) and the buffer to half the run: S3's 50x tiling sizes it for 3M-step runs,
and at 50x of 2,560 exploration steps (128k slots) 81% of a 40k-step run's samples would be exploration
copies; 8x (20,480 slots) gives 21%, and none once the run passes 23k steps.

``--speed`` times instead of learning, on one thread, beside the code of ``--baseline`` (a git commit) in the
same run: milliseconds per update at the CPU budget's size and the paper's (old, new and new with
``torch.compile`` take turns in one process on the same replay; medians), and wall time per env step with
its updates in short Walker2d runs (old, new, new compiled and SB3 SAC take turns, one fresh process each,
timed after the first 200 training steps so a compile is not counted; no evaluation). Writes
``<name>_speed.json``; the load average is recorded beside the numbers, as a shared machine moves them all.

Records the deterministic evaluation return at fixed env-step marks (exploration steps included in the
count and stated), wall time per 1k env steps with and without the evaluations (Symphony evaluates twice
per mark, deterministically and with the noise on; SAC once), and the paper's anchor (S3 reaches an average
evaluation return of 5,000 on Humanoid at ~240k steps, 10 seeds, Humanoid-v4). SAC needs the ``bench`` extra
(``pip install robocl[bench]``); without it the SAC rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, markdown_table, run_info, write_result
from robocl.algos.symphony import SymphonyConfig
from robocl.eval.evaluate import EnvEvaluation
from robocl.features import flatten_obs
from robocl.run.layout import RunDir
from robocl.run.online import make_env
from robocl.run.train import OnlineLoopConfig, train_symphony

PAPER_ANCHOR = {"env": "Humanoid-v4", "return": 5000, "env_steps": 240_000, "seeds": 10}
DIAGNOSTICS = ("strength", "action_abs", "action_abs_above_half", "noisy/mean_return")
SAC_NOTE = "stable-baselines3 SAC, default hyper-parameters, learning_starts = n_explore"


def run_symphony(env_id: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = SymphonyConfig(
        seed=seed,
        n_explore=args.n_explore,
        tile=args.tile,
        hidden=args.hidden,
        n_q=args.n_q,
        batch_size=args.batch_size,
        swaddle_weight=args.swaddle_weight,
        baseline=args.advantage_baseline,
    )
    online = OnlineLoopConfig(
        env=env_id,
        steps=args.steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.steps,
        device=args.device,
        threads=args.threads,
        compile=args.compile,
    )
    run = RunDir(root / f"symphony_{env_id}_{seed}")
    start = time.perf_counter()
    train_symphony(config, online, run.path, progress=False)
    wall = time.perf_counter() - start
    # The loop counts updates: update u is env step n_explore + u / updates_per_step.
    curve = {
        config.n_explore + step // config.updates_per_step: json.loads(path.read_text())["aggregate"][
            "mean_return"
        ]
        for step, path in run.evaluations("online")
    }
    # What each evaluation also logged: the strength S and |a| / a_max the deterministic policy acted with,
    # and the return with the training noise on (robocl.run.train.train_symphony).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run.tb("online")))
    scalars.Reload()
    diagnostics: dict[str, dict[int, float]] = {}
    for name in DIAGNOSTICS:
        for event in scalars.Scalars(f"eval/{name}"):
            diagnostics.setdefault(name, {})[config.n_explore + event.step // config.updates_per_step] = (
                event.value
            )
    # Symphony evaluates twice per mark (deterministic, then with the noise on) and SAC once: the speed
    # comparison is the wall time less the evaluations (train_s).
    eval_s = sum(event.value for event in scalars.Scalars("perf/eval_s"))
    return {
        "curve": curve,
        "diagnostics": diagnostics,
        "wall_s": wall,
        "train_s": wall - eval_s,
        "exploration_steps": config.n_explore,
    }


def evaluation(env_id: str, seed: int, args: argparse.Namespace) -> EnvEvaluation:
    """Symphony's evaluations: the same episodes and reset seeds for both methods."""
    return EnvEvaluation(env_id, args.eval_episodes, seed=10**9 + 1000 * seed)


class _SB3Policy:
    def __init__(self, model: Any) -> None:
        self.model = model

    def reset(self) -> None:
        """SAC's policy is memoryless."""

    def predict(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        return self.model.predict(flatten_obs(obs), deterministic=True)[0]


def run_sac(env_id: str, seed: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    curve: dict[int, float] = {}
    # Symphony is evaluated every eval_every env steps after its exploration, and at the end: SAC too.
    marks = set(range(args.n_explore, args.steps + 1, args.eval_every or args.steps)) | {args.steps}
    evaluate = evaluation(env_id, seed, args)
    eval_s = 0.0

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            nonlocal eval_s
            n = self.num_timesteps
            if n in marks:
                start = time.perf_counter()
                out = tmp / f"sac_{env_id}_seed{seed}" / f"{n:08d}"
                curve[n] = evaluate(_SB3Policy(self.model), lambda task: out / task)["mean_return"]
                eval_s += time.perf_counter() - start
            return True

    model = SAC("MlpPolicy", flat_env(env_id), seed=seed, device=args.device, learning_starts=args.n_explore)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=Evaluate())
    wall = time.perf_counter() - start
    return {"curve": curve, "wall_s": wall, "train_s": wall - eval_s, "exploration_steps": args.n_explore}


def flat_env(env_id: str) -> Any:
    """SAC's env: observations flattened as robocl's policies flatten them (arm tasks: proprio, object)."""
    import gymnasium as gym

    env = make_env(env_id)
    dim = sum(int(np.prod(s.shape)) for s in env.observation_space.spaces.values())
    space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
    return gym.wrappers.TransformObservation(env, flatten_obs, space)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="Humanoid-v5,Walker2d-v5", help="comma-separated gymnasium ids")
    parser.add_argument("--steps", type=int, default=300_000, help="env steps per run, exploration included")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=10_000, help="env steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--n-explore", type=int, default=SymphonyConfig.n_explore, help="exploration steps")
    parser.add_argument("--tile", type=int, default=SymphonyConfig.tile, help="buffer = tile x n_explore")
    parser.add_argument("--hidden", type=int, default=SymphonyConfig.hidden)
    parser.add_argument("--n-q", type=int, default=SymphonyConfig.n_q, help="nodes per critic")
    parser.add_argument("--batch-size", type=int, default=SymphonyConfig.batch_size)
    parser.add_argument("--swaddle-weight", type=float, default=SymphonyConfig.swaddle_weight)
    parser.add_argument(
        "--advantage-baseline", default=SymphonyConfig.baseline, choices=("per_sample", "scalar")
    )
    parser.add_argument("--name", default="symphony", help="result name: <name>.json and <name>.png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-sac", action="store_true")
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs <name>.json already holds, run the missing seeds"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile Symphony's loss (see --speed)")
    parser.add_argument("--speed", action="store_true", help="time updates and env steps, not returns")
    parser.add_argument("--baseline", default="5fbb8a4", help="--speed: the commit to compare against")
    parser.add_argument("--repeats", type=int, default=5, help="--speed: alternations of old and new")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed:
        speed(args)
        return
    try:
        import stable_baselines3  # noqa: F401

        sac_note = None if not args.no_sac else "skipped (--no-sac)"
    except ImportError:
        sac_note = "skipped: stable-baselines3 is not installed (pip install robocl[bench])"
    results = _finished_runs(args) if args.resume else {}
    commit = run_info(0)["commit"]
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.envs.split(","):
            for seed in range(args.seeds):
                runs = results.setdefault(env_id, {})
                if seed < len(runs.get("symphony", [])):
                    continue
                runs.setdefault("symphony", []).append(
                    {**run_symphony(env_id, seed, args, Path(tmp)), "commit": commit}
                )
                if sac_note is None:
                    runs.setdefault("sac", []).append(
                        {**run_sac(env_id, seed, args, Path(tmp)), "commit": commit}
                    )
                # Rewritten after every seed, so a budget cut short still leaves its finished runs.
                _report(args, results, sac_note)
    print(_report(args, results, sac_note))  # also when --resume found every seed finished
    print(f"exploration steps (counted in env steps): {args.n_explore}; SAC: {sac_note or SAC_NOTE}")
    print(f"wrote {RESULTS / args.name}.json and .png")


# ---------------------------------------------------------------------------------------------- speed
SIZES = {"cpu budget": (128, 32, 96), "paper": (512, 128, 384)}  # hidden, nodes per critic, batch
SPEED_EXPLORE, SPEED_TILE = 256, 80  # a short exploration, and the CPU budget's buffer (20,480 slots)
SPEED_FROM, SPEED_STEPS = 456, 2256  # env steps are timed from SPEED_FROM (past a compile) to the last one
# One timed run in a fresh process (argv[1]: its settings as JSON); prints {"ms_per_step": ...}, the wall
# time per env step, env step and its updates together, between env steps SPEED_FROM and SPEED_STEPS - 1.
SYMPHONY_RUN = """
import json, sys, tempfile, time, torch
from robocl.algos.symphony import SymphonyConfig
from robocl.run import online
from robocl.run.train import OnlineLoopConfig, train_symphony
a = json.loads(sys.argv[1])
torch.set_num_threads(1)
marks, sample = {}, online.OnlineSource.sample
def timed(self, batch_size):
    marks.setdefault(self.env_steps, time.perf_counter())
    return sample(self, batch_size)
online.OnlineSource.sample = timed
config = SymphonyConfig(hidden=a["hidden"], n_q=a["n_q"], batch_size=a["batch"], n_explore=a["explore"],
                        tile=a["tile"])
loop = OnlineLoopConfig(env=a["env"], steps=a["steps"], eval_every=0, eval_episodes=0,
                        checkpoint_every=a["steps"], threads=1, **a["loop"])
with tempfile.TemporaryDirectory() as tmp:
    train_symphony(config, loop, tmp + "/run", progress=False)
last = a["steps"] - 1
print(json.dumps({"ms_per_step": 1000 * (marks[last] - marks[a["from"]]) / (last - a["from"])}))
"""
SAC_RUN = """
import json, sys, time, torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from benchmarks.symphony import flat_env
a = json.loads(sys.argv[1])
torch.set_num_threads(1)
marks = {}
class Mark(BaseCallback):
    def _on_step(self):
        marks.setdefault(self.num_timesteps, time.perf_counter())
        return True
model = SAC("MlpPolicy", flat_env(a["env"]), seed=0, device="cpu", learning_starts=a["explore"])
model.learn(total_timesteps=a["steps"], callback=Mark())
last = a["steps"] - 1
print(json.dumps({"ms_per_step": 1000 * (marks[last] - marks[a["from"]]) / (last - a["from"])}))
"""


def speed(args: argparse.Namespace) -> None:
    """Old (``--baseline``) against new: ms per update at both sizes, then wall time per env step. On a GPU
    (``--device cuda``): this code's updates alone (:func:`cuda_speed`)."""
    if args.device.startswith("cuda"):
        cuda_speed(args)
        return
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "baseline"
        old_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "robocl", "envs"], cwd=root,
                                 check=True, capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        load = [os.getloadavg()[0]]
        updates = {name: _update_ms(_baseline_and_new(old_tree), size, args) for name, size in SIZES.items()}
        load.append(os.getloadavg()[0])
        steps = _env_step_ms(root, old_tree, args)
        load.append(os.getloadavg()[0])
    variants = ["old", "new", "new compiled"]
    rows = [
        [f"update, {name}", *(u[v] for v in variants), "", *(u[v] / u["old"] for v in variants[1:])]
        for name, u in updates.items()
    ]
    rows.append(["env step, cpu budget", *(steps[v] for v in variants), steps.get("sac", ""),
                 *(steps[v] / steps["old"] for v in variants[1:])])  # fmt: skip
    headers = ["ms per", *variants, "SAC", "new / old", "compiled / old"]
    table = markdown_table(headers, rows)
    best = min(steps["new"], steps["new compiled"])
    payload = {
        **run_info(0),
        "args": vars(args),
        "baseline": args.baseline,
        "load_average_1min": load,
        "updates_ms": updates,
        "env_step_ms": steps,
        "floor": {
            "env step new <= 0.5 old": best <= 0.5 * steps["old"],
            "env step new <= SAC": "sac" in steps and best <= steps["sac"],
        },
        "table": table,
    }
    write_result(f"{args.name}_speed", payload)
    print(table)
    print(f"1-min load average at start / after updates / end: {load}")
    print(f"wrote {RESULTS / args.name}_speed.json")


def cuda_speed(args: argparse.Namespace) -> None:
    """Updates per second on a GPU at both sizes: eager, compiled, and compiled with CUDA graphs
    (``Symphony(cuda_graphs=True)``; the loss only: sampling, the optimiser and Polyak stay eager, as the
    loop runs them). Each update still syncs once for its logged terms, as in training. Writes
    ``<name>_cuda_speed.json``."""
    from robocl.algos import symphony

    variants = {"eager": {}, "compiled": {"compile": True}, "compiled, CUDA graphs": {"cuda_graphs": True}}
    headers = ["size", *(f"updates/s {v}" for v in variants), *(f"ms {v}" for v in variants)]
    updates: dict[str, Any] = {}
    for name in ("paper", "cpu budget"):  # the paper's size first; the JSON is rewritten after each size
        try:
            updates[name] = _update_ms({k: (symphony, v) for k, v in variants.items()}, SIZES[name], args)
        except RuntimeError as exc:  # CUDA graphs may refuse the loss: the other two are still measured
            rest = {k: (symphony, v) for k, v in variants.items() if "cuda_graphs" not in v}
            updates[name] = {**_update_ms(rest, SIZES[name], args), "error": str(exc).splitlines()[0]}
        rows = [[name, *(u.get(f"updates_per_s {v}") for v in variants), *(u.get(v) for v in variants)]
                for name, u in updates.items()]  # fmt: skip
        table = markdown_table(headers, rows)
        payload = {**run_info(0), "args": vars(args), "gpu": torch.cuda.get_device_name(),
                   "updates_ms": updates, "table": table}  # fmt: skip
        write_result(f"{args.name}_cuda_speed", payload)
        print(table, flush=True)
    print(f"wrote {RESULTS / args.name}_cuda_speed.json")


def _baseline_and_new(old_tree: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The baseline's Symphony module (eager) and this one's, eager and compiled."""
    from robocl.algos import symphony as new

    spec = importlib.util.spec_from_file_location("symphony_baseline", old_tree / "robocl/algos/symphony.py")
    assert spec is not None and spec.loader is not None
    old = sys.modules["symphony_baseline"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    return {"old": (old, {}), "new": (new, {}), "new compiled": (new, {"compile": True})}


def _update_ms(
    variants: dict[str, tuple[Any, dict[str, Any]]], size: tuple[int, int, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Median ms per update of each variant (label -> (module, Symphony keyword arguments)), taking turns
    in this process on the same fixed replay."""
    hidden, n_q, batch = size
    # About 1 s of updates per turn on a CPU core; on a GPU, where an update costs about the same at both
    # sizes (kernel launches), 200, after more warm-up calls (CUDA graphs are recorded on the third).
    on_cpu = args.device == "cpu"
    n = max(5, 2_000_000 // (hidden * hidden * batch // 100)) if on_cpu else 200
    learners = {}
    for label, (module, options) in variants.items():
        config = module.SymphonyConfig(hidden=hidden, n_q=n_q, batch_size=batch, n_explore=2560, tile=8)
        algo = module.Symphony(config, module.SymphonySpec(obs_dim=17, action_dim=6), args.device, **options)
        feed = algo.feed()
        gen = torch.Generator().manual_seed(0)
        m = config.n_explore
        rows = {"obs": torch.randn(m, 17, generator=gen), "action": torch.rand(m, 6, generator=gen) * 2 - 1,
                "reward": torch.randn(m, generator=gen), "next_obs": torch.randn(m, 17, generator=gen),
                "terminated": torch.zeros(m, dtype=torch.bool)}  # fmt: skip
        feed.fill({k: v.numpy() for k, v in rows.items()}, np.arange(m))
        for _ in range(3 if on_cpu else 10):  # warm-up: first-call allocations, caches and the compile
            algo.update(feed.sample(batch))
        learners[label] = (algo, feed)
    times: dict[str, list[float]] = {label: [] for label in learners}
    for _ in range(args.repeats):
        for label, (algo, feed) in learners.items():
            start = time.perf_counter()
            for _ in range(n):
                algo.update(feed.sample(batch))
            times[label].append(1000 * (time.perf_counter() - start) / n)
    medians = {label: statistics.median(t) for label, t in times.items()}
    per_s = {f"updates_per_s {label}": 1000 / ms for label, ms in medians.items()}
    return {**medians, **per_s, "samples": times, "updates_per_turn": n}


def _env_step_ms(root: Path, old_tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Median wall ms per env step (with its updates) of short Walker2d runs, one fresh process each."""
    hidden, n_q, batch = SIZES["cpu budget"]
    settings = {"env": "Walker2d-v5", "steps": SPEED_STEPS, "from": SPEED_FROM, "explore": SPEED_EXPLORE,
                "tile": SPEED_TILE, "hidden": hidden, "n_q": n_q, "batch": batch, "loop": {}}  # fmt: skip
    runs = {
        "old": (old_tree, SYMPHONY_RUN, settings),
        "new": (root, SYMPHONY_RUN, settings),
        "new compiled": (root, SYMPHONY_RUN, settings | {"loop": {"compile": True}}),
    }
    if not args.no_sac and importlib.util.find_spec("stable_baselines3") is not None:
        runs["sac"] = (root, SAC_RUN, settings)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(max(1, args.repeats // 2)):
        for label, (tree, code, run_settings) in runs.items():
            env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'envs'}", "OMP_NUM_THREADS": "1"}
            out = subprocess.run([sys.executable, "-c", code, json.dumps(run_settings)], cwd=tree, env=env,
                                 check=True, capture_output=True, text=True).stdout  # fmt: skip
            times[label].append(json.loads(out.splitlines()[-1])["ms_per_step"])
    medians = {label: statistics.median(t) for label, t in times.items()}
    return {**medians, "samples": times, "timed_env_steps": [SPEED_FROM, SPEED_STEPS - 1]}


# Arguments a resumed benchmark must share with the runs it keeps (the rest only name or schedule the job).
RESUME_MUST_MATCH = ("steps", "eval_every", "eval_episodes", "n_explore", "tile", "hidden", "n_q",
                     "batch_size", "swaddle_weight", "advantage_baseline", "no_sac")  # fmt: skip


def _finished_runs(args: argparse.Namespace) -> dict[str, Any]:
    """The runs of ``<name>.json`` whose seeds finished, for ``--resume``; each keeps the commit it ran at."""
    path = RESULTS / f"{args.name}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    differ = [k for k in RESUME_MUST_MATCH if old["args"].get(k, getattr(args, k)) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--resume: {path} ran with other {', '.join(differ)}; rerun without --resume")
    results: dict[str, Any] = {}
    for env_id, methods in old["results"].items():
        n = min(len(runs) for runs in methods.values())  # a seed counts once both methods finished it
        for method, runs in methods.items():
            results.setdefault(env_id, {})[method] = [
                {**run, "commit": run.get("commit", old["commit"]), **_int_keys(run)} for run in runs[:n]
            ]
    return results


def _int_keys(run: dict[str, Any]) -> dict[str, Any]:
    """A run's curve and diagnostics keyed by env step again (JSON made the keys strings)."""
    out = {"curve": {int(k): v for k, v in run["curve"].items()}}
    if "diagnostics" in run:
        out["diagnostics"] = {d: {int(k): v for k, v in c.items()} for d, c in run["diagnostics"].items()}
    return out


def _report(args: argparse.Namespace, results: dict[str, Any], sac_note: str | None) -> str:
    rows, marks = [], sorted({m for e in results.values() for r in e["symphony"] for m in r["curve"]})
    for env_id, methods in results.items():
        for method, runs in methods.items():
            per_1k = float(np.mean([1000 * r["wall_s"] / args.steps for r in runs]))
            # Runs from before train_s was recorded leave the training-only column empty.
            train = [1000 * r["train_s"] / args.steps for r in runs if "train_s" in r]
            train_per_1k = float(np.mean(train)) if len(train) == len(runs) else None
            for mark in marks:
                values = [r["curve"][mark] for r in runs if mark in r["curve"]]
                mean, std = float(np.mean(values)), float(np.std(values))
                rows.append([env_id, method, mark, mean, std, len(values), per_1k, train_per_1k])
    headers = [
        "env",
        "method",
        "env steps",
        "mean return",
        "std",
        "seeds",
        "wall s / 1k steps",
        "without evaluations",
    ]
    table = markdown_table(headers, rows)
    rows = []
    for env_id, methods in results.items():
        runs = methods["symphony"]
        for mark in marks:
            if all(mark in r["curve"] for r in runs):
                means = [float(np.mean([r["diagnostics"][k][mark] for r in runs])) for k in DIAGNOSTICS]
                rows.append([env_id, mark, *means, float(np.mean([r["curve"][mark] for r in runs]))])
    headers = [
        "env",
        "env steps",
        "S",
        "mean abs(a)/a_max",
        "share abs(a)>a_max/2",
        "return, noise on",
        "return",
    ]
    table += "\n\nSymphony, mean over seeds at each evaluation:\n\n" + markdown_table(headers, rows)
    payload = {
        **run_info(0),
        "args": vars(args),
        "paper_anchor": PAPER_ANCHOR,
        "exploration_steps": args.n_explore,
        "sac": sac_note or SAC_NOTE,
        "results": results,
        "table": table,
    }
    write_result(args.name, payload)
    _plot(results, RESULTS / f"{args.name}.png")
    return table


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (env_id, methods) in zip(axes[0], results.items(), strict=True):
        for method, runs in methods.items():
            marks = sorted(runs[0]["curve"])
            values = np.array([[r["curve"][m] for m in marks] for r in runs])
            ax.plot(marks, values.mean(0), label=method)
            ax.fill_between(marks, values.min(0), values.max(0), alpha=0.2)
        ax.set(title=env_id, xlabel="env steps (exploration included)", ylabel="evaluation return")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
