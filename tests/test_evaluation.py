"""The A.7 protocol: hand-built matching cases, skimage/sklearn oracles, tables == full masks."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from benchmark.protocol.assess import HeatmapSource, Settings, assess
from benchmark.protocol.evaluation import (
    GRID_LEVELS,
    Match,
    Summary,
    binarize,
    components,
    evaluate,
    match,
    monte_carlo_split,
    summarize,
    tail_quantiles,
    threshold_grid,
    tune_tau,
)
from benchmark.protocol.metrics import weighted_balanced_accuracy


def smooth_field(rng: np.random.Generator, shape=(10, 14, 14), sigma=1.2) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma).astype(np.float32)


def random_case(rng: np.random.Generator, positive: bool = True):
    """A noisy heatmap with bumps, some on a multi-component GT mask; the GT's boxes."""
    heatmap = smooth_field(rng)
    gt = np.zeros(heatmap.shape, bool)
    for _ in range(rng.integers(1, 4) if positive else 0):
        d, h, w = rng.integers(1, 9), rng.integers(1, 12), rng.integers(1, 12)
        gt[d : d + rng.integers(1, 4), h : h + rng.integers(1, 5), w : w + rng.integers(1, 5)] = 1
    heatmap += ndimage.gaussian_filter(gt.astype(np.float32), 1.0)
    boxes = [
        tuple(b for s in sl for b in (s.start, s.stop))
        for sl in ndimage.find_objects(components(gt)[0])
    ]
    return heatmap, gt, boxes


def line(shape, n, start=(0, 0, 0)) -> np.ndarray:
    """A mask holding ``n`` voxels in a row along the last axis."""
    mask = np.zeros(shape, bool)
    mask[start[0], start[1], start[2] : start[2] + n] = True
    return mask


# --- components and matching ----------------------------------------------------------------


