"""The reported metrics, defined once (A.7): key, header, the ground truth each needs.

The protocol (:mod:`benchmark.protocol.evaluation`), the statistics
(:mod:`benchmark.protocol.stats`), the tables (:mod:`benchmark.publish.leaderboard`) and the
classifier's report (:mod:`benchmark.training.scoring`) read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One reported number: its column ``key``, its table ``header`` and ``truth``, the
    ground truth it is scored on: ``"mask"`` or ``"boxes"`` (the overlap of the unions or
    the best box IoU), ``"any"`` (component matching, either kind) or ``"labels"`` (the
    image-level decision, every sample)."""

    key: str
    header: str
    truth: str

    @property
    def per_case(self) -> bool:
        """A segmentation metric: the mean over the samples with ground truth."""
        return self.truth != "labels"


METRICS = (
    Metric("precision", "Precision", "any"),
    Metric("recall", "Recall", "any"),
    Metric("f1", "F1-score", "any"),
    Metric("dice", "Dice", "mask"),
    Metric("maxiou", "MaxIoU", "boxes"),
    Metric("balanced_accuracy", "Balanced accuracy", "labels"),
)
KEYS = tuple(m.key for m in METRICS)
HEADERS = {m.key: m.header for m in METRICS}
SEGMENTATION = tuple(m.key for m in METRICS if m.per_case)


def overlap_key(truth: str) -> str:
    """The overlap metric of a ground-truth kind: ``"dice"`` for masks, ``"maxiou"`` for boxes."""
    (key,) = (m.key for m in METRICS if m.truth == truth)
    return key


def reported(truth: str) -> list[str]:
    """The keys reported for ground truth of kind ``truth`` ("mask" or "boxes"), in order."""
    return [m.key for m in METRICS if m.truth in ("any", truth, "labels")]


def weighted_balanced_accuracy(
    labels: np.ndarray, predicted: np.ndarray, weight: float = 1.0
) -> np.ndarray:
    """(weight * sensitivity + specificity) / (weight + 1) over the last axis (A.7: weight 5
    to choose tau, 1 for the reported balanced accuracy); a class absent from ``labels``
    drops out, as in sklearn's ``balanced_accuracy_score``.

    ``predicted`` may carry leading axes (one row per threshold). Computed as one exact
    integer numerator over a shared denominator, so equal scores compare equal.
    """
    labels, predicted = np.asarray(labels, dtype=bool), np.asarray(predicted, dtype=bool)
    n_pos, n_neg = np.count_nonzero(labels), np.count_nonzero(~labels)
    tp = np.count_nonzero(predicted & labels, axis=-1)
    tn = np.count_nonzero(~predicted & ~labels, axis=-1)
    a, b = max(n_pos, 1), max(n_neg, 1)
    return (weight * tp * b + tn * a) / ((weight * (n_pos > 0) + (n_neg > 0)) * a * b)
