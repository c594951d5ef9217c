"""``robocl compare``: success, cycle time and returns across methods, stages and seeds, rliable-style.

Each argument is a run directory or a folder of runs (:mod:`robocl.run.layout`; every ``run.json`` below it
is one run, i.e. one seed). Runs are grouped by (argument, method, stage): the CO-RFT demo run is two groups,
``il`` and ``rl``, one seed each. A run contributes the final evaluation of each stage (``step="best"``: its
best one by success rate, then return), one score per task (env and position set); per group, scores form a
(seeds x tasks) matrix aggregated by IQM with stratified-bootstrap 95% intervals, and one row per task gives
the mean over seeds. Groups evaluated on different task sets are flagged, and their aggregates are not
comparable. With ``out_dir``: bars of the aggregates, learning curves from every evaluation of every stage,
and loss curves from the runs' TensorBoard ``train/`` scalars.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robocl.eval.metrics import iqm, stratified_bootstrap_ci
from robocl.run.layout import RunDir, find_runs

METRICS = ("success_rate", "cycle_time_mean", "mean_return")


@dataclass
class Group:
    """One (label, method, stage): per seed, its scores by task, and its evaluation history."""

    name: str
    scores: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per run: task -> metrics
    curves: list[dict[str, list[tuple[int, float]]]] = field(default_factory=list)  # per run: task -> curve
    tb: list[Path] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return sorted({task for run in self.scores for task in run})

    def matrix(self, metric: str) -> np.ndarray:
        """(seeds x tasks); NaN where a seed has no score (a task it was not evaluated on, or no success)."""
        return np.array([[_num(run.get(t, {}).get(metric)) for t in self.tasks] for run in self.scores])


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _read(info_path: Path) -> tuple[str, dict[str, float]]:
    info = json.loads(info_path.read_text())
    task = f"{info.get('env_id', '?')} [{info.get('positions') or 'default'}]"
    aggregate = info["aggregate"]
    return task, {m: aggregate.get(m) for m in METRICS}


def load_groups(roots: Sequence[str | Path], step: str = "final") -> list[Group]:
    """Every (label, method, stage) found under ``roots``, each run of it one seed."""
    if step not in ("final", "best"):
        raise ValueError(f"step must be 'final' or 'best', got {step!r}")
    groups: dict[str, Group] = {}
    for root in roots:
        runs = find_runs(root)
        if not runs:
            raise FileNotFoundError(f"no run.json under {root}: not a robocl run directory")
        label = Path(root).resolve().name
        for run in runs:
            info = run.info()
            for stage in info["stages"]:
                history = _history(run, stage)
                if not history:
                    continue
                name = f"{label}: {info['method']} {stage}" if len(roots) > 1 else f"{info['method']} {stage}"
                group = groups.setdefault(name, Group(name))
                group.scores.append(_pick(history, step))
                group.curves.append(_curves(history))
                if run.tb(stage).is_dir():
                    group.tb.append(run.tb(stage))
    if not groups:
        raise FileNotFoundError(f"no evaluations under {', '.join(map(str, roots))} (eval/<stage>/<step>/)")
    return list(groups.values())


def _history(run: RunDir, stage: str) -> dict[int, dict[str, dict[str, float]]]:
    """step -> task -> metrics of every evaluation of a stage."""
    history: dict[int, dict[str, dict[str, float]]] = defaultdict(dict)
    for step, path in run.evaluations(stage):
        task, metrics = _read(path)
        history[step][task] = metrics
    return dict(history)


def _pick(history: dict[int, dict[str, dict[str, float]]], step: str) -> dict[str, dict[str, float]]:
    if step == "final":
        return history[max(history)]

    def score(s: int) -> tuple[float, float]:
        tasks = history[s].values()
        return (
            float(np.nanmean([_num(t["success_rate"]) for t in tasks])),
            float(np.nanmean([_num(t["mean_return"]) for t in tasks])),
        )

    return history[max(history, key=score)]


def _curves(history: dict[int, dict[str, dict[str, float]]]) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for s in sorted(history):
        for task, metrics in history[s].items():
            value = metrics["success_rate"] if metrics["success_rate"] is not None else metrics["mean_return"]
            curves[task].append((s, _num(value)))
    return dict(curves)


def compare(
    roots: Sequence[str | Path], out_dir: str | Path | None = None, step: str = "final"
) -> tuple[str, dict[str, Any]]:
    """A markdown table (IQM and 95% CI per metric and group, then the mean per task) and, with
    ``out_dir``, PNG plots. The summary dict holds the same numbers."""
    groups = load_groups(roots, step)
    rows, task_rows, summary = [], [], {}
    task_sets = {tuple(g.tasks) for g in groups}
    for g in groups:
        entry: dict[str, Any] = {"tasks": g.tasks, "n_seeds": len(g.scores)}
        cells = [g.name, str(len(g.scores)), str(len(g.tasks))]
        for metric in METRICS:
            matrix = g.matrix(metric)
            finite = matrix[np.isfinite(matrix)]
            if finite.size == 0:
                cells.append("-")
                continue
            value = iqm(finite)
            lo, hi = stratified_bootstrap_ci(np.where(np.isfinite(matrix), matrix, np.nanmean(matrix)))
            entry[metric] = {"iqm": value, "ci95": [lo, hi]}
            cells.append(f"{value:.3g} [{lo:.3g}, {hi:.3g}]")
        for j, task in enumerate(g.tasks):
            means = [
                np.nanmean(g.matrix(m)[:, j]) if np.isfinite(g.matrix(m)[:, j]).any() else None
                for m in METRICS
            ]
            task_rows.append([g.name, task, *("-" if v is None else f"{v:.3g}" for v in means)])
        summary[g.name] = entry
        rows.append(cells)
    lines = [
        _table(["group", "seeds", "tasks", "success IQM [95% CI]", "cycle time s IQM", "return IQM"], rows)
    ]
    lines += ["", _table(["group", "task", "success (mean)", "cycle time s", "return"], task_rows)]
    if len(task_sets) > 1:
        warning = "warning: the groups were evaluated on different tasks; their aggregates are not comparable"
        lines += ["", warning]
        summary["warning"] = warning
    if out_dir is not None:
        _plots(groups, Path(out_dir))
    return "\n".join(lines), summary


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _plots(groups: list[Group], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric, label in [
        (axes[0], "success_rate", "success rate"),
        (axes[1], "cycle_time_mean", "cycle time (s)"),
    ]:
        names, values, errs = [], [], []
        for g in groups:
            matrix = g.matrix(metric)
            finite = matrix[np.isfinite(matrix)]
            if finite.size == 0:
                continue
            lo, hi = stratified_bootstrap_ci(np.where(np.isfinite(matrix), matrix, np.nanmean(matrix)))
            value = iqm(finite)
            names.append(g.name)
            values.append(value)
            errs.append([value - lo, hi - value])
        ax.barh(names, values, xerr=np.array(errs).T if errs else None, color="tab:blue", alpha=0.7)
        ax.set_xlabel(f"{label} (IQM, 95% CI)")
    fig.tight_layout()
    fig.savefig(out_dir / "compare_bars.png", dpi=100)
    plt.close(fig)
    _curve_plot(
        {g.name: g.curves for g in groups},
        out_dir / "compare_curves.png",
        "evaluation (success, else return)",
    )
    _curve_plot({g.name: _losses(g.tb) for g in groups}, out_dir / "compare_losses.png", "training loss")


def _losses(tb_dirs: Sequence[Path]) -> list[dict[str, list[tuple[int, float]]]]:
    """Per run: train/<metric> -> [(update, value)] from TensorBoard (losses only)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = []
    for tb in tb_dirs:
        acc = EventAccumulator(str(tb))
        acc.Reload()
        tags = [t for t in acc.Tags().get("scalars", []) if t.startswith("train/") and "loss" in t]
        runs.append({t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags})
    return runs


def _curve_plot(curves: dict[str, list[dict[str, list[tuple[int, float]]]]], path: Path, ylabel: str) -> None:
    """One panel per series name (a task, a loss); per group the mean over its runs, shaded min-max."""
    import matplotlib.pyplot as plt

    names = sorted({name for runs in curves.values() for run in runs for name in run})
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for group, runs in curves.items():
            series = [np.array(run[name]) for run in runs if run.get(name)]
            if not series:
                continue
            steps = series[0][:, 0]
            aligned = np.array([np.interp(steps, s[:, 0], s[:, 1]) for s in series])
            ax.plot(steps, aligned.mean(0), label=group)
            if len(series) > 1:
                ax.fill_between(steps, aligned.min(0), aligned.max(0), alpha=0.2)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