def test_components_are_26_connected_for_prediction_and_ground_truth():
    corner = np.zeros((3, 3, 3), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True  # touch at a corner only
    assert components(corner)[1] == 1
    assert ndimage.label(corner)[1] == 2  # scipy's default (6-connectivity) would split them
    m = match(corner, corner)
    assert (m.n_pred, m.n_gt, m.tp, m.found) == (1, 1, 1, 1)


def test_binarize_keeps_a_diagonal_neighbour_that_6_connectivity_drops():
    heatmap = np.zeros((3, 3, 3), np.float32)
    heatmap[0, 0, 0], heatmap[1, 1, 1] = 2.0, 0.5
    kept = binarize(heatmap, tau=1.0, tau_low=0.1)
    assert kept[0, 0, 0] and kept[1, 1, 1] and kept.sum() == 2
    assert apply_hysteresis_threshold(heatmap, 0.1, 1.0).sum() == 1


def test_binarize_equals_skimage_hysteresis_where_connectivities_agree():
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(6):
        heatmap = smooth_field(rng, (12, 16, 16), sigma=1.5)
        for low, high in rng.uniform(-0.1, 0.3, (30, 2)):
            low, high = min(low, high), max(low, high)
            if low == high or components(heatmap > low)[1] != ndimage.label(heatmap > low)[1]:
                continue  # skimage labels with 6-connectivity: compare where it is the same
            expected = apply_hysteresis_threshold(heatmap, low, high)
            np.testing.assert_array_equal(binarize(heatmap, high, low), expected)
            compared += 1
    assert compared >= 40


def test_binarize_rejects_tau_low_not_below_tau():
    with pytest.raises(ValueError, match="tau_low < tau"):
        binarize(np.zeros((2, 2, 2), np.float32), tau=0.5, tau_low=0.5)


def test_iou_of_exactly_one_eighth_is_not_a_match_and_just_above_is():
    shape = (1, 1, 20)
    pred = line(shape, 2, (0, 0, 3))  # 2 voxels inside the GT line
    at = match(pred, line(shape, 16))  # IoU 2/16 = 1/8
    assert at == Match(tp=0, n_pred=1, found=0, n_gt=1, overlap=4 / 18)
    assert (at.precision, at.recall, at.f1) == (0.0, 0.0, 0.0)
    above = match(pred, line(shape, 15))  # IoU 2/15
    assert above == Match(tp=1, n_pred=1, found=1, n_gt=1, overlap=4 / 17)
    assert (above.precision, above.recall, above.f1) == (1.0, 1.0, 1.0)


def test_one_prediction_covering_two_gt_components_finds_both():
    gt = line((1, 1, 12), 4) | line((1, 1, 12), 4, (0, 0, 5))  # two runs, one voxel apart
    pred = line((1, 1, 12), 9)  # covers both and the gap: IoU 4/9 with each
    pred |= line((1, 1, 12), 1, (0, 0, 11))  # a stray false positive
    m = match(pred, gt)
    assert m == Match(tp=1, n_pred=2, found=2, n_gt=2, overlap=2 * 8 / (10 + 8))
    assert (m.precision, m.recall) == (0.5, 1.0)
    assert m.f1 == pytest.approx(2 / 3)


def test_nothing_predicted_scores_zero_everywhere():
    m = match(np.zeros((2, 3, 3), bool), line((2, 3, 3), 2))
    assert (m.precision, m.recall, m.f1, m.overlap) == (0.0, 0.0, 0.0, 0.0)


def test_box_iou_is_computed_from_bounding_boxes():
    gt = [(0, 4, 0, 4, 0, 4)]  # 64 voxels
    pred = np.zeros((10, 10, 10), bool)
    pred[2:6, 0:4, 0:4] = True  # box (2,6,0,4,0,4): inter 32, union 96
    for i in range(6, 10):  # thin diagonal, bounding box (6,10)^3: disjoint from the GT box
        pred[i, i, i] = True
    m = match(pred, gt)
    assert m == Match(tp=1, n_pred=2, found=1, n_gt=1, overlap=32 / 96)
    diagonal = np.zeros((10, 10, 10), bool)
    for i in range(2, 6):  # one component; bounding box (2,6)^3: inter 8, union 120
        diagonal[i, i, i] = True
    assert match(diagonal, gt) == Match(tp=0, n_pred=1, found=0, n_gt=1, overlap=8 / 120)


# --- summaries: the table path equals the full-mask path -------------------------------------


@pytest.mark.parametrize("kind", ["mask", "boxes"])
def test_table_scores_equal_full_mask_scores_for_every_threshold_pair(kind):
    rng = np.random.default_rng(1)
    cases = [random_case(rng) for _ in range(6)]
    grid = threshold_grid([tail_quantiles(h) for h, _, _ in cases])
    compared = 0
    for heatmap, mask, boxes in cases:
        gt = mask if kind == "mask" else boxes
        summary = summarize(heatmap, gt, grid)
        assert summary.max == heatmap.max()
        # taus at component maxima (ties with > tau), between them, and random
        taus = np.concatenate([np.unique(summary.comp_max)[::7], rng.uniform(0, 1.0, 4)])
        for tau in taus:
            for tau_low in grid[grid < tau]:
                direct = match(binarize(heatmap, tau, tau_low), gt)
                assert summary.match(tau, tau_low) == direct, (tau, tau_low)
                compared += 1
    assert compared >= 300


def test_summary_round_trips_through_npz_and_json_and_stays_small(tmp_path):
    rng = np.random.default_rng(2)
    heatmap, mask, _ = random_case(rng)
    grid = threshold_grid([tail_quantiles(heatmap)])
    summary = summarize(heatmap, mask, grid)
    np.savez(tmp_path / "s.npz", **summary.to_dict())
    from_npz = Summary.from_dict(np.load(tmp_path / "s.npz"))
    from_json = Summary.from_dict(
        json.loads(json.dumps({k: v.tolist() for k, v in summary.to_dict().items()}))
    )
    tau = float(np.median(summary.comp_max))
    for loaded in (from_npz, from_json):
        assert loaded.kind == "mask" and loaded.max == summary.max
        for tau_low in grid[grid < tau]:
            assert loaded.match(tau, tau_low) == summary.match(tau, tau_low)
    assert sum(v.nbytes for v in summary.to_dict().values()) < 16_000


def test_samples_without_ground_truth_keep_only_their_maximum():
    heatmap = smooth_field(np.random.default_rng(3))
    grid = np.array([0.0, 0.1])
    for gt in (None, np.zeros(heatmap.shape, bool), []):
        summary = summarize(heatmap, gt, grid)
        assert summary.max == heatmap.max()
        assert summary.comp_max.size == 0 and summary.offsets.tolist() == [0, 0, 0]


def test_threshold_grid_is_the_median_of_tail_quantiles_above_the_lowest_minimum():
    a = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    grid = threshold_grid([tail_quantiles(a), tail_quantiles(a + 10)])
    assert grid[0] == 0.0  # the smallest minimum
    assert grid[1] == pytest.approx(np.quantile(a, 0.5) + 5)  # median of the two medians
    assert np.all(np.diff(grid) > 0) and 20 <= grid.size <= 31


def test_summarize_validates_its_inputs():
    heatmap = np.zeros((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="grid"):
        summarize(heatmap, None, np.array([0.2, 0.1]))
    with pytest.raises(ValueError, match="mask shape"):
        summarize(heatmap, np.ones((2, 3, 4), bool), np.array([0.1]))
    with pytest.raises(ValueError, match="grid level below tau"):
        summarize(heatmap, None, np.array([0.1])).match(tau=0.5, tau_low=0.2)


# --- tau and balanced accuracy against sklearn ------------------------------------------------


def class_weights(labels: np.ndarray, weight: float) -> np.ndarray:
    return np.where(labels == 1, weight / max(labels.sum(), 1), 1 / max((1 - labels).sum(), 1))


def test_weighted_balanced_accuracy_equals_sklearn():
    rng = np.random.default_rng(4)
    for n in (7, 20, 51):
        labels = np.concatenate([[0, 1], rng.integers(0, 2, n - 2)])
        predicted = rng.integers(0, 2, n).astype(bool)
        for weight in (5, 1):
            expected = accuracy_score(
                labels, predicted, sample_weight=class_weights(labels, weight)
            )
            assert weighted_balanced_accuracy(labels, predicted, weight) == pytest.approx(expected)
        assert weighted_balanced_accuracy(labels, predicted, 1) == pytest.approx(
            balanced_accuracy_score(labels, predicted)
        )
    only_positives = np.ones(4, int)  # sensitivity alone, as accuracy_score weighs it
    assert weighted_balanced_accuracy(only_positives, np.array([1, 1, 0, 1], bool)) == 0.75


def test_tau_maximises_weighted_balanced_accuracy_over_all_thresholds():
    rng = np.random.default_rng(5)
    for _ in range(20):
        labels = rng.integers(0, 2, 24)
        maxima = np.round(rng.normal(labels, 1.0), 1)  # rounding makes ties
        tau = tune_tau(maxima, labels, np.array([-10.0]))
        weights = class_weights(labels, 5)
        best = accuracy_score(labels, maxima > tau, sample_weight=weights)
        for threshold in np.concatenate([maxima, maxima - 1e-9, np.linspace(-4, 5, 40)]):
            assert accuracy_score(labels, maxima > threshold, sample_weight=weights) <= best + 1e-12


def test_tau_ties_go_to_the_most_sensitive_threshold_and_stay_above_the_lowest_level():
    maxima, labels = np.array([1.0, 3, 4, 5, 6, 2]), np.array([1, 1, 1, 1, 1, 0])
    # all positive (sens 1, spec 0) ties with tau = 2.5 (sens 4/5, spec 1): wBA 5/6 both;
    # all positive sits between the smallest maximum and the highest level below it
    assert tune_tau(maxima, labels, np.array([0.0])) == 0.5
    assert tune_tau(maxima, labels, np.array([0.0, 0.6, 1.2])) == 0.8
    assert tune_tau(maxima, labels, np.array([1.5])) == 2.5  # the sample at 1 is out of reach


# --- Monte-Carlo cross-validation -------------------------------------------------------------


def make_dataset(n=24, seed=6, kind="mask"):
    rng = np.random.default_rng(seed)
    cases = [random_case(rng, positive=i % 2 == 0) for i in range(n)]
    labels = [i % 2 == 0 for i in range(n)]
    grid = threshold_grid([tail_quantiles(h) for h, _, _ in cases])
    gts = [m if kind == "mask" else b for _, m, b in cases]
    return [summarize(h, g, grid) for (h, _, _), g in zip(cases, gts, strict=True)], labels


def test_folds_are_deterministic_by_seed_and_report_mean_and_std():
    summaries, labels = make_dataset()
    first, again = evaluate(summaries, labels), evaluate(summaries, labels)
    assert first.folds.equals(again.folds)
    assert not first.folds.equals(evaluate(summaries, labels, seed=1).folds)
    assert len(first.folds) == 10 and (first.folds.n_scored == 12).all()
    row = first.row()
    assert list(row) == [
        "precision", "precision_std", "recall", "recall_std", "f1", "f1_std",
        "dice", "dice_std", "balanced_accuracy", "balanced_accuracy_std",
    ]  # fmt: skip
    assert row["f1"] == pytest.approx(first.folds.f1.mean())
    assert row["f1_std"] == pytest.approx(first.folds.f1.std(ddof=1))


def test_tau_and_tau_low_are_tuned_on_the_first_half_only():
    summaries, labels = make_dataset()
    result = evaluate(summaries, labels, folds=3)
    levels, maxima = summaries[0].levels, np.array([s.max for s in summaries])
    annotated = np.array([s.gt_sizes.size > 0 for s in summaries])
    for fold, row in result.folds.iterrows():
        split = monte_carlo_split(annotated, fold, seed=0)
        assert row.tau == tune_tau(maxima[split.tune], np.array(labels)[split.tune], levels)
        below = levels[levels < row.tau]
        dice = np.array(
            [np.mean([summaries[i].match(row.tau, t).overlap for i in split.picks]) for t in below]
        )
        assert row.tau_low == below[np.flatnonzero(dice == np.max(dice))[-1]]
    # make every scored negative of fold 0 look strongly positive: tau and tau' stay
    split = monte_carlo_split(annotated, 0, seed=0)
    changed = list(summaries)
    for i in split.score:
        if not labels[i]:
            changed[i] = dataclasses.replace(summaries[i], max=summaries[i].max + 100)
    moved = evaluate(changed, labels, folds=1).folds.iloc[0]
    assert (moved.tau, moved.tau_low) == (result.folds.tau[0], result.folds.tau_low[0])
    assert moved.balanced_accuracy < result.folds.balanced_accuracy[0]


def test_perfect_heatmaps_score_one():
    rng = np.random.default_rng(7)
    summaries, labels = [], []
    for i in range(20):
        _, mask, _ = random_case(rng, positive=i % 2 == 0)
        summaries.append((mask.astype(np.float32), mask))
        labels.append(i % 2 == 0)
    grid = threshold_grid([tail_quantiles(h) for h, _ in summaries])
    result = evaluate([summarize(h, m, grid) for h, m in summaries], labels)
    assert result.mean().tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]


def test_boxes_report_maxiou():
    summaries, labels = make_dataset(kind="boxes")
    result = evaluate(summaries, labels, folds=2)
    assert result.metrics == ["precision", "recall", "f1", "maxiou", "balanced_accuracy"]
    assert ((result.folds.maxiou >= 0) & (result.folds.maxiou <= 1)).all()


def test_no_annotated_sample_in_the_tuning_half_falls_back_to_the_level_below_tau(caplog):
    summaries, labels = make_dataset(n=12)
    keep = next(i for i, s in enumerate(summaries) if s.gt_sizes.size)
    grid = summaries[0].levels
    summaries = [
        s if i == keep or not s.gt_sizes.size else summarize(np.zeros((1, 1, 1)), None, grid)
        for i, s in enumerate(summaries)
    ]  # one annotated sample left
    with caplog.at_level(logging.WARNING, logger="benchmark.protocol.evaluation"):
        result = evaluate(summaries, labels)
    annotated = np.array([s.gt_sizes.size > 0 for s in summaries])
    for fold, row in result.folds.iterrows():
        if not monte_carlo_split(annotated, fold, seed=0).picks.size:
            assert row.tau_low == grid[grid < row.tau][-1]
    assert "no annotated sample to tune tau'" in caplog.text
    unannotated = evaluate([summarize(np.zeros((1, 1, 1)), None, grid)] * 4, [0, 1, 0, 1])
    assert unannotated.folds.dice.isna().all() and unannotated.folds.balanced_accuracy.notna().all()


def test_evaluate_rejects_inconsistent_inputs():
    summaries, labels = make_dataset(n=4)
    with pytest.raises(ValueError, match="labels"):
        evaluate(summaries, labels[:3])
    other = summarize(np.zeros((1, 1, 1)), None, np.array([0.5]))
    with pytest.raises(ValueError, match="grids"):
        evaluate([*summaries[:3], other], labels)


def test_assess_on_arrays_is_the_protocol_by_hand():
    """A test's arrays enter the one path like a run's cache: the grid from the calibration
    volumes' tail quantiles, then each volume's summary, then the folds."""
    rng = np.random.default_rng(8)
    cases = [random_case(rng, positive=i % 2 == 0) for i in range(10)]
    grid = threshold_grid([tail_quantiles(h) for h, _, _ in cases])
    ids = [f"v{i}" for i in range(10)]
    labels = [i % 2 == 0 for i in range(10)]
    arrays = dict(zip(ids, cases, strict=True))
    source = HeatmapSource.of_heatmaps(
        ["m"], lambda _, v: arrays[v][0], lambda v: arrays[v][1], GRID_LEVELS
    )
    settings = Settings(folds=3, seed=0, n_tune=5, grid_levels=GRID_LEVELS, calibration_volumes=10)
    assessed = assess(source, ids, labels, settings.calibration(ids), settings, progress=False)
    direct = evaluate([summarize(h, m, grid) for h, m, _ in cases], labels, folds=3)
    assert assessed["m"].folds.equals(direct.folds)
