"""One path from heatmaps to A.7's numbers: calibration volumes, tau' grid, summaries, folds.

Every heatmap source enters through :class:`HeatmapSource` (a run's cache, another tool's
files, a test's arrays) and goes through the same steps: :func:`calibration_ids` picks the
volumes whose heatmaps set each spec's tau' grid (:func:`tau_grids`), every volume is
summarised on that grid (:func:`collect_summaries`), and the Monte-Carlo folds score the
summaries (:func:`fold_results`); :func:`assess` is the three in a row (with a run's
repair of entries lost from its cache). ``run`` and
``evaluate`` differ only in their source, and rows of both can stand on one page only when
they rest on the same validation set and protocol (:func:`evaluation_context`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmark.protocol.evaluation import (
    EvaluationResult,
    GroundTruth,
    Summary,
    evaluate,
    summarize,
    tail_quantiles,
    threshold_grid,
)
from foundation.seal import digest


@dataclass(frozen=True)
class Settings:
    """The protocol's settings (A.7), plain values read once from the run's config."""

    folds: int
    seed: int
    n_tune: int
    grid_levels: int  # tail fractions of each spec's tau' grid
    calibration_volumes: int

    @classmethod
    def of(cls, config: Any) -> Settings:
        """The protocol's fields of a :class:`~benchmark.config.RunConfig`."""
        return cls(
            config.folds, config.seed, config.n_tune, config.grid_levels, config.calibration_volumes
        )

    def calibration(self, volume_ids: Sequence[str]) -> list[str]:
        """:func:`calibration_ids` of ``volume_ids`` under these settings."""
        return calibration_ids(volume_ids, self.calibration_volumes, self.seed)


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
    calibration: Sequence[str],
    settings: Settings,
) -> str:
    """A digest of what every row of a page rests on besides its heatmaps: the protocol's
    settings (folds, seed, n_tune, the calibration volumes) and the validation set's
    content (ids, labels, image and truth digests, which positives are unscored)."""
    volumes = [(v, dataset.label(v), images[v], truths[v], v in unscored) for v in volume_ids]
    s = settings
    protocol = [s.folds, s.seed, s.n_tune, s.grid_levels, list(calibration)]
    return digest(json.dumps([dataset.name, protocol, volumes]), 12)


@dataclass(frozen=True)
class HeatmapSource:
    """What the protocol needs of each spec's heatmaps, per volume: ``sketch(spec, v)``, the
    heatmap's tail quantiles (:func:`tail_quantiles`, for the tau' grid), and
    ``summary(spec, v, grid)``, its :class:`Summary` on a grid; either is None when the
    source does not have it (yet). ``reads``: whether each sketch reads a full heatmap (a
    progress bar is worth showing), or a kept record."""

    specs: Sequence[str]
    sketch: Callable[[str, str], np.ndarray | None]
    summary: Callable[[str, str, np.ndarray], Summary | None]
    reads: bool = False

    @classmethod
    def of_heatmaps(
        cls,
        specs: Sequence[str],
        heatmap: Callable[[str, str], np.ndarray],
        truth: Callable[[str], GroundTruth],
        levels: int,
    ) -> HeatmapSource:
        """A source of full heatmaps ``heatmap(spec, v)`` [D,H,W] (files, arrays), each read
        when asked for, with the volumes' references ``truth(v)``."""
        return cls(
            list(specs),
            lambda spec, v: tail_quantiles(heatmap(spec, v), levels),
            lambda spec, v, grid: summarize(heatmap(spec, v), truth(v), grid),
            reads=True,
        )


def _bar(items: Sequence, desc: str, unit: str, progress: bool):
    return tqdm(items, desc=desc, unit=unit, disable=not progress)


def tau_grids(
    source: HeatmapSource, calibration: Sequence[str], progress: bool = False
) -> dict[str, np.ndarray]:
    """Each spec's tau' grid from its calibration heatmaps' tail quantiles; specs whose
    calibration sketches are not all there yet are absent."""
    grids = {}
    for spec in source.specs:
        sketches = []
        for v in _bar(calibration, "tau' grid", "volume", progress and source.reads):
            sketches.append(source.sketch(spec, v))
            if sketches[-1] is None:
                break
        else:
            grids[spec] = threshold_grid(sketches)
    return grids


def collect_summaries(
    source: HeatmapSource,
    grids: Mapping[str, np.ndarray],
    volume_ids: Sequence[str],
    progress: bool = True,
) -> tuple[dict[str, list[Summary | None]], list[tuple[str, str]]]:
    """Every (spec, volume)'s summary on the spec's grid, per spec; and the entries that the
    source does not have."""
    summaries: dict[str, list[Summary | None]] = {spec: [] for spec in source.specs}
    missing = []
    pairs = [(s, v) for s in source.specs for v in volume_ids]
    for spec, volume_id in _bar(pairs, "summaries", "map", progress):
        summary = source.summary(spec, volume_id, grids[spec])
        if summary is None:
            missing.append((spec, volume_id))
        summaries[spec].append(summary)
    return summaries, missing


def fold_results(
    summaries: Mapping[str, Sequence[Summary]], labels: Sequence[int], settings: Settings
) -> dict[str, EvaluationResult]:
    """A.7's Monte-Carlo protocol for each spec (the same folds for all)."""
    s = settings
    return {
        spec: evaluate(list(part), labels, folds=s.folds, seed=s.seed, n_tune=s.n_tune)
        for spec, part in summaries.items()
    }


class MissingHeatmaps(ValueError):
    """Entries a source does not have: ``missing``, (spec, volume) pairs."""

    def __init__(self, missing: Sequence[tuple[str, str]]):
        self.missing = list(missing)
        spec, volume_id = self.missing[0]
        super().__init__(f"{len(missing)} heatmap(s) missing, the first: {spec} on {volume_id}")


def assess(
    source: HeatmapSource,
    volume_ids: Sequence[str],
    labels: Sequence[int],
    calibration: Sequence[str],
    settings: Settings,
    progress: bool = True,
    repair: Callable[[list[str], dict[str, np.ndarray]], None] | None = None,
) -> dict[str, EvaluationResult]:
    """A.7 on a source's heatmaps: the grids (:func:`tau_grids`), the summaries
    (:func:`collect_summaries`), the folds (:func:`fold_results`), each once.

    ``repair(volume_ids, grids)``, when given, is asked to complete the source's entries of
    those volumes (a run's cache: heatmaps lost since they were computed), once for the
    calibration volumes when a grid is incomplete and once for the volumes whose summaries
    are missing; the source is then read again. :class:`MissingHeatmaps` lists what is still
    missing: the calibration entries of specs without a grid, or else the summaries.
    """
    grids = tau_grids(source, calibration, progress)
    if repair is not None and len(grids) < len(source.specs):
        repair(list(calibration), grids)
        grids = tau_grids(source, calibration, progress)
    absent = [
        (s, v)
        for s in source.specs
        if s not in grids
        for v in calibration
        if source.sketch(s, v) is None
    ]
    if absent:
        raise MissingHeatmaps(absent)
    summaries, missing = collect_summaries(source, grids, volume_ids, progress)
    if missing and repair is not None:
        repair(list(dict.fromkeys(v for _, v in missing)), grids)
        summaries, missing = collect_summaries(source, grids, volume_ids, progress)
    if missing:
        raise MissingHeatmaps(missing)
    return fold_results(summaries, labels, settings)
