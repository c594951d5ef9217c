"""Window sampling throughput of the trajectory store against its baselines, measured in one run.

Data: 200 episodes x 200 steps, 20-d float32 state, 7-d action, reward; case (b) adds one 96x96 RGB camera
with render-like frames (smooth gradients, moving discs, +-2 sensor noise). Windows: batch 256, h = 16,
n_obs = 2, each with observation history, action chunk, rewards and the bootstrap observation history.

Baselines, same data, same run:
- ram ceiling: numpy fancy-index gathers from arrays already in RAM with precomputed row indices;
- naive zarr: per-window slicing of the zarr arrays (``z[t-1:t+1]``, ``z[t:t+16]``), what a simple
  Dataset.__getitem__ does;
- h5py: the same per-window reads from an HDF5 file (1-frame chunks for images, lzf).

The low-dimensional chunk table rebuilds the state-only store with several chunk sizes (rows per chunk;
"1 MB" is format 1's rule of ~1 MB per chunk whatever the row count) and shows what each costs and buys:
bytes on disk, append speed, the time to open the store and load it into a sampler (every chunk is read and
its checksum checked), sampling speed, ``robocl validate`` time, and the most episodes one damaged chunk
takes with it.

    python -m benchmarks.store_sampling            # full size, a few minutes on 2 cores
    python -m benchmarks.store_sampling --episodes 20 --steps 100   # quick look
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from benchmarks.common import markdown_table, run_info, write_result
from robocl.store import Feature, OnlineReplay, TrajectoryStore, WindowSampler
from robocl.store.format import LOWDIM_CHUNK_ROWS
from robocl.store.frames import FrameReader
from robocl.store.integrity import units
from robocl.store.validate import validate_store

STATE_DIM, ACTION_DIM, IMAGE = 20, 7, (96, 96, 3)


def render_like_frames(n: int, rng: np.random.Generator, offset: int = 0) -> np.ndarray:
    """Frames that compress like rendered scenes: gradients + two moving discs + small sensor noise."""
    yy, xx = np.mgrid[0 : IMAGE[0], 0 : IMAGE[1]]
    frames = np.empty((n, *IMAGE), np.uint8)
    for i in range(n):
        k = i + offset
        img = np.stack([xx * 1.5 + 40, yy * 1.2 + 60, (xx + yy) * 0.6 + 80], axis=-1)
        for cx, cy, color in [
            (30 + 20 * np.sin(k / 15), 50, (220, 40, 40)),
            (60, 40 + 15 * np.cos(k / 9), (40, 40, 200)),
        ]:
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < 80
            img[disc] = color
        frames[i] = np.clip(img + rng.integers(-2, 3, size=IMAGE), 0, 255)
    return frames


def make_episodes(n_episodes: int, length: int, images: bool, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(n_episodes):
        ep = {
            "observation.state": np.cumsum(rng.normal(0, 0.05, (length, STATE_DIM)), axis=0).astype(
                np.float32
            ),
            "action": rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32),
            "reward": rng.normal(size=length).astype(np.float32),
        }
        if images:
            ep["observation.images.front"] = render_like_frames(length, rng, offset=e * length)
        episodes.append(ep)
    return episodes


def build_store(
    path: Path, episodes: list[dict[str, np.ndarray]], images: bool, chunk_rows: int = LOWDIM_CHUNK_ROWS
) -> tuple[TrajectoryStore, float]:
    features = {
        "observation.state": Feature("state", "float32", (STATE_DIM,)),
        "action": Feature("action", "float32", (ACTION_DIM,)),
        "reward": Feature("reward", "float32"),
    }
    if images:
        features["observation.images.front"] = Feature("rgb", "uint8", IMAGE)
    store = TrajectoryStore.create(path, features, fps=10, overwrite=True, lowdim_chunk_rows=chunk_rows)
    t0 = time.perf_counter()
    for ep in episodes:
        store.add_episode(ep, terminated=True)
    return store, time.perf_counter() - t0


def window_rows(store: TrajectoryStore, w: np.ndarray, n_obs: int, h: int) -> tuple[np.ndarray, ...]:
    """Row indices of each window's obs history, action chunk and next-obs history (clamped, no masks)."""
    start = np.repeat(store.episodes["start"], store.episodes["length"])
    length = np.repeat(store.episodes["length"], store.episodes["length"])
    t = np.arange(store.n_steps) - start
    obs = start[:, None] + np.maximum(t[:, None] + np.arange(1 - n_obs, 1), 0)
    act = start[:, None] + np.minimum(t[:, None] + np.arange(h), length[:, None] - 1)
    nxt = start[:, None] + np.minimum(t[:, None] + h + np.arange(1 - n_obs, 1), length[:, None] - 1)
    return obs[w], act[w], nxt[w]


