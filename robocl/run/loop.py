"""The training loop every method runs through, and the contract an algorithm meets it at.

An algorithm (:class:`Algorithm`) owns its networks, optimisers and losses: ``update(batch) -> metrics`` is
one gradient step, ``state_dict()`` returns ``{"model": tensors inference needs, "trainer": everything else a
bit-exact resume needs}`` (``load_state_dict`` takes the same), and ``policy()`` acts. A data source
(:class:`DataSource`) hands out batches: a store sampler for the offline methods, a collector that steps an
env for the online one. :func:`fit` owns the rest, once for all methods:

- seeding torch's global generator per (seed, stage, rank), torch's threads, the device and bf16 autocast;
- a progress bar (plain lines off a terminal), one line with the stage's estimated duration once its first
  few updates have been timed, TensorBoard scalars in ``tb/<stage>`` (and Weights & Biases with ``wandb``);
- a checkpoint every ``checkpoint_every`` updates and at exit in ``checkpoints/<stage>/last``, with the
  source's and the generators' state, so ``resume=True`` continues bit for bit (on CPU);
- a non-finite loss, gradient or metric stops the run with the step and the batch's (episode, t), after
  saving the last good state to ``checkpoints/<stage>/last_good``; Ctrl-C stops at the next update
  boundary (a second one at once), saves and says how to resume;
- periodic and final evaluation (``evaluate``: the shared evaluator into ``eval/<stage>/<step>/``) and
  validation (``validate``: metrics on held-out data);
- data-parallel training under ``torchrun`` (:mod:`robocl.run.dist`): each rank samples its own windows.
"""

from __future__ import annotations

import importlib.util
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from robocl.checkpoint import load_checkpoint, resolve_checkpoint, rng_state, save_checkpoint, set_rng_state
from robocl.policy import Policy
from robocl.progress import Progress, format_duration
from robocl.run import dist
from robocl.run.layout import RunDir
from robocl.run.runtime import DEFAULT_THREADS, DeferredInterrupt, resolve_device, set_threads


