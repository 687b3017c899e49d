"""Resampling statistics for the reports: percentile bootstrap confidence intervals.

The paper reports means over 10 Monte-Carlo folds (A.7); the benchmark adds intervals over
volumes (DESIGN.md, "Beyond the paper") so that a reader sees when a number is noise, for
instance a classifier whose AUC interval contains 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


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
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _defined(statistic: Callable[..., float], *arrays: np.ndarray) -> float:
    """``statistic(*arrays)`` as a float, NaN where it is undefined (raises ValueError)."""
    try:
        return float(statistic(*arrays))
    except (ValueError, ZeroDivisionError):
        return math.nan
