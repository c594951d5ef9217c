"""Data-parallel training under torch.distributed (gloo, 2 CPU processes): one loop, averaged gradients."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from robocl.algos.bc import BC, BCConfig
from robocl.checkpoint import load_checkpoint
from robocl.run import dist
from robocl.run.layout import RunDir
from robocl.run.loop import LoopConfig, fit
from robocl.store import Feature, TrajectoryStore

CONFIG = BCConfig(n_obs=1, horizon=2, n_action_steps=1, hidden=(32,), lr=3e-3, seed=0)
LOOP = LoopConfig(n_updates=150, batch_size=32, log_every=10, checkpoint_every=1000)


def make_store(path) -> None:
    features = {
        "observation.state": Feature("state", "float32", (3,)),
        "action": Feature("action", "float32", (2,)),
    }
    store = TrajectoryStore.create(path, features, fps=10)
    rng = np.random.default_rng(0)
    for _ in range(8):
        state = rng.normal(size=(25, 3)).astype(np.float32)
        store.add_episode({"observation.state": state, "action": np.tanh(state[:, :2] * 2)}, terminated=True)
    store.close()


def train(rank: int, world: int, root: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # what torchrun sets  # fmt: skip
    dist.init_from_env("cpu")
    try:
        with TrajectoryStore.open(f"{root}/demos.zarr") as store:
            algo = BC.from_store(CONFIG, store)
            history = fit(algo, algo.sampler(store), LOOP, f"{root}/run{world}", stage="bc", progress=False)
        params = torch.cat([p.detach().flatten() for p in algo.net.parameters()]).tolist()
        with open(f"{root}/rank{rank}_of_{world}.json", "w") as f:
            json.dump({"loss": [m["loss"] for m in history], "params": params}, f)
    finally:
        if td.is_initialized():
            td.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_follow_one_process_at_the_same_global_batch(tmp_path):
    make_store(tmp_path / "demos.zarr")
    train(0, 1, str(tmp_path), free_port())  # one process, the whole batch
    mp.spawn(train, args=(2, str(tmp_path), free_port()), nprocs=2, join=True)
    one, *ranks = (json.loads((tmp_path / name).read_text()) for name in
                   ("rank0_of_1.json", "rank0_of_2.json", "rank1_of_2.json"))  # fmt: skip
    # Averaged gradients: both ranks hold the same weights after every step.
    assert ranks[0]["params"] == ranks[1]["params"]
    # Each rank sees half the batch from its own stream: the curve is the one process's, within noise.
    two = (np.array(ranks[0]["loss"]) + np.array(ranks[1]["loss"])) / 2
    first, last = np.mean(one["loss"][:10]), np.mean(one["loss"][-10:])
    assert last < 0.6 * first and abs(np.mean(two[-10:]) - last) < 0.1 * (first - last)
    # Only rank 0 wrote the checkpoint and the run record.
    ckpt = load_checkpoint(RunDir(tmp_path / "run2").checkpoint("bc"))
    assert ckpt.step == LOOP.n_updates and RunDir(tmp_path / "run2").info()["loops"]["bc"]["batch_size"] == 32
    saved = BC.policy_from_checkpoint(ckpt).net.parameters()
    assert torch.cat([p.detach().flatten() for p in saved]).tolist() == ranks[0]["params"]
