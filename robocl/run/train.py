"""How each method's run maps onto the one loop: which stages, which data source, what is evaluated.

Every function trains into one run directory (:mod:`robocl.run.layout`) through :func:`robocl.run.loop.fit`
and returns the checkpoint of each stage it trained. ``robocl train METHOD`` is a thin wrapper over these.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from robocl.run.layout import RunDir
from robocl.run.loop import Evaluation, LoopConfig, fit
from robocl.run.runtime import resolve_device


def train_bc(
    config: Any,
    data: str | Path,
    run_dir: str | Path,
    loop: LoopConfig,
    *,
    resume: bool = False,
    tags: Sequence[str] = (),
    evaluate: Evaluation | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Chunked behaviour cloning: one stage, ``bc``."""
    from robocl.algos.bc import BC
    from robocl.features import check_training_data
    from robocl.store import TrajectoryStore

    run = RunDir(run_dir)
    with TrajectoryStore.open(data, "r") as store:
        algo = BC.from_store(config, store, device=str(resolve_device(loop.device)))
        view = store.view(tags=list(tags)) if tags else store.view()
        check_training_data(view, method="bc", state=algo.config.obs_keys)
        run.begin(BC.name, algo.config, stage="bc", seed=config.seed, env=_env_of(evaluate), store=str(data))
        fit(
            algo,
            algo.sampler(view),
            loop,
            run,
            stage="bc",
            resume=resume,
            evaluate=evaluate,
            progress=progress,
        )
    return {"bc": run.checkpoint("bc")}


