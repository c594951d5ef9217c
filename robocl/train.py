"""The training loop every method runs through: logging, checkpoints, resume, the NaN guard, evaluation.

An algorithm owns its networks, optimisers and losses and meets the loop at a small contract
(:class:`Algorithm`): ``update(batch) -> metrics`` for one gradient step, ``tensors()`` for what inference
needs, ``trainer_state()``/``load_trainer_state()`` for everything else a bit-exact resume needs, and
``policy()`` for evaluation. The loop owns the rest, once for all methods:

- TensorBoard scalars (every metric, learning rates, updates/s), a tqdm bar with ETA, and one line with
  the run's estimated duration once the first few updates have been timed;
- a checkpoint every ``checkpoint_every`` updates and at exit, into ``<run_dir>/checkpoints/last``;
- ``resume=True`` restores the algorithm, the sampler's RNG and torch's RNG, so the continued run's losses
  equal an uninterrupted run's bit for bit on CPU;
- a non-finite loss or gradient (see :func:`guarded_step`) stops the run with the step, the loss and the
  batch's (episode, t) indices, after saving the last good state to ``<run_dir>/checkpoints/last_good``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from robocl.checkpoint import load_checkpoint, resolve_checkpoint, rng_state, save_checkpoint, set_rng_state
from robocl.policy import Policy


@dataclass
class LoopConfig:
    """How long and how observably to train (method hyper-parameters live in each method's config)."""

    n_updates: int = 10_000  # gradient updates in total (a resumed run continues up to this number)
    batch_size: int = 256  # windows per update
    log_every: int = 100  # updates between TensorBoard writes
    checkpoint_every: int = 1_000  # updates between checkpoints (one more is written at exit)
    eval_every: int = 0  # updates between evaluations; 0 evaluates only at the end
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU, where runs stay bit-exact
    wandb: bool = False  # also log every scalar to Weights & Biases (the wandb extra; WANDB_MODE=offline)
    wandb_project: str = "robocl"  # the wandb project runs go to

    def __post_init__(self) -> None:
        for name in ("n_updates", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.wandb and importlib.util.find_spec("wandb") is None:  # fail before the run, not after it
            raise ValueError("--wandb needs the wandb package: pip install 'robocl[wandb]'")


#: Updates timed for the duration estimate, after the first (which can be much slower: caches, lazily built
#: tables such as CO-RFT's one-off encoding of every history).
ESTIMATE_UPDATES = 5


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or Inf."""


class TrainingDiverged(RuntimeError):
    """Raised by :func:`fit` when the NaN guard fires; says where and what was saved."""


class Algorithm(Protocol):
    name: ClassVar[str]
    step: int

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None: ...

    def trainer_state(self) -> dict[str, Any]: ...

    def load_trainer_state(self, state: Mapping[str, Any]) -> None: ...

    def checkpoint_header(self) -> dict[str, Any]: ...

    def policy(self) -> Policy: ...


def guarded_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.nn.Parameter],
    *,
    max_grad_norm: float | None = None,
) -> float:
    """backward, check loss and gradients are finite, clip, step. Raises NonFiniteError before stepping,
    so the weights stay those of the last good update. Returns the gradient norm."""
    if not torch.isfinite(loss):
        raise NonFiniteError(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm is not None else math.inf)
    if not torch.isfinite(norm):
        raise NonFiniteError(f"gradient norm is {norm.item()} (loss {loss.item():.6g})")
    optimizer.step()
    return float(norm)


def learning_rates(algo: Any) -> dict[str, float]:
    """The current learning rate of every optimiser the algorithm holds as an attribute."""
    return {
        name: float(opt.param_groups[0]["lr"])
        for name, opt in vars(algo).items()
        if isinstance(opt, torch.optim.Optimizer)
    }


def to_torch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """numpy batch (nested dicts allowed) -> tensors on ``device``; non-blocking copies from pinned memory."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = to_torch(value, device)
        elif isinstance(value, np.ndarray) and value.dtype != object:
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def save_algorithm(algo: Algorithm, path: Path, *, sampler_state: Mapping[str, Any] | None = None) -> Path:
    header = algo.checkpoint_header()
    state = {"algorithm": algo.trainer_state(), "rng": rng_state(), "sampler": dict(sampler_state or {})}
    return save_checkpoint(
        path, method=algo.name, tensors=algo.tensors(), step=algo.step, trainer_state=state, **header
    )


def fit(
    algo: Algorithm,
    sampler: Any,
    loop: LoopConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    evaluate: Callable[[Algorithm], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``algo`` on batches from ``sampler.sample(batch_size)`` until ``loop.n_updates``.

    Returns the metrics of every update of this call (the resume test compares them).
    """
    from tqdm import tqdm

    from robocl.tracking import Scalars, start_wandb

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last"
    if resume:
        if resolve_checkpoint(last) is None:
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        ckpt = load_checkpoint(last, method=algo.name)
        state = ckpt.trainer_state()
        algo.load_tensors(ckpt.tensors)
        algo.load_trainer_state(state["algorithm"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
    elif resolve_checkpoint(last) is not None:
        raise FileExistsError(
            f"{run_dir} already holds a run; pass resume=True (--resume) or use a new run_dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "loop.json").write_text(json.dumps(asdict(loop), indent=2) + "\n")

    device = torch.device(loop.device)
    use_amp = loop.amp and device.type == "cuda"
    wandb_run = None
    if loop.wandb:
        config = {"method": algo.name, "loop": asdict(loop), **algo.checkpoint_header()}
        wandb_run = start_wandb(run_dir, project=loop.wandb_project, config=config)
    writer = Scalars(run_dir / "tb", wandb_run=wandb_run, purge_step=algo.step if resume else None)
    history: list[dict[str, float]] = []
    bar = tqdm(total=loop.n_updates, initial=algo.step, disable=not progress, desc=algo.name, unit="upd")
    tick, tick_step = time.perf_counter(), algo.step
    timed_from, timer = algo.step + 1, 0.0  # the duration estimate starts after this run's first update
    try:
        while algo.step < loop.n_updates:
            batch = sampler.sample(loop.batch_size)
            good_sampler_state = sampler.state_dict()
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    metrics = algo.update(to_torch(batch, device))
                bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteError(f"metric {bad[0]} is {metrics[bad[0]]}")
            except NonFiniteError as exc:
                saved = save_algorithm(algo, ckpt_dir / "last_good", sampler_state=good_sampler_state)
                where = list(zip(batch["episode"].tolist(), batch["t"].tolist(), strict=True))
                raise TrainingDiverged(
                    f"non-finite value at update {algo.step + 1}: {exc}; batch (episode, t) = {where[:16]}"
                    f"{' ...' if len(where) > 16 else ''}; last good state saved to {saved}"
                ) from exc
            history.append(metrics)
            bar.update(1)
            if algo.step == timed_from:
                timer = time.perf_counter()
            elif algo.step == timed_from + ESTIMATE_UPDATES:
                per_update = (time.perf_counter() - timer) / ESTIMATE_UPDATES
                left = loop.n_updates - algo.step
                bar.write(
                    f"{algo.name}: {left} more updates, about {format_duration(per_update * left)} "
                    f"({1 / per_update:.1f} updates/s)",
                    file=sys.stderr,
                )
            if algo.step % loop.log_every == 0:
                now = time.perf_counter()
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, algo.step)
                writer.add_scalar(
                    "perf/updates_per_s", (algo.step - tick_step) / max(now - tick, 1e-9), algo.step
                )
                for name, lr in learning_rates(algo).items():
                    writer.add_scalar(f"lr/{name}", lr, algo.step)
                tick, tick_step = now, algo.step
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(metrics.items())[:3]})
            if evaluate is not None and loop.eval_every and algo.step % loop.eval_every == 0:
                for key, value in evaluate(algo).items():
                    writer.add_scalar(f"eval/{key}", value, algo.step)
            if algo.step % loop.checkpoint_every == 0:
                save_algorithm(algo, last, sampler_state=sampler.state_dict())
    finally:
        bar.close()
        if algo.step > 0:
            save_algorithm(algo, last, sampler_state=sampler.state_dict())
        writer.close()
    if evaluate is not None:
        final = evaluate(algo)
        with Scalars(run_dir / "tb", wandb_run=wandb_run) as w:
            for key, value in final.items():
                w.add_scalar(f"eval/{key}", value, algo.step)
    if wandb_run is not None:
        wandb_run.finish()
    return history
