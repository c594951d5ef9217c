"""Symphony learning curves beside Stable-Baselines3 SAC, same env steps, same evaluation seeds.

    python -m benchmarks.symphony --device cuda            # the paper-sized run (S3 defaults), on a GPU
    python -m benchmarks.symphony --envs Walker2d-v5 --name symphony_walker2d --steps 40000 \
        --hidden 128 --n-q 32 --batch-size 96 --n-explore 2560 --tile 8 --threads 1   # a 2-core CPU budget

The CPU budget shrinks the networks by S3's own rules (h = 512 -> 128, n_q = h / 4 = 32 nodes per critic,
batch = number of nodes = 96) and the buffer to half the run: S3's 50x tiling sizes it for 3M-step runs,
and at 50x of 2,560 exploration steps (128k slots) 81% of a 40k-step run's samples would be exploration
copies; 8x (20,480 slots) gives 21%, and none once the run passes 23k steps.

Records the deterministic evaluation return at fixed env-step marks (exploration steps included in the
count and stated), wall time per 1k env steps, and the paper's anchor (S3 reaches an average evaluation
return of 5,000 on Humanoid at ~240k steps, 10 seeds, Humanoid-v4). SAC needs the ``bench`` extra
(``pip install robocl[bench]``); without it the SAC rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
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
SAC_NOTE = "stable-baselines3 SAC, default hyper-parameters, learning_starts = n_explore"


def run_symphony(env_id: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = SymphonyConfig(
        seed=seed,
        n_explore=args.n_explore,
        tile=args.tile,
        hidden=args.hidden,
        n_q=args.n_q,
        batch_size=args.batch_size,
    )
    online = OnlineLoopConfig(
        env=env_id,
        steps=args.steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.steps,
        device=args.device,
        threads=args.threads,
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
    return {"curve": curve, "wall_s": wall, "exploration_steps": config.n_explore}


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

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            n = self.num_timesteps
            if n in marks:
                out = tmp / f"sac_{env_id}_seed{seed}" / f"{n:08d}"
                curve[n] = evaluate(_SB3Policy(self.model), lambda task: out / task)["mean_return"]
            return True

    model = SAC("MlpPolicy", flat_env(env_id), seed=seed, device=args.device, learning_starts=args.n_explore)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=Evaluate())
    return {"curve": curve, "wall_s": time.perf_counter() - start, "exploration_steps": args.n_explore}


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
    parser.add_argument("--name", default="symphony", help="result name: <name>.json and <name>.png")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-sac", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import stable_baselines3  # noqa: F401

        sac_note = None if not args.no_sac else "skipped (--no-sac)"
    except ImportError:
        sac_note = "skipped: stable-baselines3 is not installed (pip install robocl[bench])"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.envs.split(","):
            for seed in range(args.seeds):
                runs = results.setdefault(env_id, {})
                runs.setdefault("symphony", []).append(run_symphony(env_id, seed, args, Path(tmp)))
                if sac_note is None:
                    runs.setdefault("sac", []).append(run_sac(env_id, seed, args, Path(tmp)))
                # Rewritten after every seed, so a budget cut short still leaves its finished runs.
                table = _report(args, results, sac_note)
    print(table)
    print(f"exploration steps (counted in env steps): {args.n_explore}; SAC: {sac_note or SAC_NOTE}")
    print(f"wrote {RESULTS / args.name}.json and .png")


def _report(args: argparse.Namespace, results: dict[str, Any], sac_note: str | None) -> str:
    rows, marks = [], sorted({m for e in results.values() for r in e["symphony"] for m in r["curve"]})
    for env_id, methods in results.items():
        for method, runs in methods.items():
            per_1k = float(np.mean([1000 * r["wall_s"] / args.steps for r in runs]))
            for mark in marks:
                values = [r["curve"][mark] for r in runs if mark in r["curve"]]
                rows.append(
                    [env_id, method, mark, float(np.mean(values)), float(np.std(values)), len(values), per_1k]
                )
    headers = ["env", "method", "env steps", "mean return", "std", "seeds", "wall s / 1k steps"]
    table = markdown_table(headers, rows)
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
