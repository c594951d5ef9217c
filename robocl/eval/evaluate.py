"""``robocl eval``: roll a policy out, measure what CO-RFT measures, and leave numbers, videos and data.

Rollouts come from the same engine as ``robocl collect`` (:mod:`robocl.eval.rollout`): vectorised, episode
``i`` reset with ``seed + i`` whatever the number of workers, the real final observation kept. Any gymnasium
id works, including one a user registers for a real robot (``--env my_pkg.robot:RealArm`` style entry points
go through ``gymnasium.register`` first), so simulated and real rollouts are scored by one script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robocl.eval.rollout import rollout_episodes
from robocl.eval.summary import EpisodeResult, episode_result, format_table, summarize, write_eval_info
from robocl.eval.video import episode_frames, write_mp4

VIDEO_CHOICES = ("first", "failures", "successes")


def evaluate(
    policy: Any,
    env_id: str,
    *,
    n_episodes: int,
    out_dir: str | Path,
    positions: str = "seen",
    num_envs: int = 1,
    seed: int = 100_000,
    video: bool = False,
    n_videos: int = 2,
    video_episodes: str = "first",
    record: str | Path | None = None,
    max_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``policy`` (a checkpoint path or an object with reset/predict) and write eval_info.json.

    ``video``: write MP4s of at most ``n_videos`` episodes, the first ones or (``video_episodes``) the first
    failures or successes; each frame shows every camera and the instruction, step, reward and success.
    The default seed (100000) keeps evaluation starts disjoint from collection's (seed 0 upwards). A
    checkpoint is checked against the env before the first step (``force`` skips the check).
    """
    if video_episodes not in VIDEO_CHOICES:
        raise ValueError(f"video_episodes must be one of {VIDEO_CHOICES}, got {video_episodes!r}")
    out_dir = Path(out_dir)
    n_written = 0
    rows: list[EpisodeResult] = []
    store = None
    fps = None
    env_positions: str | None = None  # None for envs without start-position sets
    try:
        for ep in rollout_episodes(
            env_id,
            n_episodes,
            policy=policy,
            seed=seed,
            num_envs=num_envs,
            positions=positions,
            images=video,
            max_steps=max_steps,
            env_kwargs=env_kwargs or {},
            device=device,
            force=force,
            progress=progress,
        ):
            fps, env_positions = ep.fps, ep.positions
            successes = ep.steps["success"] if ep.success is not None else None
            rows.append(episode_result(ep.index, ep.seed, ep.steps["reward"], successes, 1.0 / fps))
            cams = sorted(k for k, f in ep.features.items() if f.is_image)
            wanted = {"first": True, "failures": ep.success is False, "successes": ep.success is True}
            if video and cams and n_written < n_videos and wanted[video_episodes]:
                frames = episode_frames(ep.steps, ep.final_obs, cams, task=ep.task, success=successes)
                write_mp4(out_dir / "videos" / f"episode_{ep.index:03d}.mp4", frames, fps)
                n_written += 1
            if record is not None:
                if store is None:
                    store = _open_record_store(record, ep, env_id)
                store.add_episode(
                    ep.steps,
                    task=ep.task,
                    success=ep.success,
                    terminated=ep.terminated,
                    truncated=ep.truncated,
                    final_obs=ep.final_obs,
                    source=f"eval:{env_id}",
                    source_episode=ep.index,
                    tags=("eval",) if ep.positions is None else ("eval", ep.positions),
                )
    finally:
        if store is not None:
            store.close()
    summary = summarize(rows, seed=seed)
    meta = {
        "env_id": env_id,
        "positions": env_positions,
        "seed": seed,
        "num_envs": num_envs,
        "policy": str(policy) if isinstance(policy, (str, Path)) else type(policy).__name__,
        "fps": fps,
    }
    write_eval_info(out_dir / "eval_info.json", rows, summary, meta)
    title = env_id if env_positions is None else f"{env_id} [{env_positions}]"
    return {"summary": summary, "episodes": rows, "table": format_table(summary, title)}


def parse_video_episodes(text: str, n_episodes: int) -> tuple[str, int]:
    """``--video-episodes``: ``first:N``, ``failures[:N]`` or ``successes[:N]`` -> (which, how many);
    failures and successes default to every one of the ``n_episodes``."""
    which, sep, count = text.partition(":")
    if which not in VIDEO_CHOICES or (sep and not count.isdigit()) or (which == "first" and not sep):
        raise ValueError(f"--video-episodes {text!r}: expected first:N, failures[:N] or successes[:N]")
    return which, int(count) if sep else n_episodes


def _open_record_store(path: str | Path, ep: Any, env_id: str) -> Any:
    """Create the record store with the rollouts' schema (as ``robocl collect`` does), or append to it."""
    from robocl.store import TrajectoryStore

    if Path(path).exists():
        return TrajectoryStore.open(path, "a")
    return TrajectoryStore.create(
        path, ep.features, fps=ep.fps, meta={"env_id": env_id, "recorded_by": "robocl eval"}
    )


@dataclass
class EnvEvaluation:
    """The training loop's periodic evaluation: ``n_episodes`` of ``env_id`` at each position set through
    :func:`evaluate`, one eval_info.json per task (``robocl compare`` reads them), metrics named
    ``<positions>/success_rate`` etc. when there are several position sets."""

    env_id: str
    n_episodes: int = 10
    positions: tuple[str, ...] = ("seen",)
    seed: int = 100_000

    def __call__(self, policy: Any, out_dir: Callable[[str], Path]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for positions in self.positions:
            result = evaluate(
                policy,
                self.env_id,
                n_episodes=self.n_episodes,
                out_dir=out_dir(f"{self.env_id}_{positions}"),
                positions=positions,
                seed=self.seed,
                progress=False,
            )
            summary = result["summary"]
            prefix = f"{positions}/" if len(self.positions) > 1 else ""
            for key in ("success_rate", "mean_return", "cycle_time_mean"):
                if summary.get(key) is not None:
                    metrics[prefix + key] = float(summary[key])
        return metrics