def rate(fn, n_windows_per_call: int, min_time: float = 2.0, max_calls: int = 10_000) -> float:
    fn()  # warm-up (allocations, imports)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time and calls < max_calls:
        fn()
        calls += 1
    return calls * n_windows_per_call / (time.perf_counter() - t0)


def bench_case(tmp: Path, args: argparse.Namespace, images: bool) -> dict:
    episodes = make_episodes(args.episodes, args.steps, images, args.seed)
    store, write_s = build_store(tmp / f"store_{images}.zarr", episodes, images)
    n_frames = store.n_steps
    keys = ["observation.state", *(["observation.images.front"] if images else [])]
    ram = {k: np.concatenate([ep[k] for ep in episodes]) for k in [*keys, "action", "reward"]}
    rng = np.random.default_rng(args.seed)
    B, H, N = args.batch, args.horizon, args.n_obs

    def ceiling() -> None:
        w = rng.integers(0, n_frames, B)
        obs, act, nxt = obs_all[w], act_all[w], nxt_all[w]
        for k in keys:
            ram[k][obs], ram[k][nxt]
        ram["action"][act], ram["reward"][act]

    obs_all, act_all, nxt_all = window_rows(store, np.arange(n_frames), N, H)
    result = {"write_frames_per_s": n_frames / write_s, "bytes_per_frame": store.nbytes_stored() / n_frames}
    result["ram_ceiling"] = rate(ceiling, B)

    sampler = WindowSampler(store, n_obs=N, horizon=H, obs_keys=keys, seed=args.seed)
    if images:
        # Cold start: the first batch touches most shards, so it pays for decoding nearly the whole camera.
        t0 = time.perf_counter()
        sampler.sample(B)
        result["cold_first_batch_s"] = time.perf_counter() - t0
        fresh = FrameReader(
            store.zarr_array("observation.images.front"), n_frames, 1 << 34, local_root=Path(store.location)
        )
        t0 = time.perf_counter()
        fresh.gather(np.arange(n_frames))
        result["cache_fill_frames_per_s"] = n_frames / (time.perf_counter() - t0)
    result["robocl"] = rate(lambda: sampler.sample(B), B)

    zroot = zarr.open_group(store.location, mode="r")["data"]
    zarrs = {k: zroot[k] for k in [*keys, "action", "reward"]}

    def per_window(arrays) -> None:
        g = int(rng.integers(0, n_frames))
        o, a, n = obs_all[g], act_all[g], nxt_all[g]
        for k in keys:
            arrays[k][o[0] : o[-1] + 1], arrays[k][n[0] : n[-1] + 1]
        arrays["action"][a[0] : a[-1] + 1], arrays["reward"][a[0] : a[-1] + 1]

    result["naive_zarr"] = rate(lambda: per_window(zarrs), 1, min_time=3.0)
    h5_path = tmp / f"store_{images}.h5"
    with h5py.File(h5_path, "w") as f:
        for k, v in ram.items():
            chunks = (1, *v.shape[1:]) if v.ndim == 4 else (min(len(v), 16384), *v.shape[1:])
            f.create_dataset(k, data=v, chunks=chunks, compression="lzf")
    with h5py.File(h5_path, "r") as f:
        result["h5py"] = rate(lambda: per_window(f), 1, min_time=3.0)
    store.close()
    return result


