"""The paper's evaluation protocol (A.7): binarisation, component matching, Monte-Carlo CV.

Two paths compute the same numbers. The direct path (:func:`binarize`, :func:`match`) works
on full masks; it is the reference for tests and figures. The fast path summarises each
heatmap once (:func:`summarize`) into its maximum and, for every tau' of a fixed grid, a
table of the components of ``heatmap > tau'``; :func:`evaluate` then scores any (tau, tau')
from the tables alone, so the 10-fold protocol over a method's summaries takes milliseconds.

Conventions (DESIGN.md "Evaluation protocol"):

- Components are 26-connected (``scipy.ndimage.label`` with a 3x3x3 block of ones), for
  predictions and ground truth alike; a ground-truth box is one component.
- A volume is predicted positive iff its heatmap maximum is ``> tau`` (strict).
- Hysteresis: the components of ``heatmap > tau_low`` are kept iff their maximum is
  ``> tau`` (strict, as skimage's ``apply_hysteresis_threshold``), with ``tau_low < tau``;
  so a volume is predicted positive iff it has a kept component.
- A predicted component is a true positive iff its IoU with some ground-truth component is
  ``> 1/8`` (strict); a ground-truth component is found iff some predicted component has
  IoU ``> 1/8`` with it (one prediction may find several). For boxes, IoU is between the
  predicted component's bounding box and the ground-truth box.
- Per sample with non-empty ground truth: precision = TP / predicted (0 when nothing is
  predicted), recall = found / ground-truth components, F1 = 2PR / (P + R) (0 when
  P = R = 0), Dice of the unions (masks) or MaxIoU = the best IoU of a predicted bounding
  box with a ground-truth box (boxes; 0 when nothing is predicted). Any other 0/0 is 0.
- (Weighted) balanced accuracy is the class-weighted accuracy, weights ``w / n_pos`` and
  ``1 / n_neg`` (w = 5 to choose tau, w = 1 for the reported balanced accuracy); a class
  absent from the samples drops out, as in sklearn's ``balanced_accuracy_score``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from benchmark.config import RunConfig
from benchmark.protocol.metrics import overlap_key, reported, weighted_balanced_accuracy

log = logging.getLogger(__name__)

STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # full 26-connectivity
MATCH_IOU = 0.125  # 1/8, a power of two: ``inter > MATCH_IOU * union`` is exact in floats
WBA_WEIGHT = 5  # weight of sensitivity when choosing tau (A.7)
# A.7: 10 Monte-Carlo folds, tau' tuned on 5 annotated samples; the defaults are the run's
FOLDS, SEED, N_TUNE = RunConfig.folds, RunConfig.seed, RunConfig.n_tune
GRID_LEVELS = RunConfig.grid_levels  # tail fractions of the tau' grid (:func:`tail_fractions`)

Box = tuple[int, int, int, int, int, int]  # half-open (d0, d1, h0, h1, w0, w1)
GroundTruth = np.ndarray | Sequence[Box] | None  # bool mask [D,H,W], boxes, or not annotated


# --- components and matching (direct path) -------------------------------------------------


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a boolean [D,H,W] mask: (labels, count), labels 1..count."""
    return ndimage.label(mask, structure=STRUCTURE)


