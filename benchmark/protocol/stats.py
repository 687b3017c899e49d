"""Resampling statistics for the reports: percentile bootstrap confidence intervals.

The paper reports means over 10 Monte-Carlo folds (A.7); the benchmark adds intervals over
volumes (DESIGN.md, "Beyond the paper") so that a reader sees when a number is noise, for
instance a classifier whose AUC interval contains 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from benchmark.protocol.metrics import SEGMENTATION


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron) of ``statistic(*arrays)``: (low, high).

    The arrays are paired: resample ``k`` draws one set of row indices (with replacement,
    over the first axis) and indexes every array with it. Resamples on which the statistic
    is undefined (NaN, infinite, or a ValueError, e.g. an AUC of a resample holding one
    class) are skipped; (NaN, NaN) when none is defined. Matches
    ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` up to resampling noise.
    """
    if not arrays:
        raise ValueError("bootstrap_ci: give at least one array to resample")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples}")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_ci: paired arrays differ in length {[len(a) for a in arrays]}")
    if n == 0:
        return math.nan, math.nan
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    values = np.array([_defined(statistic, *(a[r] for a in arrays)) for r in rows])
    return _percentiles(values, (100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2))


def _defined(statistic: Callable[..., float], *arrays: np.ndarray) -> float:
    """``statistic(*arrays)`` as a float, NaN where it is undefined (raises ValueError)."""
    try:
        return float(statistic(*arrays))
    except (ValueError, ZeroDivisionError):
        return math.nan


def case_statistic(cases: pd.DataFrame, metric: str, rows: np.ndarray) -> np.ndarray:
    """The leaderboard number ``metric`` from per-case scores, once per row of ``rows``
    [B, n] (sample indices): a segmentation metric is the mean over the cases that have
    it; ``balanced_accuracy`` the mean of the per-class means of ``correct`` (A.7)."""
    if metric not in SEGMENTATION:
        correct = cases["correct"].to_numpy(float)
        positive = cases["label"].to_numpy(bool)
        per_class = [_mean(correct, rows, np.isfinite(correct) & c) for c in (positive, ~positive)]
        return np.nanmean(np.stack(per_class), axis=0)
    values = cases[metric].to_numpy(float)
    return _mean(values, rows, np.isfinite(values))


def _mean(values: np.ndarray, rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per resample: the mean of ``values`` over the drawn samples with ``weight``; NaN
    where none is drawn."""
    counts = weight[rows].sum(axis=1)
    totals = np.where(weight, np.nan_to_num(values), 0.0)[rows].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def case_intervals(
    cases: pd.DataFrame,
    metrics: Sequence[str],
    reference: pd.DataFrame | None = None,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap over cases (volumes), and over classifier seeds, of each
    leaderboard metric.

    ``cases``: one method's per-case scores (``label``, ``correct`` and the segmentation
    metrics, see :meth:`benchmark.protocol.evaluation.EvaluationResult.cases`); with a ``seed``
    column, one block of the same volumes in the same order per classifier seed. Returns
    ``{m}_ci_low`` and ``{m}_ci_high`` per metric and, with ``reference`` (another method's
    scores on the same volumes and seeds, in the same order), ``{m}_delta_ci_low`` and
    ``{m}_delta_ci_high``: the paired interval of (method - reference).

    Each resample draws volumes (with replacement, the same for every seed) and, with
    several seeds, seeds (with replacement), and averages the statistic over the drawn
    seeds: an interval that accounts for both the volumes and the classifier's training
    noise. The draws depend on ``seed`` and the numbers of volumes and seeds only, so
    every method of a page is resampled alike.
    """
    blocks = _seed_blocks(cases)
    theirs = None if reference is None else _seed_blocks(reference)
    n = len(blocks[0])
    if theirs is not None and [len(b) for b in theirs] != [len(b) for b in blocks]:
        raise ValueError(f"{len(cases)} cases paired with {len(reference)} reference cases")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(n_resamples, n))
    seeds = rng.integers(0, len(blocks), size=(n_resamples, len(blocks)))

    def statistic(frames: list[pd.DataFrame], metric: str) -> np.ndarray:
        per_seed = np.stack([case_statistic(f, metric, rows) for f in frames])  # [S, B]
        if len(frames) == 1:
            return per_seed[0]
        return per_seed[seeds, np.arange(n_resamples)[:, None]].mean(axis=1)

    tails = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {}
    for metric in metrics:
        values = statistic(blocks, metric)
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = _percentiles(values, tails)
        if theirs is not None:
            delta = values - statistic(theirs, metric)
            out[f"{metric}_delta_ci_low"], out[f"{metric}_delta_ci_high"] = _percentiles(
                delta, tails
            )
    return out


def _seed_blocks(cases: pd.DataFrame) -> list[pd.DataFrame]:
    """The per-case rows of each classifier seed (one block without a ``seed`` column)."""
    if "seed" not in cases:
        return [cases]
    blocks = [block for _, block in cases.groupby("seed", sort=True)]
    if len({len(b) for b in blocks}) > 1:
        raise ValueError("every seed must score the same volumes")
    return blocks


def _percentiles(values: np.ndarray, tails: tuple[float, float]) -> tuple[float, float]:
    """The percentiles ``tails`` of the finite ``values``; NaN when none is finite."""
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    low, high = np.percentile(values, tails)
    return float(low), float(high)
