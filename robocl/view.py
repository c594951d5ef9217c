"""``robocl view``: look at one stored episode, as ``lerobot-dataset-viz`` does for LeRobot datasets.

    robocl view STORE --episode I [--out DIR]

writes ``<store>_episode_<I>.mp4`` (every camera side by side, with the instruction, step, reward and
success drawn under the frames; the frames ``robocl eval --video`` writes) and ``<store>_episode_<I>.png``
(the episode's state, action, reward and flag features over time, one panel each, a line per dimension
labelled with the feature's names).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from robocl.eval.video import episode_frames, write_mp4
from robocl.store import Episode, TrajectoryStore

#: Panels list at most this many dimensions by name; wider features are drawn unlabelled.
MAX_LEGEND = 12


def view_episode(store: TrajectoryStore, index: int, out_dir: str | Path) -> list[Path]:
    """Write the episode's MP4 (if the store has cameras) and its curves PNG; returns the files written."""
    if not -store.n_episodes <= index < store.n_episodes:
        raise ValueError(f"--episode {index}: {store.location} has episodes 0-{store.n_episodes - 1}")
    episode = store.episode(index)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(store.location).stem}_episode_{episode.index}"
    written = []
    cameras = [k for k, f in store.features.items() if f.is_image]
    if cameras:
        success = episode.steps["success"] if "success" in store.features else None
        frames = episode_frames(episode.steps, episode.final_obs, cameras, task=episode.task, success=success)
        written.append(write_mp4(out_dir / f"{stem}.mp4", frames, store.fps))
    written.append(_plot_curves(store, episode, out_dir / f"{stem}.png"))
    return written


def _plot_curves(store: TrajectoryStore, episode: Episode, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    keys = [k for k, f in store.features.items() if f.kind in ("state", "action", "reward", "flag")]
    seconds = np.arange(len(episode)) / store.fps
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        values = np.asarray(episode[key], np.float64).reshape(len(episode), -1)
        names = store.features[key].names or [str(i) for i in range(values.shape[1])]
        for dim in range(values.shape[1]):
            ax.plot(seconds, values[:, dim], label=names[dim] if values.shape[1] > 1 else None)
        ax.set_ylabel(key, fontsize=8)
        if 1 < values.shape[1] <= MAX_LEGEND:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    outcome = {True: "succeeded", False: "failed", None: "success unknown"}[episode.success]
    axes[0, 0].set_title(
        f"{store.location} episode {episode.index}: {episode.task or ''} ({outcome})", fontsize=9
    )
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    with TrajectoryStore.open(args.store) as store:
        for path in view_episode(store, args.episode, args.out):
            print(f"wrote {path}")
    return 0


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``robocl view`` (``func=run``)."""
    p.add_argument("store", help="store path or URL")
    p.add_argument("--episode", type=int, required=True, help="episode index (negative: from the end)")
    p.add_argument("--out", default=".", help="folder for the MP4 and PNG (default: here)")
    p.set_defaults(func=run)
