"""Continual evaluation: every task seen so far, evaluated at a fixed interval during training.

Metrics on the log of evaluations a(n, k) (performance on task k at training iteration n):

- after-task matrix R[i, k]: a on task k at the end of training task i (the classic evaluation);
- average performance ACC = mean_k R[T-1, k];
- forgetting_k = max_{i<T-1} R[i, k] - R[T-1, k] (Chaudhry et al., 2018), for k < T-1;
- HyperCRL's ratios: forgetting ratio_k = R[T-1, k] / R[k, k], forward-transfer ratio_k = R[k, k] /
  R_single[k] (a model trained on task k alone);
- backward transfer BWT = mean_{k<T-1} (R[T-1, k] - R[k, k]) (Lopez-Paz & Ranzato, 2017); forward transfer
  is HyperCRL's ratio above, since only tasks seen so far are evaluated;
- the stability-gap measures of De Lange et al. (2023, "Continual evaluation for lifelong learning"):
  min-ACC = mean_{k<T-1} min_{n > end_k} a(n, k) (worst performance on a task after it was learned),
  WC-ACC = R[T-1, T-1] / T + (1 - 1/T) min-ACC, and per task switch the gap = performance just before the
  switch minus the minimum over the evaluations of the next task.

Performance is "higher is better" (success rate, return or reward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ContinualLog:
    """Evaluations of every seen task; ``task_ends[i]`` is the iteration at which training task i ended."""

    n_tasks: int
    steps: list[int] = field(default_factory=list)
    training_task: list[int] = field(default_factory=list)
    eval_task: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    task_ends: list[int] = field(default_factory=list)

    def record(self, step: int, training_task: int, eval_task: int, value: float) -> None:
        self.steps.append(int(step))
        self.training_task.append(int(training_task))
        self.eval_task.append(int(eval_task))
        self.value.append(float(value))

    def curve(self, task: int) -> tuple[np.ndarray, np.ndarray]:
        sel = np.asarray(self.eval_task) == task
        return np.asarray(self.steps)[sel], np.asarray(self.value)[sel]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContinualLog:
        return cls(**d)


class ContinualEvaluator:
    """Calls ``evaluate(task) -> float`` on every task seen so far each ``interval`` training iterations."""

    def __init__(self, n_tasks: int, evaluate: Callable[[int], float], interval: int) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.evaluate, self.interval = evaluate, interval
        self.log = ContinualLog(n_tasks)

    def maybe_evaluate(self, step: int, current_task: int) -> None:
        if step % self.interval == 0:
            self.evaluate_all(step, current_task)

    def evaluate_all(self, step: int, current_task: int) -> None:
        for task in range(current_task + 1):
            self.log.record(step, current_task, task, self.evaluate(task))

    def end_task(self, step: int, task: int) -> None:
        """Evaluate at the task's last iteration (the after-task matrix row) and mark the boundary."""
        if not self.log.steps or self.log.steps[-1] != step or self.log.training_task[-1] != task:
            self.evaluate_all(step, task)
        self.log.task_ends.append(int(step))


def after_task_matrix(log: ContinualLog) -> np.ndarray:
    """R[i, k] = performance on task k evaluated at the end of task i (NaN for k > i)."""
    n_done = len(log.task_ends)
    R = np.full((n_done, log.n_tasks), np.nan)
    steps, value, task = np.asarray(log.steps), np.asarray(log.value), np.asarray(log.eval_task)
    for i, end in enumerate(log.task_ends):
        for k in range(i + 1):
            sel = (steps == end) & (task == k)
            if not sel.any():
                raise ValueError(f"no evaluation of task {k} at the end of task {i} (step {end})")
            R[i, k] = value[sel][-1]
    return R


def continual_metrics(
    log: ContinualLog,
    single_task: Sequence[float] | None = None,
) -> dict[str, Any]:
    """All metrics of the module docstring for the tasks finished so far."""
    R = after_task_matrix(log)
    T = R.shape[0]
    if T == 0:
        raise ValueError("no task has finished yet")
    final = R[T - 1, :T]
    out: dict[str, Any] = {"after_task_matrix": R.tolist(), "average": float(final.mean())}
    earlier = range(T - 1)
    out["forgetting"] = [float(np.nanmax(R[: T - 1, k]) - R[T - 1, k]) for k in earlier]
    out["forgetting_ratio"] = [_ratio(R[T - 1, k], R[k, k]) for k in earlier]
    out["bwt"] = float(np.mean([R[T - 1, k] - R[k, k] for k in earlier])) if T > 1 else float("nan")
    if single_task is not None:
        out["forward_transfer_ratio"] = [_ratio(R[k, k], single_task[k]) for k in range(T)]

    steps, values, tasks = np.asarray(log.steps), np.asarray(log.value), np.asarray(log.eval_task)
    min_acc = []
    for k in earlier:
        after = (tasks == k) & (steps > log.task_ends[k])
        min_acc.append(float(values[after].min()) if after.any() else float(R[T - 1, k]))
    out["min_acc"] = float(np.mean(min_acc)) if min_acc else float("nan")
    out["wc_acc"] = float(R[T - 1, T - 1] / T + (1 - 1 / T) * out["min_acc"]) if T > 1 else float(R[0, 0])
    gaps = []
    for j in range(1, T):  # switch from task j-1 to task j
        lo, hi = log.task_ends[j - 1], log.task_ends[j]
        for k in range(j):
            window = (tasks == k) & (steps > lo) & (steps <= hi)
            if window.any():
                gaps.append(
                    {
                        "switch_to": j,
                        "task": k,
                        "before": float(R[j - 1, k]),
                        "min_after": float(values[window].min()),
                        "gap": float(R[j - 1, k] - values[window].min()),
                    }
                )
    out["stability_gaps"] = gaps
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b != 0 else float("nan")


def plot_curves(log: ContinualLog, path: str | Path, *, ylabel: str = "performance") -> Path:
    """Per-task curves over training with task boundaries marked (matplotlib, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for k in range(log.n_tasks):
        x, y = log.curve(k)
        if len(x):
            ax.plot(x, y, marker=".", label=f"task {k}")
    for end in log.task_ends:
        ax.axvline(end, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("training iteration")
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
