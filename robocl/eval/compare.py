"""``robocl compare``: success, cycle time and learning curves across runs and seeds, rliable-style.

Each argument is one method: a run directory, or a folder of runs (one per seed). Every ``eval_info.json``
below it is one (seed, task) evaluation; scores form a (seeds x tasks) matrix per method, aggregated by IQM
with stratified-bootstrap 95% intervals. Learning curves come from the runs' TensorBoard ``eval/`` scalars.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robocl.eval.metrics import iqm, stratified_bootstrap_ci


def load_method(root: str | Path) -> dict[str, Any]:
    """Scores of one method: {metric: (seeds x tasks) matrix}, task names and learning curves."""
    root = Path(root)
    files = sorted(root.rglob("eval_info.json")) if root.is_dir() else [root]
    if not files:
        raise FileNotFoundError(f"no eval_info.json under {root}")
    per_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in files:
        info = json.loads(f.read_text())
        task = f"{info.get('env_id', '?')}[{info.get('positions') or 'default'}]"
        per_task[task].append(info["aggregate"])
    tasks = sorted(per_task)
    n_seeds = min(len(v) for v in per_task.values())
    scores = {}
    for metric in ("success_rate", "mean_return", "cycle_time_mean"):
        matrix = np.array([[_num(per_task[t][s].get(metric)) for t in tasks] for s in range(n_seeds)])
        scores[metric] = matrix
    return {"name": root.name, "tasks": tasks, "scores": scores, "curves": _curves(root)}


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _curves(root: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """eval/* scalars of every TensorBoard log under root: {tag: [(steps, values) per run]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for tb in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(tb))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("eval/"):
                events = acc.Scalars(tag)
                out[tag].append((np.array([e.step for e in events]), np.array([e.value for e in events])))
    return out


def compare(roots: Sequence[str | Path], out_dir: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """A markdown table (IQM and 95% CI per metric and method) and, with ``out_dir``, PNG plots."""
    methods = [load_method(r) for r in roots]
    rows, summary = [], {}
    for m in methods:
        entry = {"tasks": m["tasks"], "n_seeds": int(m["scores"]["success_rate"].shape[0])}
        cells = [m["name"], str(entry["n_seeds"]), str(len(m["tasks"]))]
        for metric in ("success_rate", "cycle_time_mean", "mean_return"):
            matrix = m["scores"][metric]
            finite = matrix[np.isfinite(matrix)]
            if finite.size == 0:
                cells.append("-")
                continue
            value = iqm(finite)
            lo, hi = stratified_bootstrap_ci(np.where(np.isfinite(matrix), matrix, np.nanmean(matrix)))
            entry[metric] = {"iqm": value, "ci95": [lo, hi]}
            cells.append(f"{value:.3g} [{lo:.3g}, {hi:.3g}]")
        summary[m["name"]] = entry
        rows.append(cells)
    headers = ["method", "seeds", "tasks", "success IQM [95% CI]", "cycle time s IQM", "return IQM"]
    table = "\n".join(
        ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    if out_dir is not None:
        _plots(methods, Path(out_dir))
    return table, summary


def _plots(methods: list[dict[str, Any]], out_dir: Path) -> None:
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
        for m in methods:
            matrix = m["scores"][metric]
            finite = matrix[np.isfinite(matrix)]
            if finite.size == 0:
                continue
            lo, hi = stratified_bootstrap_ci(np.where(np.isfinite(matrix), matrix, np.nanmean(matrix)))
            value = iqm(finite)
            names.append(m["name"])
            values.append(value)
            errs.append([value - lo, hi - value])
        ax.barh(names, values, xerr=np.array(errs).T if errs else None, color="tab:blue", alpha=0.7)
        ax.set_xlabel(f"{label} (IQM, 95% CI)")
    fig.tight_layout()
    fig.savefig(out_dir / "compare_bars.png", dpi=100)
    plt.close(fig)

    tags = sorted({tag for m in methods for tag in m["curves"]})
    if not tags:
        return
    fig, axes = plt.subplots(1, len(tags), figsize=(4.5 * len(tags), 3.5), squeeze=False)
    for ax, tag in zip(axes[0], tags, strict=True):
        for m in methods:
            runs = m["curves"].get(tag, [])
            if not runs:
                continue
            steps = runs[0][0]
            aligned = np.array([np.interp(steps, s, v) for s, v in runs])
            mean = aligned.mean(0)
            ax.plot(steps, mean, label=m["name"])
            if len(runs) > 1:
                ax.fill_between(steps, aligned.min(0), aligned.max(0), alpha=0.2)
        ax.set_title(tag)
        ax.set_xlabel("update")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_dir / "compare_curves.png", dpi=100)
    plt.close(fig)