def _component_stats(
    heatmap: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components of ``mask``: labels, sizes [n] and heatmap maxima [n]."""
    labels, n = components(mask)
    inside = labels[mask]
    sizes = np.bincount(inside, minlength=n + 1)[1:]
    maxima = np.full(n + 1, -np.inf, dtype=heatmap.dtype)
    np.maximum.at(maxima, inside, heatmap[mask])
    return labels, sizes, maxima[1:]


def binarize(heatmap: np.ndarray, tau: float, tau_low: float) -> np.ndarray:
    """A.7 hysteresis: the components of ``heatmap > tau_low`` whose maximum is ``> tau``."""
    if not tau_low < tau:
        raise ValueError(f"binarize needs tau_low < tau, got tau_low={tau_low}, tau={tau}")
    labels, _, maxima = _component_stats(heatmap, heatmap > tau_low)
    return np.concatenate([[False], maxima > tau])[labels]


def _mask_pairs(
    labels: np.ndarray, sizes: np.ndarray, gt_labels: np.ndarray, gt_sizes: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Overlapping (component, GT component) pairs, 0-based: comp, gt, inter, union."""
    inside = gt_labels > 0
    pred, gt = labels[inside].astype(np.int64), gt_labels[inside]
    hit = pred > 0
    keys, inter = np.unique(pred[hit] * (gt_sizes.size + 1) + gt[hit], return_counts=True)
    comp, gt = keys // (gt_sizes.size + 1) - 1, keys % (gt_sizes.size + 1) - 1
    return comp, gt, inter, sizes[comp] + gt_sizes[gt] - inter


def _bounding_boxes(labels: np.ndarray) -> np.ndarray:
    """Half-open bounding boxes [n, 6] (d0, d1, h0, h1, w0, w1) of labels 1..n."""
    slices = ndimage.find_objects(labels)
    boxes = [[b for s in box for b in (s.start, s.stop)] for box in slices]
    return np.array(boxes, dtype=np.int64).reshape(-1, 6)


def _box_pairs(boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Intersecting (box, GT box) pairs, 0-based: comp, gt, inter, union volumes."""
    lo = np.maximum(boxes[:, None, 0::2], gt_boxes[None, :, 0::2])
    hi = np.minimum(boxes[:, None, 1::2], gt_boxes[None, :, 1::2])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    comp, gt = np.nonzero(inter)
    volumes = np.diff(boxes.reshape(-1, 3, 2), axis=-1).prod((1, 2))
    gt_volumes = np.diff(gt_boxes.reshape(-1, 3, 2), axis=-1).prod((1, 2))
    return comp, gt, inter[comp, gt], volumes[comp] + gt_volumes[gt] - inter[comp, gt]


def _ground_truth(gt: GroundTruth) -> tuple[str, np.ndarray, np.ndarray]:
    """(kind, GT labels [D,H,W] or boxes [G,6], component sizes [G]) of a mask or boxes."""
    if gt is None:
        return "none", np.zeros((0, 6), np.int64), np.zeros(0, np.int64)
    if isinstance(gt, np.ndarray) and gt.ndim == 3:
        labels, n = components(gt.astype(bool))
        return "mask", labels, np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = np.asarray(gt, dtype=np.int64).reshape(-1, 6)
    return "boxes", boxes, np.diff(boxes.reshape(-1, 3, 2), axis=-1).prod((1, 2))


@dataclass(frozen=True)
class Match:
    """Component matching of one sample (A.7): counts and the overlap score."""

    tp: int  # predicted components with IoU > 1/8 with some GT component
    n_pred: int  # predicted components
    found: int  # GT components with IoU > 1/8 with some predicted component
    n_gt: int  # GT components (boxes: GT boxes)
    overlap: float  # Dice of the unions (masks) or MaxIoU (boxes)

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.found / self.n_gt if self.n_gt else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match(pred_mask: np.ndarray, gt: np.ndarray | Sequence[Box]) -> Match:
    """A.7 metrics of a binary prediction against a GT mask [D,H,W] or half-open GT boxes."""
    kind, gt_labels, gt_sizes = _ground_truth(gt)
    pred_mask = pred_mask.astype(bool)
    labels, n = components(pred_mask)
    if kind == "mask":
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        comp, gt_i, inter, union = _mask_pairs(labels, sizes, gt_labels, gt_sizes)
        total = np.count_nonzero(pred_mask) + np.count_nonzero(gt_labels)
        overlap = 2 * np.count_nonzero(pred_mask & (gt_labels > 0)) / total if total else 0.0
    else:
        comp, gt_i, inter, union = _box_pairs(_bounding_boxes(labels), gt_labels)
        overlap = float((inter / union).max()) if inter.size else 0.0
    hit = inter > MATCH_IOU * union
    return Match(
        tp=np.unique(comp[hit]).size,
        n_pred=n,
        found=np.unique(gt_i[hit]).size,
        n_gt=gt_sizes.size,
        overlap=float(overlap),
    )


# --- summaries (fast path) ------------------------------------------------------------------


def tail_fractions(levels: int = GRID_LEVELS) -> np.ndarray:
    """``levels`` fractions of voxels, 0.5 down to 1e-5, geometric: the tau' grid's levels
    are the values these fractions of a heatmap exceed (:func:`threshold_grid`).

    A choice of ours: A.7 says only that tau' is found by "grid-search". From the median
    voxel to the top 1e-5 (a few voxels of a 512 x 512 x 300 CT) covers every component
    size that can match a lesion at IoU > 1/8; the default 30 levels are 1.5x apart
    (``run.grid_levels``; measured: docs/decisions.md#grid-levels).
    """
    return np.geomspace(0.5, 1e-5, levels)


def tail_quantiles(heatmap: np.ndarray, levels: int = GRID_LEVELS) -> np.ndarray:
    """[1 + levels]: the heatmap's minimum, then the value exceeded by each of
    :func:`tail_fractions`; a spec's tau' grid is made from these (:func:`threshold_grid`)."""
    fractions = tail_fractions(levels)
    return np.concatenate([[heatmap.min()], np.quantile(heatmap, 1 - fractions)]).astype(np.float64)


def threshold_grid(quantiles: Sequence[np.ndarray]) -> np.ndarray:
    """The fixed tau' grid of one (method, dataset), from its calibration heatmaps'
    :func:`tail_quantiles`.

    Levels: the smallest heatmap minimum, then for each tail fraction the median over
    heatmaps of the value that fraction of voxels exceeds; sorted, duplicates dropped (at
    most 1 + the number of fractions). tau is always chosen above the lowest level, so some
    tau' < tau exists.
    """
    quantiles = np.asarray(quantiles, dtype=np.float64)
    return np.unique(np.append(quantiles[:, 0].min(), np.median(quantiles[:, 1:], axis=0)))


_DTYPES = {
    "levels": np.float64,
    "gt_sizes": np.int32,
    "offsets": np.int32,
    "comp_max": np.float64,
    "comp_size": np.int32,
    "pair_comp": np.int32,
    "pair_gt": np.int32,
    "pair_inter": np.int32,
    "pair_union": np.int32,
}


@dataclass(frozen=True, eq=False)
class Summary:
    """One heatmap against its ground truth: everything the protocol needs (A.7).

    Components of level k (``heatmap > levels[k]``) are rows ``offsets[k]:offsets[k+1]`` of
    ``comp_*``; ``pair_*`` lists the (component row, GT component) pairs that overlap (boxes:
    whose bounding boxes intersect), with intersection and union in voxels. Samples with no
    ground truth keep only ``max``: the protocol scores their segmentation nowhere.
    """

    kind: str  # "mask", "boxes" or "none" (not annotated)
    max: float  # heatmap maximum
    levels: np.ndarray  # float64 [K] the tau' grid
    gt_sizes: np.ndarray  # int32 [G] voxels per GT component (boxes: box volumes)
    offsets: np.ndarray  # int32 [K+1]
    comp_max: np.ndarray  # float64 [N] heatmap maximum of each component
    comp_size: np.ndarray  # int32 [N] voxels of each component
    pair_comp: np.ndarray  # int32 [P] component row
    pair_gt: np.ndarray  # int32 [P] GT component index
    pair_inter: np.ndarray  # int32 [P]
    pair_union: np.ndarray  # int32 [P]

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays, for ``np.savez(path, **summary.to_dict())`` (no pickle needed)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> Summary:
        """Inverse of :meth:`to_dict`; takes ``np.load(path)`` or a JSON-decoded dict."""
        arrays = {k: np.asarray(data[k], dtype=t).reshape(-1) for k, t in _DTYPES.items()}
        return cls(kind=str(np.asarray(data["kind"])), max=float(np.asarray(data["max"])), **arrays)

    def match(self, tau: float, tau_low: float) -> Match:
        """:func:`match` of ``binarize(heatmap, tau, tau_low)``, from the tables alone."""
        k = np.flatnonzero(self.levels == tau_low)
        if not (tau_low < tau and k.size):
            raise ValueError(f"tau_low={tau_low} must be a grid level below tau={tau}")
        return _match_at(self, tau, k[0])


def summarize(heatmap: np.ndarray, gt: GroundTruth, grid: np.ndarray) -> Summary:
    """The heatmap's maximum and, per grid level, its component table (see :class:`Summary`)."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or not grid.size or np.any(np.diff(grid) <= 0):
        raise ValueError("the tau' grid must be a non-empty increasing 1-D array")
    kind, gt_labels, gt_sizes = _ground_truth(gt)
    if kind == "mask" and gt_labels.shape != heatmap.shape:
        raise ValueError(f"mask shape {gt_labels.shape} differs from heatmap {heatmap.shape}")
    comps, pairs, counts = [], [], []
    for level in grid if gt_sizes.size else ():
        labels, sizes, maxima = _component_stats(heatmap, heatmap > level)
        if kind == "mask":
            comp, *rest = _mask_pairs(labels, sizes, gt_labels, gt_sizes)
        else:
            comp, *rest = _box_pairs(_bounding_boxes(labels), gt_labels)
        comps.append((maxima, sizes))
        pairs.append((comp + sum(counts), *rest))
        counts.append(sizes.size)

    def column(parts: list[tuple], i: int, name: str) -> np.ndarray:
        return np.concatenate([p[i] for p in parts] or [np.zeros(0)]).astype(_DTYPES[name])

    return Summary(
        kind=kind,
        max=float(heatmap.max()),
        levels=grid,
        gt_sizes=gt_sizes.astype(_DTYPES["gt_sizes"]),
        offsets=np.concatenate([[0], np.cumsum(counts or [0] * grid.size)]).astype(np.int32),
        comp_max=column(comps, 0, "comp_max"),
        comp_size=column(comps, 1, "comp_size"),
        pair_comp=column(pairs, 0, "pair_comp"),
        pair_gt=column(pairs, 1, "pair_gt"),
        pair_inter=column(pairs, 2, "pair_inter"),
        pair_union=column(pairs, 3, "pair_union"),
    )


def _level_scores(summary: Summary, tau: float) -> np.ndarray:
    """[4, K]: TP, predicted, found and overlap (Dice or MaxIoU) of every grid level at tau."""
    s, k = summary, summary.levels.size
    level = np.repeat(np.arange(k), np.diff(s.offsets))
    kept = s.comp_max > tau
    pair_kept = kept[s.pair_comp]
    pair_level = level[s.pair_comp]
    hit = pair_kept & (s.pair_inter > MATCH_IOU * s.pair_union)
    tp = np.bincount(level[np.unique(s.pair_comp[hit])], minlength=k)
    found_keys = np.unique(pair_level[hit] * max(s.gt_sizes.size, 1) + s.pair_gt[hit])
    found = np.bincount(found_keys // max(s.gt_sizes.size, 1), minlength=k)
    if s.kind == "mask":
        inter = np.bincount(pair_level[pair_kept], s.pair_inter[pair_kept], minlength=k)
        size = np.bincount(level[kept], s.comp_size[kept], minlength=k)
        overlap = 2 * inter / (size + s.gt_sizes.sum())
    else:
        overlap = np.zeros(k)
        np.maximum.at(
            overlap, pair_level[pair_kept], s.pair_inter[pair_kept] / s.pair_union[pair_kept]
        )
    return np.stack([tp, np.bincount(level[kept], minlength=k), found, overlap])


def _match_at(summary: Summary, tau: float, k: int) -> Match:
    """The :class:`Match` of grid level ``k`` at ``tau``."""
    tp, n_pred, found, overlap = _level_scores(summary, tau)[:, k]
    return Match(int(tp), int(n_pred), int(found), summary.gt_sizes.size, float(overlap))


# --- the protocol ---------------------------------------------------------------------------


def tune_tau(maxima: np.ndarray, labels: np.ndarray, levels: np.ndarray) -> float:
    """A.7: the threshold on heatmap maxima that maximises (5 sens + spec) / 6.

    Candidates: the midpoints between consecutive sorted unique maxima, the largest maximum
    (nothing positive) and, for everything positive, the midpoint between the smallest
    maximum and the highest tau' level below it. Only candidates above the lowest level
    count, so that some tau' < tau exists. Ties go to the lowest candidate (most sensitive).
    """
    values = np.unique(maxima)
    below = levels[levels < values[0]]
    candidates = np.concatenate(
        [(below[-1:] + values[0]) / 2, (values[:-1] + values[1:]) / 2, values[-1:]]
    )
    candidates = candidates[candidates > levels[0]]
    if not candidates.size:  # every maximum is at or below the lowest level
        return float(np.nextafter(levels[0], np.inf))
    scores = weighted_balanced_accuracy(labels, maxima[None, :] > candidates[:, None], WBA_WEIGHT)
    return float(candidates[np.argmax(scores)])


@dataclass(frozen=True)
class Split:
    """One Monte-Carlo fold: tuning half, scored half, annotated samples that tune tau'."""

    tune: np.ndarray
    score: np.ndarray
    picks: np.ndarray


def monte_carlo_split(annotated: np.ndarray, fold: int, seed: int, n_tune: int = N_TUNE) -> Split:
    """A.7 fold ``fold``: shuffle, first half (floor(n/2)) tunes, second half is scored.

    tau' is tuned on ``n_tune`` annotated samples drawn from the tuning half (all of them if
    fewer). Seeded by (seed, fold) alone, so every method of a data set sees the same folds.
    """
    rng = np.random.default_rng([seed, fold])
    order = rng.permutation(len(annotated))
    tune, score = order[: len(order) // 2], order[len(order) // 2 :]
    pool = tune[annotated[tune]]
    return Split(tune, score, rng.choice(pool, size=min(n_tune, pool.size), replace=False))


@dataclass(frozen=True)
class EvaluationResult:
    """Per-fold scores of one method on one data set; :meth:`row` gives mean and std,
    :meth:`cases` each sample's scores averaged over the folds that scored it."""

    folds: pd.DataFrame  # one row per fold: tau, tau_low, metrics, sample counts
    truth: str  # the ground truth's kind: "mask" or "boxes"
    scored: pd.DataFrame  # one row per (fold, scored sample): correct, segmentation metrics
    labels: np.ndarray  # bool [n] per sample
    maxima: np.ndarray  # [n] heatmap maximum per sample

    @property
    def metrics(self) -> list[str]:
        return reported(self.truth)

    @property
    def overlap(self) -> str:
        """``"dice"`` (masks) or ``"maxiou"`` (boxes)."""
        return overlap_key(self.truth)

    def cases(self) -> pd.DataFrame:
        """One row per sample (index 0..n-1): ``label``, ``max``, ``n_scored`` (folds that
        scored it), ``correct`` (the fraction of them that classified it right, tau of
        each fold) and the segmentation metrics averaged over them (NaN: never scored, or
        no ground truth). The per-case view of :meth:`row` (nnU-Net's ``metric_per_case``)."""
        grouped = self.scored.groupby("sample")
        means = grouped[["correct", *self.metrics[:4]]].mean()
        frame = pd.DataFrame({"label": self.labels.astype(int), "max": self.maxima})
        frame["n_scored"] = grouped.size().reindex(frame.index, fill_value=0)
        return frame.join(means)

    def mean(self) -> pd.Series:
        return self.folds[self.metrics].mean()

    def std(self) -> pd.Series:
        """Sample standard deviation over folds (ddof = 1)."""
        return self.folds[self.metrics].std()

    def row(self) -> dict[str, float]:
        """``{metric: mean, metric_std: std}``: one leaderboard row (add dataset/method/model)."""
        mean, std = self.mean(), self.std()
        return {k: float(v) for m in self.metrics for k, v in ((m, mean[m]), (f"{m}_std", std[m]))}


def evaluate(
    summaries: Sequence[Summary],
    labels: Sequence[int],
    *,
    folds: int = FOLDS,
    seed: int = SEED,
    n_tune: int = N_TUNE,
) -> EvaluationResult:
    """A.7 protocol over one method's summaries of a validation set, ``folds`` times.

    Per fold (:func:`monte_carlo_split`): tau from the tuning half's maxima
    (:func:`tune_tau`); tau' the grid level < tau with the best mean overlap on the picked
    annotated samples (ties: the highest level; no annotated sample in the tuning half:
    the highest level below tau, with a warning); the scored half gives precision, recall,
    F1 and overlap averaged over its samples with ground truth (NaN if none) and the
    balanced accuracy over all its samples.
    """
    labels = np.asarray(labels, dtype=bool)
    if len(summaries) != labels.size or not labels.size:
        raise ValueError(f"{len(summaries)} summaries for {labels.size} labels")
    levels = summaries[0].levels
    if any(not np.array_equal(s.levels, levels) for s in summaries):
        raise ValueError("summaries were made with different tau' grids")
    annotated = np.array([s.gt_sizes.size > 0 for s in summaries])
    kinds = {s.kind for s in summaries if s.gt_sizes.size}
    if len(kinds) > 1:
        raise ValueError(f"summaries mix ground-truth kinds {sorted(kinds)}")
    truth = "boxes" if kinds == {"boxes"} else "mask"
    maxima = np.array([s.max for s in summaries])
    rows, scored = [], []
    for fold in range(folds):
        split = monte_carlo_split(annotated, fold, seed, n_tune)
        tau = tune_tau(maxima[split.tune], labels[split.tune], levels)
        below = np.flatnonzero(levels < tau)
        if split.picks.size:
            score = np.mean([_level_scores(summaries[i], tau)[3, below] for i in split.picks], 0)
            k = below[np.flatnonzero(score == score.max())[-1]]
        else:
            if annotated.any():
                log.warning(
                    "fold %d: no annotated sample to tune tau'; using the level below tau", fold
                )
            k = below[-1]
        with_truth = split.score[annotated[split.score]]
        matches = [_match_at(summaries[i], tau, k) for i in with_truth]
        cases = pd.DataFrame(
            [(m.precision, m.recall, m.f1, m.overlap) for m in matches],
            columns=reported(truth)[:4],
            index=with_truth,
            dtype=float,
        )
        seg = cases.mean()
        predicted = maxima[split.score] > tau
        ba = weighted_balanced_accuracy(labels[split.score], predicted)
        correct = pd.DataFrame({"correct": predicted == labels[split.score]}, index=split.score)
        scored.append(correct.join(cases).assign(fold=fold).rename_axis("sample").reset_index())
        rows.append(
            {
                "fold": fold,
                "tau": tau,
                "tau_low": levels[k],
                **seg,
                "balanced_accuracy": float(ba),
                "n_scored": split.score.size,
                "n_annotated": len(matches),
            }
        )
    scored = pd.concat(scored, ignore_index=True)[["fold", "sample", *scored[0].columns[1:-1]]]
    return EvaluationResult(pd.DataFrame(rows), truth, scored, labels, maxima)
