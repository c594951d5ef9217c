"""Aggregate statistics for evaluation: Wilson intervals, IQM and (stratified) bootstrap confidence intervals.

The interquartile mean and stratified bootstrap follow rliable (Agarwal et al., 2021, "Deep RL at the edge
of the statistical precipice"): IQM is the mean of the middle 50% of runs, and confidence intervals resample
runs within each task (stratum) and recompute the aggregate, percentile method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial success rate (well-behaved at 0/n and n/n, unlike Wald)."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the values between the 25th and 75th percentiles (trimmed 25%)."""
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if x.size == 0:
        return float("nan")
    cut = int(0.25 * x.size)  # as scipy.stats.trim_mean(x, 0.25): drop floor(n/4) values at each end
    return float(x[cut : x.size - cut].mean())


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over i.i.d. values."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    resampled = x[rng.integers(0, x.size, size=(n_resamples, x.size))]
    stats = np.array([statistic(r) for r in resampled])
    alpha = (1 - confidence) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """rliable's interval for an aggregate over a (runs, tasks) score matrix: resample runs per task."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    n_runs, n_tasks = scores.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_runs, size=(n_resamples, n_runs, n_tasks))
    resampled = np.take_along_axis(scores[None].repeat(n_resamples, 0), idx, axis=1)
    stats = np.array([statistic(r.reshape(-1)) for r in resampled])
    alpha = (1 - confidence) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))
