"""Evaluation throughput: episodes per second of ``robocl eval`` with the scripted expert on each task,
one env vs 2 worker processes, with and without video (96x96 front + wrist cameras, H.264).

    python -m benchmarks.eval_speed                    # every arm task family's first id, ~5 minutes
    python -m benchmarks.eval_speed --ids robocl/PickPlace-v0 --episodes 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from benchmarks.common import markdown_table, run_info, write_result
from robocl.eval.evaluate import evaluate

DEFAULT_IDS = ("robocl/PickPlace-v0", "robocl/Push-Density0-v0", "robocl/Door-Pull-v0")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ids", default=",".join(DEFAULT_IDS), help="comma-separated env ids")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per measurement")
    parser.add_argument("--seed", type=int, default=100_000)
    args = parser.parse_args()

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for env_id in args.ids.split(","):
            entry: dict = {"env_id": env_id}
            for num_envs in (1, 2):
                for video in (False, True):
                    out = Path(tmp) / f"{env_id.replace('/', '_')}_{num_envs}_{video}"
                    t0 = time.perf_counter()
                    result = evaluate(
                        "scripted",
                        env_id,
                        n_episodes=args.episodes,
                        out_dir=out,
                        seed=args.seed,
                        num_envs=num_envs,
                        video=video,
                        n_videos=args.episodes,
                        progress=False,
                    )
                    seconds = time.perf_counter() - t0
                    key = f"{num_envs}env{'_video' if video else ''}"
                    entry[key] = args.episodes / seconds
                    entry["success_rate"] = result["summary"]["success_rate"]
            results.append(entry)
            rows.append(
                [
                    env_id,
                    entry["1env"],
                    entry["2env"],
                    entry["1env_video"],
                    entry["2env_video"],
                    f"{entry['success_rate']:.0%}",
                ]
            )
    path = write_result("eval_speed", {**run_info(args.seed), "config": vars(args), "results": results})
    print(
        markdown_table(
            ["env", "episodes/s, 1 env", "2 workers", "1 env + video", "2 workers + video", "expert success"],
            rows,
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
