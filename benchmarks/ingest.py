"""Ingesting a LeRobot v3.0 dataset, and sampling its windows from the store vs decoding them from MP4.

Data: a store of render-like 96x96 RGB frames (benchmarks/store_sampling.py's generator), 20-d state,
7-d action and reward, exported with robocl's LeRobot writer (AV1 crf 30, yuv420p, keyframe every 2
frames, several episodes per MP4) and ingested back. Measured, in the same run:

- export and ingest frames/s; the ingest runs in a child process so that its peak RSS
  (``ru_maxrss``) is the ingest's alone, to compare with the dataset's raw frame bytes;
- PSNR of the ingested frames against the originals (crf 30);
- windows/s (batch 256, n_obs 2, h 16) from the store with ``WindowSampler``, against decoding each
  window's camera frames from the MP4s the way LeRobot's PyAV loader does: open the file, seek to the
  keyframe before the first timestamp, decode (converting every frame) up to the last, keep the closest
  frames. State and action windows come from RAM for the baseline, so it measures video decoding only.

    python -m benchmarks.ingest             # 200 episodes x 200 steps (1.1 GB of raw frames), a few minutes
    python -m benchmarks.ingest --large     # 400 x 200 (2.2 GB raw): peak RSS of the ingest stays bounded
    python -m benchmarks.ingest --episodes 20 --steps 100   # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import markdown_table, run_info, write_result
from benchmarks.store_sampling import ACTION_DIM, IMAGE, STATE_DIM, render_like_frames
from robocl.store import Feature, TrajectoryStore, WindowSampler

CAMERA = "observation.images.front"
ROOT = Path(__file__).resolve().parents[1]


def build_source(path: Path, n_episodes: int, length: int, seed: int) -> tuple[TrajectoryStore, float]:
    """The store to export; built episode by episode, so its RAM stays at one episode."""
    features = {
        "observation.state": Feature("state", "float32", (STATE_DIM,)),
        CAMERA: Feature("rgb", "uint8", IMAGE),
        "action": Feature("action", "float32", (ACTION_DIM,)),
        "reward": Feature("reward", "float32"),
    }
    store = TrajectoryStore.create(path, features, fps=10, overwrite=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for e in range(n_episodes):
        store.add_episode(
            {
                "observation.state": np.cumsum(rng.normal(0, 0.05, (length, STATE_DIM)), axis=0).astype(
                    np.float32
                ),
                CAMERA: render_like_frames(length, rng, offset=e * length),
                "action": rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32),
                "reward": rng.normal(size=length).astype(np.float32),
            },
            task=f"push the block to zone {e % 4}",
            terminated=True,
        )
    return store, time.perf_counter() - t0


def ingest_child(src: str, dest: str) -> None:
    """Run in a fresh process: ingest, then report frames/s and this process's peak RSS as JSON."""
    from robocl.store.convert import ingest

    t0 = time.perf_counter()
    with ingest("lerobot", src, dest, progress=False) as store:
        n = store.n_steps
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"frames": n, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))


def psnr_db(a: TrajectoryStore, b: TrajectoryStore, n_episodes: int) -> dict[str, float]:
    values = []
    for i in range(min(n_episodes, a.n_episodes)):
        x = a.episode(i)[CAMERA].astype(np.float64)
        y = b.episode(i)[CAMERA].astype(np.float64)
        values += (10 * np.log10(255**2 / np.mean((x - y) ** 2, axis=(1, 2, 3)))).tolist()
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "frames": len(values)}


