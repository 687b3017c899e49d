"""A run's heatmap work for one classifier: the :class:`Job` (specs x validation volumes,
the store and its policies, the store as the protocol's
:class:`~benchmark.protocol.assess.HeatmapSource`) and stage 1, the heatmaps that are not
in the store yet (:func:`compute_missing_heatmaps`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmark.distributed import Context
from benchmark.protocol.assess import (
    HeatmapSource,
    ground_truth,
    tau_grids,
)
from benchmark.protocol.evaluation import (
    GroundTruth,
    Summary,
    summarize,
    tail_quantiles,
)
from benchmark.run.cache import HeatmapStore
from benchmark.run.prices import counted_prices, split_seconds, volume_input_voxels
from foundation.seal import digest
from methods import method_class
from methods.config import TomographyConfig
from methods.heatmaps import compute_groups

log = logging.getLogger(__name__)


def fitted_options(dataset: Any, specs: Sequence[str], context: Context) -> dict[str, dict]:
    """Each spec's :meth:`~methods.Method.fit_options` on ``dataset`` as JSON values, fitted
    once per method on rank 0 and the same on every rank."""
    fitted = None
    if context.is_main:
        classes = {spec: method_class(spec) for spec in specs}
        fits = {}
        for cls in dict.fromkeys(classes.values()):
            try:
                fits[cls] = json.loads(json.dumps(cls.fit_options(dataset), sort_keys=True))
            except TypeError as error:
                raise TypeError(f"{cls.name}.fit_options: not JSON values ({error})") from None
            if fits[cls]:
                log.info("%s: options fitted to %s: %s", cls.name, dataset.name, fits[cls])
        fitted = {spec: fits[cls] for spec, cls in classes.items()}
    return context.broadcast(fitted)


@dataclass
class Job:
    """One run's heatmap work: specs x validation volumes, the store and its policies.

    ``images``/``truths`` are the volumes' content digests (cache addresses); ``options``
    the specs' fitted options (:func:`fitted_options`), folded into their entries'
    addresses (:meth:`image`); ``channels`` its classifier's per stage
    (:func:`~benchmark.run.plan.layer_channels`, to split shared seconds); ``keep`` the volumes
    whose full heatmaps stay on disk (the figure's; all with ``save_heatmaps``);
    ``unscored`` the positives whose annotation is empty (no localisation score);
    ``failed`` the specs and volumes that failed in this run (not tried again).
    """

    dataset: Any
    specs: list[str]
    volume_ids: list[str]
    store: HeatmapStore
    tomography: TomographyConfig
    batch_size: int
    calibration: list[str]
    keep: set[str]
    unscored: set[str]
    options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    channels: dict[int, int] = dataclasses.field(default_factory=dict)  # per stage
    images: dict[str, str] = dataclasses.field(default_factory=dict)
    truths: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: set[str] = dataclasses.field(default_factory=set)  # specs and volumes: not again

    def __post_init__(self):
        for v in self.volume_ids:
            self.images[v] = self.dataset.fingerprint(v)
            self.truths[v] = self.dataset.truth_fingerprint(v)
        self._fitted = {
            spec: json.dumps(options, sort_keys=True)
            for spec, options in self.options.items()
            if options
        }
        self._revisions = {
            spec: f"revision={revision}"
            for spec in self.specs
            if (revision := method_class(spec).revision)
        }

    def image(self, spec: str, volume_id: str) -> str:
        """The entry's image digest in the store: the volume's, folded with the spec's
        fitted options when it has any (they change its heatmaps: edited training masks
        move the ``centre`` prior, and recompute its entries only) and with its method's
        :attr:`~methods.Method.revision` when non-zero (its code changed its heatmaps:
        entries of an older revision are not reused; other methods' keep their address)."""
        image = self.images[volume_id]
        salt = [s for s in (self._fitted.get(spec), self._revisions.get(spec)) if s]
        return digest(":".join([image, *salt])) if salt else image

    def record(self, spec: str, volume_id: str) -> dict[str, Any] | None:
        return self.store.record(spec, volume_id, self.image(spec, volume_id))

    def heatmap(self, spec: str, volume_id: str) -> np.ndarray | None:
        return self.store.heatmap(spec, volume_id, self.image(spec, volume_id))

    def summary(self, spec: str, volume_id: str, grid: np.ndarray) -> Summary | None:
        image, truth = self.image(spec, volume_id), self.truths[volume_id]
        return self.store.summary(spec, volume_id, image, truth, grid)

    def volume(self, volume_id: str) -> Any:
        """The volume as the data set serves it (a cached one hashed against its digests,
        ``datasets.cache``), or a ValueError if its digests are no longer the job's: its
        entry was rebuilt from other content since, whose results would be filed under
        the old address."""
        volume = self.dataset[volume_id]
        digests = (self.dataset.fingerprint(volume_id), self.dataset.truth_fingerprint(volume_id))
        if digests != (self.images[volume_id], self.truths[volume_id]):
            raise ValueError(
                f"{volume_id} changed during the run (its cache entry was rebuilt from other "
                "content): rerun the command"
            )
        return volume

    def ground_truth(self, volume: Any) -> GroundTruth:
        """A.7's reference of a volume (:func:`benchmark.protocol.assess.ground_truth`)."""
        return ground_truth(self.dataset, volume, self.unscored)

    def source(self) -> HeatmapSource:
        """The store as the protocol reads it: each entry's recorded sketch, and its summary
        (:meth:`settle`; None when it has neither, or a kept volume's heatmap is gone)."""
        return HeatmapSource(self.specs, self._sketch, self._summary)

    def _sketch(self, spec: str, volume_id: str) -> np.ndarray | None:
        record = self.record(spec, volume_id)
        return None if record is None else np.array(record["sketch"])

    def _summary(self, spec: str, volume_id: str, grid: np.ndarray) -> Summary | None:
        summary = self.settle(spec, volume_id, grid)
        lost = volume_id in self.keep and self.heatmap(spec, volume_id) is None
        return None if lost else summary

    def grids(self) -> dict[str, np.ndarray]:
        """Stage 2: each spec's tau' grid from its calibration heatmaps' tail quantiles; specs
        whose calibration is not complete yet are absent (:func:`tau_grids`)."""
        return tau_grids(self.source(), self.calibration)

    def complete(self, spec: str, volume_id: str, grids: dict[str, np.ndarray]) -> bool:
        """Whether the entry is complete, finishing it from its kept heatmap if it can: a
        record, the summary on the spec's grid (or, while the grid is unknown, the full
        heatmap), and the full heatmap of a kept volume."""
        if self.record(spec, volume_id) is None:
            return False
        needs_heatmap = volume_id in self.keep or spec not in grids
        if needs_heatmap and self.heatmap(spec, volume_id) is None:
            return False
        return spec not in grids or self.settle(spec, volume_id, grids[spec]) is not None

    def save(
        self,
        spec: str,
        volume: Any,
        heatmap: np.ndarray,
        seconds: float,
        grids: dict[str, np.ndarray],
    ) -> None:
        """Keep one fresh heatmap's record, its summary when its grid is known, and the
        heatmap itself when the grid is not or the volume is kept; the record goes last."""
        v, image = volume.id, self.image(spec, volume.id)
        record = {
            "spec": spec,
            "volume": v,
            "image": image,
            "max": float(heatmap.max()),
            "sketch": tail_quantiles(heatmap, self.store.levels).tolist(),
            "seconds": seconds,
            "heatmap": None,
        }
        summary = (
            summarize(heatmap, self.ground_truth(volume), grids[spec]) if spec in grids else None
        )
        with self.store.lock(spec, v, image):
            if summary is not None:
                self.store.save_summary(spec, v, image, self.truths[v], grids[spec], summary)
            if v in self.keep or spec not in grids:
                record["heatmap"] = self.store.save_heatmap(spec, v, image, heatmap)
            else:
                self.store.drop_heatmap(spec, v, image)
            self.store.save_record(spec, v, image, record)

    def settle(self, spec: str, volume_id: str, grid: np.ndarray) -> Summary | None:
        """The entry's summary, made from its kept heatmap if missing (the heatmap is then
        dropped unless the volume is kept); None when neither is left."""
        summary = self.summary(spec, volume_id, grid)
        if summary is not None:
            return summary
        heatmap = self.heatmap(spec, volume_id)
        if heatmap is None:
            return None
        summary = summarize(heatmap, self.ground_truth(self.volume(volume_id)), grid)
        image, truth = self.image(spec, volume_id), self.truths[volume_id]
        with self.store.lock(spec, volume_id, image):
            self.store.save_summary(spec, volume_id, image, truth, grid, summary)
            if volume_id not in self.keep:
                record = {**self.record(spec, volume_id), "heatmap": None}
                self.store.save_record(spec, volume_id, image, record)
                self.store.drop_heatmap(spec, volume_id, image)
        return summary


def _valid_heatmap(heatmap: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """The heatmap as float32 numpy, or a ValueError if its shape or values are wrong."""
    array = heatmap.detach().float().cpu().numpy()
    if array.shape != tuple(shape):
        raise ValueError(f"heatmap of shape {array.shape} for a volume of shape {shape}")
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise ValueError(f"heatmap has {bad} non-finite values")
    return array


def _store_heatmaps(
    job: Job,
    volume: Any,
    image: torch.Tensor,
    model: torch.nn.Module,
    grids: dict[str, np.ndarray],
    bar: tqdm,
    specs: list[str],
) -> None:
    """Compute ``specs`` on one volume in one call, group by group (:func:`compute_groups`),
    keeping each heatmap as its group arrives (:meth:`Job.save`); a group's seconds, from
    the previous group's arrival, are split among its specs by their share of counted work
    (:func:`~benchmark.run.prices.split_seconds`)."""
    shape = tuple(image.shape[1:])
    start = time.perf_counter()
    groups = compute_groups(specs, image, model, job.tomography, job.batch_size, job.options)
    for methods, heatmaps in groups:
        seconds = time.perf_counter() - start
        voxels = volume_input_voxels(model if methods[0].classifier == "3d" else None, shape)
        prices = counted_prices(job.tomography.slice_size, voxels)
        shares = split_seconds(seconds, methods, shape, job.channels, prices)
        for spec, heatmap in heatmaps.items():
            array = _valid_heatmap(heatmap, shape)
            job.save(spec, volume, array, shares[spec], grids)
            bar.set_postfix_str(f"{volume.id} {spec}", refresh=False)
            bar.update()
        start = time.perf_counter()


def _find_failures(
    run: Callable[[list[str]], None], specs: list[str], done: Callable[[str], bool]
) -> list[tuple[str, Exception]]:
    """``run(specs)``; after a failure, ``run([spec])`` for each spec not ``done`` yet, to
    find which failed (specs computed together fail together). (spec, error) per failure."""
    try:
        run(specs)
        return []
    except Exception as error:  # a method failed: find which, keep the others
        left = [s for s in specs if not done(s)]
        if len(left) == 1:
            return [(left[0], error)]
    failures = []
    for spec in left:
        try:
            run([spec])
        except Exception as error:
            failures.append((spec, error))
    return failures


def compute_missing_heatmaps(
    job: Job,
    volume_ids: Sequence[str],
    model: torch.nn.Module,
    grids: dict[str, np.ndarray],
    progress: bool = True,
) -> list[str]:
    """Stage 1 (with 3 for the specs whose grid is known): every entry of ``volume_ids``
    not complete in the store; failures, one line each.

    A volume that cannot be loaded is reported and skipped; a spec that fails is reported
    and not run again: everything else is computed and stored. Work that specs share is
    split among them (:func:`_store_heatmaps`).
    """
    todo = {
        v: [s for s in job.specs if s not in job.failed and not job.complete(s, v, grids)]
        for v in volume_ids
        if v not in job.failed
    }
    todo = {v: pending for v, pending in todo.items() if pending}
    total = sum(map(len, todo.values()))
    if not total:
        return []
    log.info("heatmaps: %d to compute in %s", total, job.store.root)
    device = next(model.parameters()).device
    failures: list[str] = []
    with tqdm(total=total, desc="heatmaps", unit="map", disable=not progress) as bar:
        for volume_id, pending in todo.items():
            bar.total -= sum(s in job.failed for s in pending)
            pending = [s for s in pending if s not in job.failed]
            if not pending:
                continue
            try:
                volume = job.volume(volume_id)
                image = torch.from_numpy(np.array(volume.image, dtype=np.float32)).to(device)
            except (ValueError, OSError) as error:
                job.failed.add(volume_id)
                failures.append(f"volume {volume_id}: {error}")
                log.error("%s", failures[-1])
                bar.update(len(pending))
                continue

            run = functools.partial(_store_heatmaps, job, volume, image, model, grids, bar)
            done = functools.partial(job.record, volume_id=volume_id)
            for spec, error in _find_failures(run, pending, done):
                job.failed.add(spec)
                failures.append(f"{spec} on {volume_id}: {type(error).__name__}: {error}")
                log.error("%s (not run again in this run)", failures[-1])
                log.debug("traceback of %s on %s", spec, volume_id, exc_info=error)
                bar.update()
    return failures
