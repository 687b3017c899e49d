"""The validation set as the protocol sees it: ground truth, calibration volumes, context.

Shared by ``run`` (our methods' heatmaps) and ``evaluate`` (another tool's heatmaps), so
that both score the same references on the same tau' calibration volumes, and rows of
both can stand on one page only when they rest on the same validation set and protocol
(:func:`evaluation_context`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmark.protocol.evaluation import (
    EvaluationResult,
    GroundTruth,
    evaluate,
    summarize,
    tail_quantiles,
    threshold_grid,
)
from foundation.seal import digest


def ground_truth(dataset: Any, volume: Any, unscored: Collection[str] = ()) -> GroundTruth:
    """A.7's reference of a volume: its mask or boxes; None when it is not annotated, or a
    positive with an empty annotation (``unscored``: scored for classification only)."""
    if not dataset.has_annotation(volume.id) or volume.id in unscored:
        return None
    return volume.boxes if dataset.annotation == "boxes" else volume.mask


def calibration_ids(volume_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """The volumes whose heatmaps' tail quantiles set each spec's tau' grid: ``n`` of them drawn
    with ``seed``, labels unseen (all of them when there are no more than ``n``)."""
    if len(volume_ids) <= n:
        return list(volume_ids)
    chosen = np.random.default_rng([seed, len(volume_ids)]).choice(len(volume_ids), n, False)
    return [volume_ids[i] for i in sorted(chosen)]


def evaluation_context(
    dataset: Any,
    volume_ids: Sequence[str],
    images: Mapping[str, str],
    truths: Mapping[str, str],
    unscored: Collection[str],
    config: Any,
) -> str:
    """A digest of what every row of a page rests on besides its heatmaps: the protocol's
    settings (folds, seed, n_tune, the calibration volumes) and the validation set's
    content (ids, labels, image and truth digests, which positives are unscored)."""
    volumes = [(v, dataset.label(v), images[v], truths[v], v in unscored) for v in volume_ids]
    calibration = calibration_ids(volume_ids, config.calibration_volumes, config.seed)
    protocol = [config.folds, config.seed, config.n_tune, config.grid_levels, calibration]
    return digest(json.dumps([dataset.name, protocol, volumes]), 12)


def score_heatmaps(
    dataset: Any,
    heatmap: Callable[[str], np.ndarray],
    volume_ids: Sequence[str],
    unscored: Collection[str],
    config: Any,
    progress: bool = True,
) -> EvaluationResult:
    """A.7 on heatmaps given by ``heatmap(volume_id)`` [D,H,W] (e.g. another tool's): the
    tau' grid from the calibration volumes' tail quantiles, then each volume's summary, then the
    Monte-Carlo folds; one heatmap in memory at a time."""
    calibration = calibration_ids(volume_ids, config.calibration_volumes, config.seed)
    bar = functools.partial(tqdm, unit="volume", disable=not progress)
    quantiles = [
        tail_quantiles(heatmap(v), config.grid_levels) for v in bar(calibration, desc="tau' grid")
    ]
    grid = threshold_grid(quantiles)
    summaries = [
        summarize(heatmap(v), ground_truth(dataset, dataset[v], unscored), grid)
        for v in bar(volume_ids, desc="summaries")
    ]
    labels = [dataset.label(v) for v in volume_ids]
    return evaluate(summaries, labels, folds=config.folds, seed=config.seed, n_tune=config.n_tune)
