"""Continual model-based RL through the one loop: an outer loop over tasks, one loop stage per task.

For task t (stage ``task<t>``) the data source (:class:`PlannerSource`) follows the HyperCRL reference's
schedule: ``n_random`` steps with N(0, I) actions, then MPC with the current model, retraining for
``grad_steps`` updates before every ``retrain_every`` MPC steps. The loop pulls those updates; the source
collects the env steps a session needs before its first batch, and every session draws shuffled epochs of
the task's train split; with ``early_stop_fraction`` a session ends on the weights that scored best on the
task's selection split (``HyperCRL.end_session``). Every ``eval_every`` env steps each task seen so far is
evaluated by the shared evaluator (MPC episodes with that task's model, into
``eval/task<t>/<env step>/<env>/``); the after-task matrix and the continual metrics go to
``continual.json``. The run's transitions go to ``data/data.zarr``.

A killed run resumes at the start of the task it was in: a task's checkpoint is complete once the task has
ended (its ``tasks_done`` says so); a partial one is discarded, and the task runs again from its seeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robocl.algos.dynamics import HyperCRLConfig, TaskData, stream_seed
from robocl.algos.hypercrl import HyperCRL, PlannerPolicy
from robocl.checkpoint import load_checkpoint, resolve_checkpoint
from robocl.eval.continual import ContinualEvaluator, continual_metrics, plot_curves
from robocl.eval.evaluate import evaluate
from robocl.run.layout import RunDir
from robocl.run.loop import LoopConfig, fit, save_algorithm
from robocl.store import EpisodeMeta, Feature, TrajectoryStore


class PlannerSource:
    """Task ``task``'s env steps and training batches (see the module docstring)."""

    def __init__(
        self,
        algo: HyperCRL,
        task: int,
        evaluator: ContinualEvaluator,
        on_env_step: Callable[[int, int], None] | None = None,
    ) -> None:
        cfg = algo.config
        self.algo, self.task, self.evaluator, self.on_env_step = algo, task, evaluator, on_env_step
        self.env = gym.make(algo.env_ids[task])
        self.reward_fn = self.env.unwrapped.reward_fn  # type: ignore[attr-defined]
        self.rng = np.random.default_rng(stream_seed(cfg.seed, task, 1))
        plan_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, task, 2))
        self.planner = PlannerPolicy(
            lambda state, previous: algo.plan(task, state, self.reward_fn, plan_gen, previous)
        )
        self.order_gen = torch.Generator().manual_seed(stream_seed(cfg.seed, task, 4))
        self.env.reset(seed=stream_seed(cfg.seed, task, 4))
        self.state = self.env.unwrapped.get_state()  # type: ignore[attr-defined]
        self.n_random, self.n_mpc = int(cfg.n_random or 0), int(cfg.n_mpc or 0)
        self.retrain_every, self.grad_steps = int(cfg.retrain_every or 1), int(cfg.grad_steps or 0)
        self.mpc_done, self.random_done, self.updates = 0, False, 0
        self.order: list[torch.Tensor] = []
        self.episodes: list[tuple[dict[str, Any], EpisodeMeta, dict[str, Any]]] = []
        self._steps: list[dict[str, Any]] = []

    @property
    def n_updates(self) -> int:
        """Updates of the task: ``grad_steps`` per retraining session, one session per ``retrain_every``
        MPC steps (the first one before any MPC step)."""
        return self.grad_steps * -(-self.n_mpc // self.retrain_every)

    def _collect(self, n: int, mpc: bool) -> None:
        cfg, algo = self.algo.config, self.algo
        for _ in range(n):
            # the planner generates W_t once per session: it caches the model until the next update
            action = self.planner.act(self.state) if mpc else self.rng.standard_normal(algo.action_dim)
            action = action.astype(np.float32)
            space = self.env.action_space
            _, reward, terminated, truncated, _ = self.env.step(np.clip(action, space.low, space.high))
            nxt = self.env.unwrapped.get_state()  # type: ignore[attr-defined]
            train = bool(self.rng.random() < cfg.train_fraction)
            algo.data[self.task].add(self.state, action, nxt, train)  # unclipped: as the planner sees it
            self._steps.append(
                {"observation.state": self.state, "action": action, "reward": reward, "next_state": nxt,
                 "train": train}
            )  # fmt: skip
            self.state = nxt
            if terminated or truncated:
                self._end_episode(terminated)
                self.env.reset()
                self.state = self.env.unwrapped.get_state()  # type: ignore[attr-defined]
                self.planner.reset()
            algo.env_step += 1
            self.evaluator.maybe_evaluate(algo.env_step, self.task)
            if self.on_env_step is not None:
                self.on_env_step(algo.env_step, self.task)
        self.mpc_done += n if mpc else 0

    def _end_episode(self, terminated: bool) -> None:
        """The steps since the last reset become a stored episode (one still running is cut: truncated)."""
        if not self._steps:
            return
        cfg = self.algo.config
        meta = EpisodeMeta(
            task=self.algo.env_ids[self.task], terminated=terminated, truncated=not terminated,
            tags=(f"task{self.task}", cfg.method),
        )  # fmt: skip
        batch = {k: np.stack([s[k] for s in self._steps]) for k in self._steps[0]}
        last = batch["next_state"][-1]
        self.episodes.append((batch, meta, {"observation.state": last, "next_state": last}))
        self._steps = []

    def sample(self, batch_size: int) -> dict[str, Any]:
        """The next batch of the current session; a session starts after the env steps it needs."""
        if self.updates % self.grad_steps == 0:
            if self.updates:
                self.algo.end_session()
            if not self.random_done:
                self._collect(self.n_random, mpc=False)
                self.random_done = True
            else:
                self._collect(min(self.retrain_every, self.n_mpc - self.mpc_done), mpc=True)
            self.algo.refresh_stats()
            self.algo.start_session()
            self.order = []  # each session starts a new epoch
        if not self.order:
            train_idx = torch.nonzero(self.algo.data[self.task].train).flatten()
            size = min(batch_size, len(train_idx))  # fewer train transitions than a batch: all of them
            perm = train_idx[torch.randperm(len(train_idx), generator=self.order_gen)]
            # The last partial batch is dropped, as in the reference; no train transition: an empty batch.
            self.order = list(perm[: len(perm) // size * size].split(size)) if size else [train_idx]
        self.updates += 1
        return {"idx": self.order.pop(0).numpy()}

    def finish(self) -> list[tuple[dict[str, Any], EpisodeMeta, dict[str, Any]]]:
        """The env steps after the last session (all of them when the task had no update); the episodes."""
        if self.updates:
            self.algo.end_session()
        if not self.random_done:
            self._collect(self.n_random, mpc=False)
        self._collect(self.n_mpc - self.mpc_done, mpc=True)
        self._end_episode(terminated=False)
        self.env.close()
        return self.episodes

    def metrics(self) -> dict[str, float]:
        return {"env_steps": float(self.algo.env_step), "transitions": float(len(self.algo.data[self.task]))}

    def state_dict(self) -> dict[str, Any]:
        return {}  # a task is redone from its start on resume: nothing mid-task is kept

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def train_hypercrl(
    config: HyperCRLConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_env_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the task sequence in ``run_dir`` (``resume``: continue the run there); returns the continual
    metrics. ``on_env_step(step, task)`` is called after every env step (tests simulate a kill with it)."""
    run = RunDir(run_dir)
    if not resume and run.info_path.exists():
        raise FileExistsError(f"{run.path} already holds a run; pass --resume or use a new run dir")
    algo = HyperCRL(config)
    start = _resume(algo, run)
    path = run.data("data.zarr")
    store = (
        TrajectoryStore.open(path, "a")
        if (path / "zarr.json").exists()
        else TrajectoryStore.create(path, _features(algo), fps=10.0, meta={"family": config.family})
    )
    metrics: dict[str, Any] = {}
    with store:
        _reload_data(algo, store)
        n_tasks = len(algo.env_ids)
        evaluator = ContinualEvaluator(
            n_tasks, lambda k: _evaluate(algo, run, k), int(config.eval_every or 1)
        )
        evaluator.log = algo.log
        for task in range(start, len(algo.env_ids)):
            stage = f"task{task}"
            algo.start_task(task)
            source = PlannerSource(algo, task, evaluator, on_env_step)
            if source.n_updates:
                loop = LoopConfig(
                    n_updates=source.n_updates,
                    batch_size=int(config.batch_size),
                    log_every=max(1, int(config.grad_steps or 1)),
                    checkpoint_every=source.n_updates,
                    amp=False,
                )
                fit(algo, source, loop, run, stage=stage, progress=progress)
            episodes = source.finish()
            evaluator.end_task(algo.env_step, task)
            algo.end_task(task)
            # Data first, checkpoint second: a kill in between redoes the task (its stale episodes stay in
            # the store, but only the indices the checkpoint lists are read back).
            algo.episodes.append(store.add_episodes(episodes))
            run.begin(algo.name, config, stage=stage, seed=config.seed, env=algo.env_ids, store=str(path))
            save_algorithm(algo, _checkpoint(run, stage))
            metrics = _write_metrics(algo, run.path)
    return metrics


def _checkpoint(run: RunDir, stage: str) -> Path:
    path = run.checkpoint(stage)
    if path.exists():  # the loop's end-of-stage save: replaced by the one that has the task's end in it
        shutil.rmtree(path)
    return path


def _resume(algo: HyperCRL, run: RunDir) -> int:
    """Load the newest complete task checkpoint; discard a partial one after it. Returns the next task."""
    start = 0
    for task in reversed(range(len(algo.env_ids))):
        path = run.checkpoint(f"task{task}")
        if resolve_checkpoint(path) is None:
            continue
        ckpt = load_checkpoint(path, method=algo.name)
        if ckpt.config != json.loads(json.dumps(asdict(algo.config))):
            raise ValueError(f"{run.path} holds a run with another config; use a new --run-dir")
        trainer = ckpt.trainer_state()["algorithm"]
        if int(trainer["tasks_done"]) == task + 1:
            algo.load_state_dict({"model": ckpt.tensors, "trainer": trainer})
            start = task + 1
            break
    for task in range(start, len(algo.env_ids)):  # partial checkpoints of the task the kill interrupted
        shutil.rmtree(run.path / "checkpoints" / f"task{task}", ignore_errors=True)
    return start


def _evaluate(algo: HyperCRL, run: RunDir, task: int) -> float:
    """Mean MPC episode return on ``task`` with its own model, through the shared evaluator; the reset
    seeds are disjoint from the training resets, the planner's noise depends on the clock."""
    cfg = algo.config
    policy = algo.policy(task, seed=stream_seed(cfg.seed, task, 1_000_000 + algo.env_step))
    result = evaluate(
        policy,
        algo.env_ids[task],
        n_episodes=int(cfg.eval_episodes or 0),
        seed=stream_seed(cfg.seed, task, 100),
        max_steps=cfg.eval_max_steps,
        out_dir=run.eval_dir(f"task{algo.task}", algo.env_step, algo.env_ids[task]),
        progress=False,
    )
    return float(result["summary"]["mean_return"])


def _features(algo: HyperCRL) -> dict[str, Feature]:
    return {
        "observation.state": Feature("state", "float32", (algo.state_dim,)),
        "next_state": Feature("state", "float32", (algo.state_dim,)),
        "action": Feature("action", "float32", (algo.action_dim,)),
        "reward": Feature("reward", "float32"),
        "train": Feature("flag", "bool"),
    }


def _reload_data(algo: HyperCRL, store: TrajectoryStore) -> None:
    """Rebuild finished tasks' transitions from the store (replay and memory counts read them)."""
    algo.data = []
    for indices in algo.episodes:
        data = TaskData(algo.state_dim, algo.action_dim)
        for index in indices:
            ep = store.episode(index)
            data.extend(ep["observation.state"], ep["action"], ep["next_state"], ep["train"])
        algo.data.append(data)


def _write_metrics(algo: HyperCRL, run_dir: Path) -> dict[str, Any]:
    metrics = continual_metrics(algo.log)
    metrics["memory_bytes"] = algo.memory_bytes()
    errors = algo.model_errors
    metrics["model_error_matrix"] = errors
    metrics["model_error_forgetting"] = [errors[-1][k] - errors[k][k] for k in range(len(errors) - 1)]
    metrics["early_stop_updates"] = algo.early_stops  # per task, the update each session kept
    payload = {"metrics": metrics, "log": algo.log.to_dict(), "config": asdict(algo.config)}
    (run_dir / "continual.json").write_text(json.dumps(payload, indent=2))
    plot_curves(algo.log, run_dir / "curves.png", ylabel="episode reward")
    return metrics
