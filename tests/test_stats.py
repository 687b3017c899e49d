"""Percentile bootstrap intervals (benchmark/protocol/stats.py) against scipy and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from benchmark.protocol.stats import bootstrap_ci, case_intervals, case_statistic


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


def cases_frame(values: np.ndarray, labels: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Per-case scores: Dice where annotated (NaN elsewhere), label, fraction correct."""
    return pd.DataFrame({"label": labels, "correct": correct, "dice": values})


def test_case_intervals_equal_scipys_percentile_bootstrap_draw_for_draw():
    rng = np.random.default_rng(4)
    n = 40
    dice, other = rng.random(n), rng.random(n) * 0.8
    labels = np.ones(n, int)
    ours = case_intervals(
        cases_frame(dice, labels, np.ones(n)),
        ["dice"],
        cases_frame(other, labels, np.ones(n)),
        n_resamples=2000,
        seed=5,
    )
    # scipy draws its resamples as rng.integers(0, n, (n_resamples, n)): same seed, same draws
    mean = scipy_stats.bootstrap(
        (dice,),
        np.mean,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    delta = scipy_stats.bootstrap(
        (dice, other),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        n_resamples=2000,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    assert (ours["dice_ci_low"], ours["dice_ci_high"]) == pytest.approx(mean, abs=1e-12)
    assert (ours["dice_delta_ci_low"], ours["dice_delta_ci_high"]) == pytest.approx(
        delta, abs=1e-12
    )


def test_balanced_accuracy_and_unannotated_cases_resample_like_the_protocol():
    labels = np.array([1, 1, 1, 0, 0, 0])
    correct = np.array([1.0, 0.5, 1.0, 1.0, 0.0, 1.0])
    dice = np.array([0.9, 0.2, np.nan, np.nan, np.nan, np.nan])  # one positive unannotated
    cases = cases_frame(dice, labels, correct)
    everything = np.arange(6)[None]  # the identity "resample": the point estimate
    ba = case_statistic(cases, "balanced_accuracy", everything)
    assert ba == pytest.approx([(2.5 / 3 + 2 / 3) / 2])
    assert case_statistic(cases, "dice", everything) == pytest.approx([0.55])
    only_negatives = np.array([[3, 4, 5, 3, 4, 5]])
    assert np.isnan(case_statistic(cases, "dice", only_negatives)[0])  # no annotated case drawn
    assert case_statistic(cases, "balanced_accuracy", only_negatives) == pytest.approx([2 / 3])