def lowdim_chunk_table(tmp: Path, args: argparse.Namespace) -> list[dict]:
    """The state-only store at several low-dimensional chunk sizes: size and speed against damage bounded."""
    episodes = make_episodes(args.episodes, args.steps, False, args.seed)
    rows = []
    for chunk_rows in (1024, 4096, 16384, 1 << 30):
        path = tmp / f"chunks_{chunk_rows}.zarr"
        store, write_s = build_store(path, episodes, False, chunk_rows)
        store.close()
        t0 = time.perf_counter()
        reader = TrajectoryStore.open(path)
        sampler = WindowSampler(reader, n_obs=args.n_obs, horizon=args.horizon, seed=args.seed)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert validate_store(path).ok
        validate_s = time.perf_counter() - t0
        worst, files = 0, 0
        for key in reader.features:
            array = reader.zarr_array(key)
            chunks = units(array, 0, reader.n_steps)
            files += len(chunks)
            worst = max(worst, *(len(reader.episodes_touching(f"data/{key}", u.lo, u.hi)) for u in chunks))
        rows.append(
            {
                "rows_per_chunk": "1 MB" if chunk_rows == 1 << 30 else chunk_rows,
                "chunk_files": files,
                "kb_per_step": sum(f.stat().st_size for f in (path / "data").rglob("*") if f.is_file())
                / reader.n_steps
                / 1024,
                "write_steps_per_s": reader.n_steps / write_s,
                "open_and_load_s": load_s,
                "windows_per_s": rate(lambda sampler=sampler: sampler.sample(args.batch), args.batch),
                "validate_s": validate_s,
                "max_episodes_per_damaged_chunk": worst,
            }
        )
        shutil.rmtree(path)
    return rows


