"""Percentile bootstrap intervals (benchmark/stats.py) against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from benchmark.stats import bootstrap_ci


def test_mean_interval_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).normal(2.0, 0.5, size=60)
    ours = bootstrap_ci(np.mean, x, n_resamples=2000, seed=3)
    theirs = scipy_stats.bootstrap(
        (x,), np.mean, n_resamples=2000, method="percentile", random_state=7
    ).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC in numpy (sklearn's roc_auc_score is ~10x slower per call)."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_paired_auc_interval_matches_scipy():
    rng = np.random.default_rng(2)
    labels = np.arange(80) % 2
    scores = rng.normal(size=80) + 0.8 * labels
    assert _auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    ours = bootstrap_ci(_auc, labels, scores, n_resamples=2000, confidence=0.9)
    theirs = scipy_stats.bootstrap(
        (labels, scores),
        _auc,
        paired=True,
        vectorized=False,
        n_resamples=2000,
        confidence_level=0.9,
        method="percentile",
        random_state=5,
    ).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)
    low, high = ours
    assert low < roc_auc_score(labels, scores) < high


def test_large_sample_mean_interval_is_the_normal_one():
    # closed form: mean +- z_{0.975} sd / sqrt(n) for a large sample
    x = np.random.default_rng(0).normal(0.0, 1.0, size=4000)
    half = 1.959964 * x.std() / math.sqrt(len(x))
    low, high = bootstrap_ci(np.mean, x, n_resamples=2000)
    assert (low, high) == pytest.approx((x.mean() - half, x.mean() + half), abs=0.004)


def test_undefined_resamples_are_skipped():
    labels = np.array([1, 1] + [0] * 8)  # many resamples hold no positive: AUC undefined
    scores = np.array([5.0, 6.0] + list(range(-8, 0)))  # separable: AUC 1 when defined

    def auc(y, s):
        if y.min() == y.max():
            raise ValueError("one class")
        return _auc(y, s)

    low, high = bootstrap_ci(auc, labels, scores, n_resamples=500)
    assert (low, high) == (1.0, 1.0)
    assert bootstrap_ci(lambda y: math.nan, labels) == pytest.approx(
        (math.nan, math.nan), nan_ok=True
    )


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_ci(roc_auc_score, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(np.mean, np.zeros(3), confidence=95)