def train_co_rft(
    config: Any,
    data: str | Path,
    run_dir: str | Path,
    *,
    il_loop: LoopConfig | None,
    rl_loop: LoopConfig | None,
    init: str | Path | None = None,
    resume: bool = False,
    tags: Sequence[str] = (),
    language: Any = None,
    evaluate: Evaluation | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """CO-RFT's two stages: imitation (``il``, skipped when ``il_loop`` is None), then chunked offline RL
    (``rl``, skipped when ``rl_loop`` is None) on all but the held-out episodes, which validate the critic
    at every evaluation. A resume continues the stage that was running."""
    from robocl.algos.co_rft import CORFT
    from robocl.checkpoint import resolve_checkpoint
    from robocl.features import check_training_data
    from robocl.store import TrajectoryStore

    if il_loop is None and rl_loop is None:
        raise ValueError("nothing to train: give stage 1 or stage 2 some updates")
    run = RunDir(run_dir)
    if il_loop is not None and config.il_schedule_updates is None:  # the horizon of stage 1's lr schedule
        config = replace(config, il_schedule_updates=il_loop.n_updates)
    device = str(resolve_device((il_loop or rl_loop or LoopConfig()).device))
    rl_saved = resume and resolve_checkpoint(run.checkpoint("rl")) is not None
    common = {"evaluate": evaluate, "progress": progress}
    with TrajectoryStore.open(data, "r") as store:
        algo = CORFT.from_store(config, store, device=device, language=language)
        if init is not None and not resume:
            algo.init_backbone(init)
        view = store.view(tags=list(tags)) if tags else store.view()
        # Before stage 1: a store that cannot give stage 2 its rewards must fail now, not after stage 1.
        cfg = algo.config
        reward = cfg.reward if rl_loop is not None else None
        check_training_data(view, method="co-rft", state=cfg.state_keys, images=cfg.image_keys, reward=reward)
        begin = {"seed": config.seed, "env": _env_of(evaluate), "store": str(data)}
        paths = {}
        if il_loop is not None:
            if not rl_saved:
                run.begin(CORFT.name, cfg, stage="il", **begin)
                il_resume = resume and resolve_checkpoint(run.checkpoint("il")) is not None
                fit(algo, algo.il_sampler(view), il_loop, run, stage="il", resume=il_resume, **common)
            paths["il"] = run.checkpoint("il")
        if rl_loop is None:
            return paths
        if algo.stage == "il":
            algo.start_rl()
        train, held_out = algo.split(view)
        val = algo.val_sampler(held_out) if held_out is not None else None
        run.begin(CORFT.name, cfg, stage="rl", **begin)
        fit(
            algo, algo.rl_sampler(train), rl_loop, run, stage="rl", resume=rl_saved,
            validate=None if val is None else lambda a: a.validate(val), **common,
        )  # fmt: skip
    return {**paths, "rl": run.checkpoint("rl")}


def _env_of(evaluate: Evaluation | None) -> str | None:
    return getattr(evaluate, "env_id", None)


@dataclass
class OnlineLoopConfig:
    """How long and how observably an online run trains, in env steps (exploration included, as the paper
    counts them); method hyper-parameters are in the method's config."""

    env: str = "Humanoid-v5"  # gymnasium id with a time limit
    steps: int = 1_000_000  # env steps in total (a resumed run continues up to it)
    eval_every: int = 2_500  # env steps between deterministic evaluations (Symphony: 2,500); 0: end only
    eval_episodes: int = 25  # episodes per evaluation (Symphony: 25); 0: none
    checkpoint_every: int = 10_000  # env steps between checkpoints (one more is written at exit)
    log_every: int = 1_000  # env steps between TensorBoard writes
    device: str = "cpu"  # training device: "cpu", "cuda" or "cuda:N"
    threads: int = 1  # torch intra-op threads (see robocl.run.runtime)
    compile: bool = False  # torch.compile the method's loss: slower start (about a minute), faster updates
    cuda_graphs: bool = False  # compile with CUDA graphs (a CUDA device only): one launch per loss on a GPU
    wandb: bool = False  # also log every scalar to Weights & Biases (the wandb extra; WANDB_MODE=offline)
    wandb_project: str = "robocl"  # the wandb project runs go to

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_episodes < 0:
            raise ValueError(
                f"eval_every={self.eval_every} and eval_episodes={self.eval_episodes} must be >= 0"
            )


def train_symphony(
    config: Any,
    online: OnlineLoopConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Symphony online on ``online.env``: one stage, ``online``, its experience in ``data/replay.zarr``. The
    loop runs ``(steps - n_explore) x updates_per_step`` updates; a resume takes the config from the
    checkpoint."""
    from robocl.algos.symphony import Symphony, SymphonyConfig, SymphonySpec
    from robocl.checkpoint import load_checkpoint
    from robocl.eval.evaluate import EnvEvaluation
    from robocl.run.online import OnlineSource, make_env

    run = RunDir(run_dir)
    if resume:
        config = SymphonyConfig(**load_checkpoint(run.checkpoint("online"), method=Symphony.name).config)
    env_id, steps = online.env, online.steps
    if steps <= config.n_explore:
        raise ValueError(
            f"steps={steps} ends before exploration does (n_explore={config.n_explore}): no update would "
            "run; raise --steps or lower --n-explore"
        )
    probe = make_env(env_id)
    spec = SymphonySpec(
        obs_dim=sum(int(np.prod(s.shape)) for s in probe.observation_space.spaces.values()),
        action_dim=int(np.prod(probe.action_space.shape)),
        env_id=env_id,
        max_episode_steps=int(probe.spec.max_episode_steps),  # type: ignore[union-attr]
    )
    probe.close()
    device = str(resolve_device(online.device))
    algo = Symphony(config, spec, device, compile=online.compile, cuda_graphs=online.cuda_graphs)
    per_step = config.updates_per_step
    loop = LoopConfig(
        n_updates=(steps - config.n_explore) * per_step,
        batch_size=config.batch_size,
        log_every=online.log_every * per_step,
        checkpoint_every=online.checkpoint_every * per_step,
        eval_every=online.eval_every * per_step,
        device=online.device,
        amp=False,  # S3 trains in float32
        threads=online.threads,
        wandb=online.wandb,
        wandb_project=online.wandb_project,
    )
    source = OnlineSource(
        env_id, algo.act, algo.feed(), run.data("replay.zarr"), seed=config.seed,
        explore_steps=config.n_explore, updates_per_step=per_step, commit_every=online.checkpoint_every,
        resume=resume,
    )  # fmt: skip
    # Evaluation reset seeds far above every training seed (online.train_seed), the same at every mark.
    seed = 10**9 + 1000 * config.seed
    deterministic = EnvEvaluation(env_id, online.eval_episodes, seed=seed)

    def evaluate(policy: Any, out_dir: Any) -> dict[str, float]:
        """The deterministic return, the strength and action magnitude it acted with, and the return with
        the training noise on (same reset seeds; its episodes are not kept)."""
        scores = deterministic(policy, out_dir) | policy.action_stats()
        with tempfile.TemporaryDirectory() as tmp:
            noisy = deterministic(algo.policy(noisy=True), lambda task: Path(tmp) / task)
        return scores | {f"noisy/{k}": v for k, v in noisy.items()}

    run.begin(
        Symphony.name, config, stage="online", seed=config.seed, env=env_id, store=str(source.store.location)
    )
    try:
        evaluation = evaluate if online.eval_episodes else None
        fit(algo, source, loop, run, stage="online", resume=resume, evaluate=evaluation, progress=progress)
    finally:
        source.close()
    return {"online": run.checkpoint("online")}