def codec_table(tmp: Path, seed: int, n: int = 2048) -> list[dict]:
    """Image codecs and shard sizes, measured on the same render-like frames."""
    frames = render_like_frames(n, np.random.default_rng(seed))
    rows = []
    for name, codec in [
        ("blosc-zstd3-bitshuffle", BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
        ("blosc-lz4-5-bitshuffle", BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")),
        ("blosc-zstd3-noshuffle", BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle")),
        ("zstd3", ZstdCodec(level=3)),
    ]:
        for shard in (16, 64, 256):
            path = tmp / f"codec_{name}_{shard}.zarr"
            arr = zarr.open_group(path, mode="w").create_array(
                "x",
                shape=frames.shape,
                dtype="uint8",
                chunks=(1, *IMAGE),
                shards=(shard, *IMAGE),
                compressors=[codec],
            )
            t0 = time.perf_counter()
            arr[:] = frames
            write = n / (time.perf_counter() - t0)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / n
            reader = FrameReader(arr, n, cache_bytes=1 << 34, local_root=path)
            t0 = time.perf_counter()
            reader.gather(np.arange(n))
            read = n / (time.perf_counter() - t0)
            rows.append(
                {
                    "codec": name,
                    "frames_per_shard": shard,
                    "kb_per_frame": size / 1024,
                    "write_frames_per_s": write,
                    "read_frames_per_s": read,
                    "direct_decode": reader._direct,
                }
            )
            shutil.rmtree(path)
    return rows


def replay_rate(tmp: Path, seed: int, n: int = 200_000) -> dict:
    """OnlineReplay with Humanoid-v5-sized transitions (348-d obs, 17-d action), 1,000-step episodes:
    ``add`` into the RAM ring, then committing all finished episodes to the store in one ``flush``."""
    features = {
        "observation.state": Feature("state", "float32", (348,)),
        "action": Feature("action", "float32", (17,)),
        "reward": Feature("reward", "float32"),
    }
    store = TrajectoryStore.create(tmp / "replay.zarr", features, fps=67, overwrite=True)
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(1001, 348)).astype(np.float32)
    actions = rng.uniform(-1, 1, (1000, 17)).astype(np.float32)
    replay = OnlineReplay(store, capacity=n, flush_every=n + 1)
    t0 = time.perf_counter()
    for k in range(n):
        t = k % 1000
        replay.add(obs[t], actions[t], 0.5, obs[t + 1], terminated=False, truncated=t == 999)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    replay.flush()
    flush_s = time.perf_counter() - t0
    store.close()
    return {
        "transitions": n,
        "adds_per_s": n / add_s,
        "flush_transitions_per_s": n / flush_s,
        "adds_per_s_including_persistence": n / (add_s + flush_s),
        "persisted_episodes": store.n_episodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--n-obs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = {
            "state": bench_case(tmp, args, images=False),
            "state+rgb96": bench_case(tmp, args, images=True),
        }
        chunk_sizes = lowdim_chunk_table(tmp, args)
        codecs = codec_table(tmp, args.seed)
        replay = replay_rate(tmp, args.seed)
    payload = {
        **run_info(args.seed),
        "config": vars(args),
        "cases": cases,
        "lowdim_chunks": chunk_sizes,
        "image_codecs": codecs,
        "online_replay": replay,
    }
    for c in cases.values():
        c["robocl_vs_ceiling"] = c["robocl"] / c["ram_ceiling"]
        c["robocl_vs_naive_zarr"] = c["robocl"] / c["naive_zarr"]
    path = write_result("store_sampling", payload)

    headers = [
        "case",
        "robocl windows/s",
        "cold: first batch s / fill frames/s",
        "RAM ceiling",
        "naive zarr",
        "h5py per-window",
        "vs ceiling",
        "vs naive zarr",
        "write frames/s",
        "KB/frame",
    ]
    rows = [
        [
            name,
            c["robocl"],
            f"{c['cold_first_batch_s']:.2f} / {c['cache_fill_frames_per_s']:,.0f}"
            if "cold_first_batch_s" in c
            else "-",
            c["ram_ceiling"],
            c["naive_zarr"],
            c["h5py"],
            f"{c['robocl_vs_ceiling']:.0%}",
            f"{c['robocl_vs_naive_zarr']:.0f}x",
            c["write_frames_per_s"],
            f"{c['bytes_per_frame'] / 1024:.2f}",
        ]
        for name, c in cases.items()
    ]
    print(markdown_table(headers, rows))
    print()
    print(
        markdown_table(
            [
                "low-dim rows/chunk",
                "chunk files",
                "KB/step",
                "write steps/s",
                "open + load s",
                "windows/s",
                "validate s",
                "episodes lost per damaged chunk (max)",
            ],
            [
                [
                    r["rows_per_chunk"],
                    r["chunk_files"],
                    f"{r['kb_per_step']:.3f}",
                    r["write_steps_per_s"],
                    f"{r['open_and_load_s']:.2f}",
                    r["windows_per_s"],
                    f"{r['validate_s']:.2f}",
                    r["max_episodes_per_damaged_chunk"],
                ]
                for r in chunk_sizes
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["image codec", "frames/shard", "KB/frame", "write frames/s", "read frames/s"],
            [
                [
                    r["codec"],
                    r["frames_per_shard"],
                    f"{r['kb_per_frame']:.2f}",
                    r["write_frames_per_s"],
                    r["read_frames_per_s"],
                ]
                for r in codecs
            ],
        )
    )
    print(
        f"\nonline replay (348-d obs): add {replay['adds_per_s']:,.0f}/s into RAM, persist "
        f"{replay['flush_transitions_per_s']:,.0f}/s, "
        f"both {replay['adds_per_s_including_persistence']:,.0f}/s"
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