@dataclass
class LoopConfig:
    """How long and how observably to train (method hyper-parameters live in each method's config)."""

    n_updates: int = 10_000  # gradient updates in total (a resumed run continues up to this number)
    batch_size: int = 256  # windows per update, over all ranks of a data-parallel run
    log_every: int = 100  # updates between TensorBoard writes
    checkpoint_every: int = 1_000  # updates between checkpoints (one more is written at exit)
    eval_every: int = 0  # updates between evaluations and validations; 0: only at the end
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU, where runs stay bit-exact
    threads: int = DEFAULT_THREADS  # torch intra-op threads (see robocl.run.runtime)
    wandb: bool = False  # also log every scalar to Weights & Biases (the wandb extra; WANDB_MODE=offline)
    wandb_project: str = "robocl"  # the wandb project runs go to

    def __post_init__(self) -> None:
        for name in ("n_updates", "batch_size", "log_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.wandb and importlib.util.find_spec("wandb") is None:  # fail before the run, not after it
            raise ValueError("--wandb needs the wandb package: pip install 'robocl[wandb]'")


#: Updates timed for the duration estimate, after the first (which can be much slower: caches, lazily built
#: tables such as CO-RFT's one-off encoding of every history).
ESTIMATE_UPDATES = 5


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or Inf."""


class TrainingDiverged(RuntimeError):
    """Raised by :func:`fit` when the NaN guard fires; says where and what was saved."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`, after the state was saved; ``str()`` says the step and where."""


class Algorithm(Protocol):
    name: ClassVar[str]
    config: Any  # a dataclass with a ``seed`` field
    spec: Any  # a dataclass: the shapes the networks are built for
    step: int  # updates done in the current stage

    def update(self, batch: Mapping[str, Any]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def policy(self) -> Policy: ...


class DataSource(Protocol):
    def sample(self, batch_size: int) -> Mapping[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


#: ``evaluate(policy, out_dir(task)) -> metrics``: ``out_dir`` names the folder of one task's report.
Evaluation = Callable[[Policy, Callable[[str], Path]], dict[str, float]]


def guarded_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: Any,
    *,
    max_grad_norm: float | None = None,
    diagnose: Callable[[], str] | None = None,
) -> float:
    """backward, check loss and gradients are finite, average gradients over data-parallel ranks, clip,
    step. Raises NonFiniteError before stepping, so the weights stay those of the last good update; its
    message ends with ``diagnose()`` (where the non-finite value came from) when given.
    Returns the gradient norm."""
    if not torch.isfinite(loss):
        raise NonFiniteError(f"loss is {loss.item()}" + (f"; {diagnose()}" if diagnose else ""))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in params if p.grad is not None]
    dist.average_gradients(params)
    # foreach: one kernel per step over all tensors; torch picks it only on GPUs by default, and on a CPU
    # one foreach pass took ~30% less time than the per-tensor loop for CO-RFT's 24 critic tensors (0.25
    # against 0.36 ms, a micro-benchmark on a loaded 2-core machine).
    if max_grad_norm is None:  # the norm alone: clipping at inf would rescale every gradient by 1
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
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
    """numpy batch (nested dicts allowed) -> tensors on ``device``; non-numeric values pass through."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = to_torch(value, device)
        elif isinstance(value, np.ndarray) and value.dtype != object:
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def checkpoint_header(algo: Algorithm) -> dict[str, Any]:
    """config.json's description of an algorithm: its config and spec (what the networks are built from)."""
    import dataclasses

    spec = dataclasses.asdict(algo.spec) if dataclasses.is_dataclass(algo.spec) else dict(algo.spec)
    return {"config": dataclasses.asdict(algo.config), "spec": spec, "seed": int(algo.config.seed)}


def save_algorithm(algo: Algorithm, path: Path, *, source_state: Mapping[str, Any] | None = None) -> Path:
    """A checkpoint of ``algo`` at ``path``: its model tensors, and its trainer state with the source's and
    the generators'. Only rank 0 of a data-parallel run writes."""
    state = algo.state_dict()
    trainer = {"algorithm": state["trainer"], "rng": rng_state(), "source": dict(source_state or {})}
    if not dist.is_main():
        return path
    return save_checkpoint(
        path, method=algo.name, tensors=state["model"], step=algo.step, trainer_state=trainer,
        **checkpoint_header(algo),
    )  # fmt: skip


def restore(algo: Algorithm, source: DataSource | None, path: Path) -> None:
    """Load a checkpoint written by :func:`save_algorithm` into ``algo`` (and ``source``), method checked."""
    ckpt = load_checkpoint(path, method=algo.name)
    trainer = ckpt.trainer_state()
    algo.load_state_dict({"model": ckpt.tensors, "trainer": trainer["algorithm"]})
    if source is not None:
        source.load_state_dict(trainer["source"])
    set_rng_state(trainer["rng"])


def stage_seed(seed: int, stage: str) -> int:
    """The seed of torch's global generator for one stage of a run on this rank."""
    words = [seed, zlib.crc32(stage.encode()), dist.rank()]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def fit(
    algo: Algorithm,
    source: DataSource,
    loop: LoopConfig,
    run: RunDir | str | Path,
    *,
    stage: str,
    resume: bool = False,
    evaluate: Evaluation | None = None,
    validate: Callable[[Algorithm], dict[str, float]] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train ``algo`` on batches from ``source.sample(batch_size)`` until ``loop.n_updates``; one stage of
    the run in ``run``. Returns the metrics of every update of this call (the resume tests compare them)."""
    from robocl.tracking import Scalars, start_wandb

    run = run if isinstance(run, RunDir) else RunDir(run)
    set_threads(loop.threads)
    device = resolve_device(loop.device)
    batch_size = dist.local_batch_size(loop.batch_size)
    last = run.checkpoint(stage)
    if resume:
        if resolve_checkpoint(last) is None:
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        restore(algo, source, last)
    elif resolve_checkpoint(last) is not None:
        raise FileExistsError(f"{run.path} already holds stage {stage!r}; pass --resume or use a new run dir")
    else:
        torch.manual_seed(stage_seed(algo.config.seed, stage))
        dist.shard(source)
    if dist.is_main():
        run.begin(algo.name, algo.config, stage=stage, seed=algo.config.seed, loop=loop)
    use_amp = loop.amp and device.type == "cuda"
    main = dist.is_main()
    wandb_run = None
    if loop.wandb and main:
        config = {"method": algo.name, "stage": stage, "loop": asdict(loop), **checkpoint_header(algo)}
        wandb_run = start_wandb(run.path, stage, project=loop.wandb_project, config=config)
    writer = None
    if main:
        writer = Scalars(run.tb(stage), wandb_run=wandb_run, purge_step=algo.step if resume else None)
    history: list[dict[str, float]] = []
    label = algo.name if stage == algo.name else f"{algo.name} {stage}"  # "bc", "co-rft il", ...
    bar = Progress(loop.n_updates, initial=algo.step, desc=label, enabled=progress and main)
    tick, tick_step = time.perf_counter(), algo.step
    timed_from, timer = algo.step + 1, 0.0  # the duration estimate starts after this call's first update

    def check(step: int) -> float:
        """Evaluates and validates at ``step``; returns the seconds it took, which perf/updates_per_s leaves
        out (logged apart as perf/eval_s, so a benchmark can compare training time alone)."""
        start, metrics = time.perf_counter(), {}
        if evaluate is not None and main:
            scores = evaluate(algo.policy(), lambda task: run.eval_dir(stage, step, task))
            metrics |= {f"eval/{k}": v for k, v in scores.items()}
        if validate is not None and main:
            metrics |= {f"val/{k}": v for k, v in validate(algo).items()}
        seconds = time.perf_counter() - start
        if writer is not None and metrics:
            for key, value in (metrics | {"perf/eval_s": seconds}).items():
                writer.add_scalar(key, value, step)
        return seconds

    interrupt = DeferredInterrupt()
    try:
        while algo.step < loop.n_updates:
            if interrupt.requested:
                raise KeyboardInterrupt
            batch = source.sample(batch_size)
            try:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    metrics = algo.update(to_torch(batch, device))
                bad = [k for k, v in metrics.items() if not math.isfinite(v)]
                if bad:
                    raise NonFiniteError(f"metric {bad[0]} is {metrics[bad[0]]}")
            except NonFiniteError as exc:
                # An update never touches the source, so its state is still the one after this sample; taken
                # here, not before every update (an online source's state commits episodes, ~0.5 ms).
                saved = save_algorithm(
                    algo, run.checkpoint(stage, "last_good"), source_state=source.state_dict()
                )
                where = list(
                    zip(*(np.asarray(batch.get(k, [])).tolist() for k in ("episode", "t")), strict=True)
                )
                raise TrainingDiverged(
                    f"non-finite value at update {algo.step + 1}: {exc}; batch (episode, t) = {where[:16]}"
                    f"{' ...' if len(where) > 16 else ''}; last good state saved to {saved}"
                ) from exc
            history.append(metrics)
            bar.update(1)
            if algo.step == timed_from:
                timer = time.perf_counter()
            elif algo.step == timed_from + ESTIMATE_UPDATES and main:
                per_update = (time.perf_counter() - timer) / ESTIMATE_UPDATES
                left = loop.n_updates - algo.step
                bar.note(
                    f"{label}: {left} more updates, about {format_duration(per_update * left)} "
                    f"({1 / per_update:.1f} updates/s)"
                )
            if writer is not None and algo.step % loop.log_every == 0:
                now = time.perf_counter()
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, algo.step)
                for key, value in getattr(source, "metrics", dict)().items():
                    writer.add_scalar(f"data/{key}", value, algo.step)
                writer.add_scalar(
                    "perf/updates_per_s", (algo.step - tick_step) / max(now - tick, 1e-9), algo.step
                )
                for name, lr in learning_rates(algo).items():
                    writer.add_scalar(f"lr/{name}", lr, algo.step)
                tick, tick_step = now, algo.step
                bar.set_postfix(dict(list(metrics.items())[:3]))
            if loop.eval_every and algo.step % loop.eval_every == 0 and algo.step < loop.n_updates:
                tick += check(algo.step)
            if algo.step % loop.checkpoint_every == 0:
                save_algorithm(algo, last, source_state=source.state_dict())
    except KeyboardInterrupt as exc:
        raise TrainingInterrupted(
            f"interrupted at update {algo.step} of stage {stage!r}; state saved to {last}"
        ) from exc
    finally:
        interrupt.restore()
        bar.close()
        if algo.step > 0:
            save_algorithm(algo, last, source_state=source.state_dict())
        if writer is not None:
            writer.close()
    if main and (evaluate is not None or validate is not None):
        writer = Scalars(run.tb(stage), wandb_run=wandb_run)
        check(algo.step)
        writer.close()
    if wandb_run is not None:
        wandb_run.finish()
    return history
