"""Per-episode evaluation rows and their aggregates, as CO-RFT reports them.

Cycle time is the time from the episode start until success first holds: (index of the first step whose
outcome is a success + 1) x control period, counted for successful episodes only (CO-RFT's definition).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robocl.eval.metrics import bootstrap_ci, iqm, wilson_interval


@dataclass
class EpisodeResult:
    episode: int  # index within the evaluation; the env was reset with seed + episode
    seed: int
    success: bool | None  # success held at some step of the episode; None: the env does not report it
    episode_return: float
    length: int
    first_success_step: int | None  # 0-based step at whose end success first held
    cycle_time: float | None  # seconds, successful episodes only


def episode_result(
    episode: int, seed: int, rewards: Sequence[float], successes: Sequence[bool] | None, control_dt: float
) -> EpisodeResult:
    """``successes``: the per-step success flags, or None for an env that does not report success."""
    hits = np.flatnonzero(np.asarray(successes if successes is not None else [], dtype=bool))
    first = int(hits[0]) if hits.size else None
    return EpisodeResult(
        episode=episode,
        seed=seed,
        success=None if successes is None else first is not None,
        episode_return=float(np.sum(rewards, dtype=np.float64)),
        length=len(rewards),
        first_success_step=first,
        cycle_time=None if first is None else (first + 1) * control_dt,
    )


def summarize(rows: Sequence[EpisodeResult], *, seed: int = 0) -> dict[str, Any]:
    """Success rate with a Wilson 95% interval, mean and IQM return with bootstrap CIs, cycle time. The
    success rate and its interval are None when no episode reports success (an env that cannot tell)."""
    n = len(rows)
    judged = [r.success for r in rows if r.success is not None]
    returns = np.array([r.episode_return for r in rows])
    cycles = np.array([r.cycle_time for r in rows if r.cycle_time is not None])
    interval = list(wilson_interval(sum(judged), len(judged))) if judged else None
    return {
        "n_episodes": n,
        "success_rate": sum(judged) / len(judged) if judged else None,
        "success_rate_ci95": interval,
        "mean_return": float(returns.mean()) if n else float("nan"),
        "mean_return_ci95": list(bootstrap_ci(returns, np.mean, seed=seed)),
        "iqm_return": iqm(returns),
        "iqm_return_ci95": list(bootstrap_ci(returns, iqm, seed=seed)),
        "mean_length": float(np.mean([r.length for r in rows])) if n else float("nan"),
        "cycle_time_mean": float(cycles.mean()) if cycles.size else None,
        "cycle_time_std": float(cycles.std()) if cycles.size else None,
    }


def format_table(summary: dict[str, Any], title: str = "") -> str:
    """The summary as aligned text; success rate and cycle time only where the env reports success."""
    rows = [("episodes", f"{summary['n_episodes']}")]
    if summary["success_rate"] is not None:
        lo, hi = summary["success_rate_ci95"]
        rows.append(("success rate", f"{summary['success_rate']:.1%}  (95% CI {lo:.1%} – {hi:.1%})"))
    rows += [
        (
            "return mean",
            f"{summary['mean_return']:.2f}  (95% CI {summary['mean_return_ci95'][0]:.2f} – "
            f"{summary['mean_return_ci95'][1]:.2f})",
        ),
        (
            "return IQM",
            f"{summary['iqm_return']:.2f}  (95% CI {summary['iqm_return_ci95'][0]:.2f} – "
            f"{summary['iqm_return_ci95'][1]:.2f})",
        ),
    ]
    if summary["success_rate"] is not None:
        cycle = summary["cycle_time_mean"]
        rows.append(
            ("cycle time", "-" if cycle is None else f"{cycle:.2f} ± {summary['cycle_time_std']:.2f} s")
        )
    rows.append(("mean length", f"{summary['mean_length']:.1f} steps"))
    width = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def write_eval_info(
    path: str | Path, rows: Sequence[EpisodeResult], summary: dict[str, Any], meta: dict[str, Any]
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "aggregate": summary, "episodes": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