def decode_like_lerobot(path: Path, timestamps: list[float], tolerance_s: float = 1e-4) -> np.ndarray:
    """LeRobot's PyAV path for one item: open, keyframe seek, decode every frame up to the last timestamp."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(min(timestamps) / stream.time_base), stream=stream, backward=True, any_frame=False)
        frames, times = [], []
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(t)
            if t >= max(timestamps):
                break
    times_arr = np.array(times)
    picks = [int(np.argmin(np.abs(times_arr - t))) for t in timestamps]
    if any(abs(times_arr[p] - t) > tolerance_s for p, t in zip(picks, timestamps, strict=True)):
        raise RuntimeError(f"{path}: no frame within tolerance of {timestamps}")
    return np.stack([frames[p] for p in picks])


def video_windows_per_s(root: Path, store: TrajectoryStore, args: argparse.Namespace) -> float:
    """Random windows the LeRobot way: camera frames decoded from the MP4s, low-dim parts from RAM."""
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    rng = np.random.default_rng(args.seed)
    lengths, starts = store.episodes["length"], store.episodes["start"]
    state, action = store.steps("observation.state"), store.steps("action")
    key = f"videos/{CAMERA}/"
    t0 = time.perf_counter()
    for _ in range(args.video_windows):
        e = int(rng.integers(len(rows)))
        t = int(rng.integers(lengths[e]))
        row = rows[e]
        file = (
            root
            / f"videos/{CAMERA}/chunk-{row[key + 'chunk_index']:03d}/file-{row[key + 'file_index']:03d}.mp4"
        )
        obs_t = np.maximum(t + np.arange(1 - args.n_obs, 1), 0)
        frames = decode_like_lerobot(file, [row[key + "from_timestamp"] + k / 10 for k in obs_t])
        obs_state = state[starts[e] + obs_t]
        chunk = action[starts[e] + np.minimum(t + np.arange(args.horizon), lengths[e] - 1)]
        if frames.shape != (args.n_obs, *IMAGE) or len(obs_state) != args.n_obs or len(chunk) != args.horizon:
            raise RuntimeError(f"bad window shapes {frames.shape}, {obs_state.shape}, {chunk.shape}")
    return args.video_windows / (time.perf_counter() - t0)


def store_windows_per_s(store: TrajectoryStore, args: argparse.Namespace) -> dict[str, float]:
    sampler = WindowSampler(store, n_obs=args.n_obs, horizon=args.horizon, seed=args.seed)
    t0 = time.perf_counter()
    sampler.sample(args.batch)
    cold_s = time.perf_counter() - t0
    # One ordered pass reads every shard once; afterwards batches come from the decoded-frame cache.
    t0 = time.perf_counter()
    for lo in range(0, len(sampler), 4096):
        sampler.get_batch(np.arange(lo, min(lo + 4096, len(sampler))))
    fill_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        sampler.sample(args.batch)
        calls += 1
    return {
        "cold_first_batch_s": cold_s,
        "cache_fill_s": fill_s,
        "warm_windows_per_s": calls * args.batch / (time.perf_counter() - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--large", action="store_true", help="400 x 200 episodes: > 2 GB of raw frames")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--n-obs", type=int, default=2)
    parser.add_argument(
        "--video-windows", type=int, default=300, help="windows decoded from MP4 for the baseline"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ingest-child", nargs=2, metavar=("SRC", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest_child:
        ingest_child(*args.ingest_child)
        return
    if args.large:
        args.episodes, args.steps = 400, 200
    from robocl.store.convert import export

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source, build_s = build_source(tmp / "source.zarr", args.episodes, args.steps, args.seed)
        n_frames = source.n_steps
        t0 = time.perf_counter()
        root = export("lerobot", source, tmp / "dataset", progress=False)
        export_s = time.perf_counter() - t0
        mp4_bytes = sum(p.stat().st_size for p in (root / "videos").rglob("*.mp4"))
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.ingest",
                "--ingest-child",
                str(root),
                str(tmp / "ingested.zarr"),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        ingest = json.loads(child.stdout.strip().splitlines()[-1])
        with TrajectoryStore.open(tmp / "ingested.zarr") as store:
            quality = psnr_db(source, store, n_episodes=20)
            sampling = store_windows_per_s(store, args)
            video = video_windows_per_s(root, store, args)
        source.close()

    raw_gb = n_frames * int(np.prod(IMAGE)) / 1e9
    results = {
        "frames": n_frames,
        "raw_frame_gb": raw_gb,
        "mp4_mb": mp4_bytes / 1e6,
        "build_source_frames_per_s": n_frames / build_s,
        "export_frames_per_s": n_frames / export_s,
        "ingest_frames_per_s": ingest["frames"] / ingest["seconds"],
        "ingest_peak_rss_mb": ingest["peak_rss_mb"],
        "psnr_db": quality,
        "store": sampling,
        "video_windows_per_s": video,
        "store_vs_video": sampling["warm_windows_per_s"] / video,
    }
    path = write_result(
        "ingest_large" if args.large else "ingest",
        {**run_info(args.seed), "config": vars(args), "results": results},
    )
    print(
        markdown_table(
            [
                "frames",
                "raw GB",
                "MP4 MB",
                "export frames/s",
                "ingest frames/s",
                "ingest peak RSS MB",
                "PSNR dB mean / min",
            ],
            [
                [
                    n_frames,
                    f"{raw_gb:.2f}",
                    f"{mp4_bytes / 1e6:.1f}",
                    results["export_frames_per_s"],
                    results["ingest_frames_per_s"],
                    f"{ingest['peak_rss_mb']:,.0f}",
                    f"{quality['mean']:.1f} / {quality['min']:.1f}",
                ]
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["read path (batch 256, n_obs 2, h 16)", "windows/s"],
            [
                ["store: WindowSampler, warm", sampling["warm_windows_per_s"]],
                ["MP4: seek + decode per window (LeRobot's PyAV path)", video],
                ["store / MP4", f"{results['store_vs_video']:,.0f}x"],
                ["store: first batch (cold), s", f"{sampling['cold_first_batch_s']:.2f}"],
            ],
        )
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
