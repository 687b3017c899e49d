"""Is the classifier any good? Its scores on a set of volumes: balanced accuracy (at 0
and at a cross-fitted threshold), ROC AUC and the BCE of the volume logits
(:func:`validation_scores`, what training validates with), and :func:`classifier_report`,
the same with bootstrap intervals, which says whether it beats chance on the evaluation
split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import Train3DConfig, TrainConfig
from benchmark.distributed import Context
from benchmark.protocol.metrics import weighted_balanced_accuracy
from benchmark.protocol.stats import bootstrap_ci
from benchmark.training.strategy import batches_for


def balanced_accuracy(labels: Tensor, predictions: Tensor) -> float:
    """(sensitivity + specificity) / 2 over the classes present, as the protocol reports it
    (:func:`benchmark.protocol.metrics.weighted_balanced_accuracy`, weight 1)."""
    return float(weighted_balanced_accuracy(labels.cpu().numpy(), predictions.cpu().numpy()))


def roc_auc(labels: Tensor, scores: Tensor) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[labels.bool()][:, None], scores[~labels.bool()][None]
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def best_threshold(labels: Tensor, scores: Tensor) -> float:
    """The threshold t maximising the balanced accuracy of ``scores > t`` (middle of the ties)."""
    values = scores.double().sort().values
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    above = scores.double()[None] > candidates[:, None]  # [candidates, volumes]
    accuracy = weighted_balanced_accuracy(labels.cpu().numpy(), above.cpu().numpy())
    best = candidates[torch.from_numpy(accuracy == accuracy.max()).to(candidates.device)]
    return float(best[len(best) // 2])


def cross_fitted_predictions(labels: Tensor, scores: Tensor, folds: int = 5) -> Tensor:
    """``scores > t``, each volume's t tuned on the other folds (stratified k-fold).

    As A.7 tunes its threshold on part of the validation set and scores the rest; volumes
    go to folds in turn within each class. Needs two volumes of each class.
    """
    smallest = int(min((labels == 0).sum(), (labels == 1).sum()))
    if smallest < 2:
        raise ValueError("a cross-fitted threshold needs two volumes of each class")
    folds = min(folds, smallest)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in (0, 1):
        members = (labels == c).nonzero()[:, 0]
        fold[members] = torch.arange(len(members)) % folds
    predictions = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(folds):
        tune, held_out = fold != k, fold == k
        predictions[held_out] = scores[held_out] > best_threshold(labels[tune], scores[tune])
    return predictions


def validation_scores(labels: Tensor, logits: Tensor) -> dict[str, Any]:
    """Validation scores from volume labels [V] and logits [V] (the 2D classifier's volume
    logit is the max of its validation slices' logits, A.6):

    - ``balanced_accuracy``: each volume thresholded at the value tuned on the others
      (5-fold, :func:`cross_fitted_predictions`); NaN with fewer than two volumes a class;
    - ``balanced_accuracy_at_0``: logit > 0. Fragile for the 2D classifier: a slice outside
      the body reads the same in both classes, so its optimal logit is 0 and the max over
      the many slices of a negative volume hovers around 0;
    - ``auc``: threshold-free;
    - ``loss``: the mean BCE of the volume logits, a proper score that moves with the
      margins where the AUC of a few volumes moves in steps;
    - ``logits`` [V] and ``labels`` [V].
    """
    two_each = min((labels == 0).sum(), (labels == 1).sum()) >= 2
    return {
        "balanced_accuracy": (
            balanced_accuracy(labels, cross_fitted_predictions(labels, logits))
            if two_each
            else math.nan
        ),
        "balanced_accuracy_at_0": balanced_accuracy(labels, logits > 0),
        "auc": roc_auc(labels, logits),
        "loss": float(F.binary_cross_entropy_with_logits(logits.float(), labels.float())),
        "logits": logits,
        "labels": labels,
    }


def auc_or_nan(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN unless both classes are present (a bootstrap resample may lack one)."""
    if labels.min() == labels.max():
        return math.nan
    return roc_auc(torch.from_numpy(labels), torch.from_numpy(scores))


def window_above_chance(labels: np.ndarray, validations: list[dict[str, Any]]) -> bool:
    """Whether a window of holdout validations beats chance: the 95 % bootstrap interval of
    its mean AUC, the early-stopping criterion itself, excludes 0.5 (beyond the paper).

    A resample draws one set of held-out volumes for every validation of the window, so
    that validations of the same volumes count as those volumes, not as more of them.
    False unless every validation carries its volume ``logits`` (older checkpoints' do not).
    """
    if any("logits" not in v for v in validations):
        return False
    logits = np.array([v["logits"] for v in validations]).T  # [volumes, validations]
    low, _ = bootstrap_ci(_mean_auc, np.asarray(labels), logits, n_resamples=1000)
    return bool(low > 0.5)


def _mean_auc(labels: np.ndarray, logits: np.ndarray) -> float:
    """The mean over columns of ``logits`` [volumes, validations] of each column's AUC."""
    return float(np.mean([auc_or_nan(labels, column) for column in logits.T]))


def _balanced_accuracy_or_nan(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Balanced accuracy, NaN unless both classes are present."""
    if labels.min() == labels.max():
        return math.nan
    return balanced_accuracy(torch.from_numpy(labels), torch.from_numpy(predictions))


def classifier_report(
    model: nn.Module,
    dataset: Any,
    ids: list[str],
    config: TrainConfig | Train3DConfig,
    chunk: int,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    context: Context | None = None,
) -> dict[str, Any]:
    """Is the classifier of ``config`` better than chance on ``ids``? Scores of
    :func:`validation_scores` with percentile bootstrap intervals over volumes
    (:func:`benchmark.protocol.stats.bootstrap_ci`); the volume logit is the 2D classifier's max
    slice logit (A.6), the 3D one's logit of the whole volume (beyond the paper).

    ``auc`` and ``balanced_accuracy`` (cross-fitted threshold; its interval resamples the
    fixed cross-fitted predictions), each with ``*_ci_low``/``*_ci_high``; ``n_volumes``,
    ``n_positive``, ``n_negative``, ``confidence``; ``at_chance``: the AUC interval
    contains 0.5 (or is undefined: too few volumes to tell), i.e. heatmaps from this
    classifier explain a classifier that has not been shown to work. Plain JSON types.
    """
    logits = batches_for(config).volume_logits(model, dataset, ids, chunk, context)
    labels = torch.tensor([dataset.label(i) for i in ids])
    return _report(labels, logits, n_resamples, confidence, seed)


def _report(
    labels: Tensor, logits: Tensor, n_resamples: int, confidence: float, seed: int
) -> dict[str, Any]:
    """The dictionary of :func:`classifier_report` from volume labels and logits [V]."""
    scores = validation_scores(labels, logits)
    y, s = labels.numpy(), logits.numpy()
    ci = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    auc_low, auc_high = bootstrap_ci(auc_or_nan, y, s, **ci)
    ba_low = ba_high = math.nan
    if not math.isnan(scores["balanced_accuracy"]):
        predictions = cross_fitted_predictions(labels, logits).numpy()
        ba_low, ba_high = bootstrap_ci(_balanced_accuracy_or_nan, y, predictions, **ci)
    at_chance = not auc_low > 0.5 and not auc_high < 0.5  # NaN (undefined) counts as chance
    return {
        "auc": scores["auc"],
        "auc_ci_low": auc_low,
        "auc_ci_high": auc_high,
        "balanced_accuracy": scores["balanced_accuracy"],
        "balanced_accuracy_ci_low": ba_low,
        "balanced_accuracy_ci_high": ba_high,
        "n_volumes": len(labels),
        "n_positive": int(labels.sum()),
        "n_negative": int(len(labels) - labels.sum()),
        "confidence": confidence,
        "at_chance": bool(at_chance),
    }
