"""The benchmark run: classifier -> heatmaps -> summaries -> A.7 protocol -> leaderboards.

``python -m benchmark run`` is :func:`prepare_classifier` (every seed's classifiers) then
:func:`run_benchmark`, which first reports on every classifier (:func:`check_classifier`;
one at chance stops the run here, :class:`ChanceError`, unless ``allow_chance``) and then
runs stages that each resume where a killed run stopped:

1. heatmaps: every method spec on every validation volume, one
   :func:`~methods.heatmaps.compute_heatmaps` call per volume (so that specs share slices
   and classifier passes), the *calibration* volumes first;
2-4. the protocol, through the one path that ``evaluate`` takes too
   (:mod:`benchmark.protocol.assess`; the store enters it as a ``HeatmapSource``,
   :meth:`Job.source`): grids, one tau' grid per spec from its calibration
   heatmaps' tail quantiles (:func:`~benchmark.protocol.assess.tau_grids`; the calibration
   volumes, a seeded label-free subset, are drawn once per run), so that every other
   heatmap is summarised the moment it is computed and only its summary is kept
   (:mod:`benchmark.run.cache`); summaries on those grids
   (:func:`~benchmark.protocol.assess.collect_summaries`); A.7's Monte-Carlo folds per spec
   (:func:`~benchmark.protocol.assess.fold_results`);
5. outputs: results, per-fold and timing CSVs, leaderboards, the Figure 6 layout, and
   NIfTI heatmaps on request.

Everything is cached by content (:mod:`benchmark.run.cache`): a run that was killed and
resumed ends with the numbers of an uninterrupted one. Under torchrun the ranks split the
volumes (:class:`~benchmark.distributed.Context`); a shard (``shard=(i, n)``) computes
every n-th validation volume into the same cache and stops; a run without a shard then
finds them and evaluates.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark.config import TRAIN_SECTIONS, RunConfig, TrainConfig
from benchmark.distributed import Context, resolve_device
from benchmark.protocol.assess import (
    HeatmapSource,
    Settings,
    collect_summaries,
    evaluation_context,
    fold_results,
    ground_truth,
    tau_grids,
)
from benchmark.protocol.evaluation import (
    EvaluationResult,
    GroundTruth,
    Summary,
    binarize,
    summarize,
    tail_quantiles,
)
from benchmark.protocol.metrics import KEYS
from benchmark.publish import figures
from benchmark.publish.leaderboard import (
    KEY,
    Intervals,
    page_lock,
    with_intervals,
    write_leaderboards,
)
from benchmark.publish.report import (
    RUN_TABLES,
    cases_table,
    environment_note,
    keep_earlier,
    provenance,
    provenance_columns,
    read_tables,
    results_tables,
    summary_document,
    tables_lock,
    write_csv,
    write_reports,
)
from benchmark.run.cache import HeatmapStore, heatmap_key
from benchmark.run.plan import counted_prices, layer_channels, split_seconds, volume_input_voxels
from benchmark.specs import shard_ids
from benchmark.training.checkpoint import (
    CHECKPOINT,
    checkpoint_id,
    is_finished,
    load_classifier,
    read_checkpoint,
)
from benchmark.training.scoring import classifier_report
from benchmark.training.strategy import config_from_record
from benchmark.training.train import train
from datasets.base import safe_stem
from foundation.io import atomic_write
from foundation.registry import natural_key
from foundation.seal import digest, read_sealed, save_sealed
from methods import method_class
from methods.config import TomographyConfig
from methods.heatmaps import compute_groups
from methods.registry import method_name

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """Heatmaps failed or are missing; every finished one is cached for the next run."""


# --- classifier -----------------------------------------------------------------------------


def prepare_classifier(
    dataset: Any,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    context: Context | None = None,
    finished_only: bool = False,
    progress: bool = True,
) -> Path:
    """The checkpoint whose classifier the methods explain (paper A.6).

    ``checkpoint`` is used as given (the command checks it first). Otherwise
    ``<out_dir>/checkpoint.pt`` is trained, continued after a kill, or, when finished,
    checked against ``config`` and the training data's content and reused
    (``train(..., resume=True)``). ``finished_only`` (shards, merges) never
    trains, so that shards started side by side cannot train the same folder.
    """
    if checkpoint is not None:
        return Path(checkpoint)
    path = Path(out_dir) / CHECKPOINT
    if finished_only and not is_finished(path):
        raise ValueError(
            f"{path} is not a finished classifier: train it first, with the same command "
            "without --shard/--merge, or pass --checkpoint"
        )
    context = context or Context(device=resolve_device("auto"))
    return train(dataset, config, out_dir, resume=True, context=context, progress=progress)


# --- the job: what a run computes, and where it keeps it -----------------------------------


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


# --- stage 1: heatmaps ----------------------------------------------------------------------


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
    (:func:`~benchmark.run.plan.split_seconds`)."""
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


# --- stage 5: outputs -----------------------------------------------------------------------


def figure_rows(
    jobs: Sequence[Job],
    results: pd.DataFrame,
    folds: pd.DataFrame,
    config: RunConfig,
    patterns: Sequence[str],
) -> tuple[list[str], list[figures.FigureRow]]:
    """(specs, rows) of the Figure 6 layout: a few annotated validation positives, each
    method family matching ``patterns`` at its best layer, binarised with fold 0's
    (tau, tau') (A.7). ``jobs``: one classifier seed's, one per classifier (the same
    volumes), each with its specs' heatmaps. Empty when there is nothing to show."""
    job_of = {spec: job for job in jobs for spec in job.specs}
    dataset, first = jobs[0].dataset, jobs[0]
    positives = figures.figure_ids(dataset, first.volume_ids, first.unscored, config.figure_volumes)
    specs = figures.figure_specs(results, patterns)
    if not positives or not specs:
        return [], []
    first_fold = folds[folds.fold == 0].set_index("method")
    rows = []
    for volume_id in positives:
        volume = dataset[volume_id]
        columns = []
        for spec in specs:
            heatmap = job_of[spec].heatmap(spec, volume_id)
            tau, tau_low = first_fold.loc[spec, ["tau", "tau_low"]]
            columns.append(
                figures.MethodMaps(
                    method_name(spec).display, heatmap, binarize(heatmap, tau, tau_low)
                )
            )
        truth = figures.truth_mask(first.ground_truth(volume), volume.image.shape[1:])
        rows.append(figures.figure_row(volume_id, volume.image[0], truth, columns))
    return specs, rows


@dataclass(frozen=True)
class RunOutputs:
    """What a run produced: the run folder's tables (one row per spec, per fold, per
    spec's heatmap time; this run's specs and those of earlier runs it keeps, written as
    CSVs to the run folder) and the files of the other outputs."""

    results: pd.DataFrame
    folds: pd.DataFrame
    timings: pd.DataFrame
    leaderboards: list[Path]  # <dataset>.md, .csv, .html and .png
    nifti: list[Path]  # with save_heatmaps
    page: Path  # the HTML leaderboard
    computed: tuple[str, ...]  # the specs of this run; the tables also keep earlier ones


def timings_table(job: Job) -> pd.DataFrame:
    """Seconds spent on each spec's heatmaps (when they were computed), with its family.

    Work that :func:`~methods.heatmaps.compute_groups` shares between specs (one pass for
    the gradient CAMs of a geometry) is split among them by their share of counted work,
    each spec's as run alone (:func:`~benchmark.run.plan.split_seconds`): the specs' seconds
    sum to the measured time.
    """
    rows = [
        {
            "method": spec,
            "family": method_name(spec).family,
            "seconds": sum(job.record(spec, v)["seconds"] for v in job.volume_ids),
            "volumes": len(job.volume_ids),
        }
        for spec in job.specs
    ]
    return pd.DataFrame(rows)


def export_nifti(job: Job, out_dir: Path) -> list[Path]:
    """``<out_dir>/<spec>/<volume>.nii.gz``: each heatmap with its volume's affine (mm, RAS+)."""
    import nibabel as nib

    written = []
    for volume_id in tqdm(job.volume_ids, desc="NIfTI", unit="volume", leave=False):
        affine = np.asarray(job.dataset[volume_id].affine, dtype=np.float64)
        for spec in job.specs:
            image = nib.Nifti1Image(job.heatmap(spec, volume_id), affine)
            image.header.set_xyzt_units("mm")
            path = out_dir / spec / f"{safe_stem(volume_id)}.nii.gz"
            with atomic_write(path) as file:
                file.write(gzip.compress(image.to_bytes(), compresslevel=1))
            written.append(path)
    return written


# --- the run --------------------------------------------------------------------------------


def classifier_sanity(job: Job, model: torch.nn.Module, train_config: dict) -> dict:
    """The classifier's validation AUC and balanced accuracy with 95% bootstrap intervals
    over the evaluation split's volumes (cached with the heatmaps, keyed by their content,
    sealed: a damaged one is logged and recomputed)."""
    volumes = [(v, job.dataset.label(v), job.images[v]) for v in job.volume_ids]
    path = job.store.root / f"classifier-{digest(json.dumps(volumes))}.json"
    try:
        return read_sealed(path)
    except FileNotFoundError:
        pass
    except ValueError as error:
        log.warning("cache: %s; recomputing it", error)
    config = config_from_record(train_config)
    report = classifier_report(model, job.dataset, job.volume_ids, config, job.batch_size)
    report = {k: v for k, v in report.items() if isinstance(v, (int, float, bool))}
    save_sealed(path, report)
    return report


def sanity_lines(report: dict, model_name: str, classifier: str = "2d") -> tuple[str, str | None]:
    """(note, warning): the classifier's line for every page; a warning when at chance
    (``classifier``: which one, "2d" or "3d", whose settings to change)."""
    note = (
        f"Classifier `{model_name}` on the {report['n_volumes']} evaluation volumes: AUC "
        f"{report['auc']:.2f} [{report['auc_ci_low']:.2f}, {report['auc_ci_high']:.2f}], "
        f"balanced accuracy {report['balanced_accuracy']:.2f} "
        f"[{report['balanced_accuracy_ci_low']:.2f}, {report['balanced_accuracy_ci_high']:.2f}] "
        "(95% percentile bootstrap over volumes)."
    )
    if not report["at_chance"]:
        return note, None
    warning = (
        f"The classifier `{model_name}` is at chance on the evaluation volumes (AUC "
        f"{report['auc']:.2f}, "
        f"95% interval [{report['auc_ci_low']:.2f}, {report['auc_ci_high']:.2f}] includes "
        "0.5): every heatmap below explains a classifier that has not learned the task, and "
        f"the ranking means nothing. Train longer (--set {TRAIN_SECTIONS[classifier]}"
        ".iterations=N) or check the labels."
    )
    return note, warning


@dataclass(frozen=True)
class Trained:
    """One classifier of a run, checked before any heatmap: its job (the store keyed by its
    checkpoint), what the checkpoint says of its training, and its report (the same on
    every rank)."""

    checkpoint: Path
    job: Job
    model: torch.nn.Module  # on this rank's device, in eval mode
    classifier: str  # which one (Method.classifier): "2d" slices, "3d" volumes
    model_name: str
    key: str  # the checkpoint's identity (checkpoint_id)
    train_config: dict[str, Any]
    step: int  # the steps it trained
    stopped_early: bool  # before its cap, train_config["iterations"]
    report: dict[str, Any]  # classifier_sanity

    @property
    def seed(self) -> int:
        return int(self.train_config.get("seed", 0))


@dataclass(frozen=True)
class Seeded:
    """Stages 1-4 for one classifier (one training seed): its job, report and evaluations."""

    seed: int  # the classifier's training seed
    job: Job
    classifier: str  # which one (Method.classifier): "2d" slices, "3d" volumes
    model_name: str
    checkpoint: str  # the checkpoint's identity (checkpoint_id)
    train_config: dict[str, Any]
    report: dict[str, Any]  # classifier_sanity
    evaluations: dict[str, EvaluationResult]


class ChanceError(RuntimeError):
    """A classifier of the run is at chance: no heatmap was computed (``allow_chance``)."""


def check_classifier(
    dataset: Any,
    checkpoint: str | Path,
    config: RunConfig,
    tomography: TomographyConfig,
    *,
    specs: Sequence[str],
    context: Context,
    settings: Settings,
    calibration: Sequence[str],
    unscored: Sequence[str] = (),
    options: Mapping[str, dict[str, Any]] | None = None,
) -> Trained:
    """The classifier of ``checkpoint`` ready for stages 1-4: its job, and its report
    (:func:`classifier_sanity`, on rank 0, broadcast), whose note is logged (and the
    at-chance warning, when ``allow_chance`` lets the run go on). ``options``: the specs'
    fitted options (:func:`fitted_options`); ``settings`` the run's protocol fields and
    ``calibration`` its calibration volumes (:meth:`Settings.calibration`), read once."""
    volume_ids = dataset.ids("val")
    trained = read_checkpoint(checkpoint)  # the identity and the model from one read
    key = heatmap_key(
        dataset.name,
        checkpoint_id(trained),
        tomography,
        config.batch_size,
        context.device.type,
    )
    keep = set(figures.figure_ids(dataset, volume_ids, set(unscored), config.figure_volumes))
    model = load_classifier(checkpoint, context.device, trained)
    classifier = trained.get("classifier", "2d")  # what the checkpoint holds
    wrong = [s for s in specs if method_class(s).classifier != classifier]
    if wrong:
        raise ValueError(
            f"{checkpoint} holds a {classifier} classifier; {wrong[0]} explains a "
            f"{method_class(wrong[0]).classifier} one"
        )
    # a slice, or a volume: the volume classifier resizes it to its input size
    probe = tomography.slice_size if classifier == "2d" else dataset.geometry(volume_ids[0])[0]
    job = Job(
        dataset,
        list(specs),
        volume_ids,
        HeatmapStore.open(key, levels=settings.grid_levels),
        tomography,
        config.batch_size,
        list(calibration),
        keep=set(volume_ids) if config.save_heatmaps or config.keep_heatmaps else keep,
        unscored=set(unscored),
        options=dict(options or {}),
        channels=layer_channels(model, len(dataset.channels), probe),
    )
    report = None
    if context.is_main:
        report = classifier_sanity(job, model, trained["config"])
        note, warning = sanity_lines(report, trained["model_name"], classifier)
        log.info("%s", note)
        if warning and config.allow_chance:
            log.warning("%s", warning)
    return Trained(
        checkpoint=Path(checkpoint),
        job=job,
        model=model,
        classifier=classifier,
        model_name=trained["model_name"],
        key=key["checkpoint"],
        train_config=trained["config"],
        step=int(trained["step"]),
        stopped_early=trained.get("stopped_early") is not None,
        report=context.broadcast(report),  # one decision on every rank
    )


def chance_error(at_chance: Sequence[Trained]) -> ChanceError:
    """One line: the classifier(s) at chance (2d/3d, model, seed), the first one's AUC with
    its interval, the steps it trained and its checkpoint, and what to try."""
    first = at_chance[0]
    section = TRAIN_SECTIONS[first.classifier]
    report, cap = first.report, first.train_config.get("iterations")
    trained = "stopped early after" if first.stopped_early else "trained"
    steps = f"{trained} {first.step} of {section}.iterations={cap} steps"
    names = [f"the {t.classifier} classifier {t.model_name} (seed {t.seed})" for t in at_chance]
    which = f"{names[0]} is at chance on the {report['n_volumes']} evaluation volumes"
    if len(names) > 1:
        listed = f"{', '.join(names[:-1])} and {names[-1]}"
        which = f"{len(names)} classifiers are at chance on the {report['n_volumes']} "
        which += f"evaluation volumes, {listed}; the first"
    return ChanceError(
        f"{which}: AUC {report['auc']:.2f}, 95% interval [{report['auc_ci_low']:.2f}, "
        f"{report['auc_ci_high']:.2f}] includes 0.5 ({steps}; {first.checkpoint}, kept); no "
        f"heatmap was computed. Train longer (--set {section}.iterations=N), start from "
        f"pretrained weights in a local file (--set {section}.weights=FILE), or "
        "--set allow_chance=true to compute and rank the heatmaps anyway"
    )


def evaluate_classifier(
    trained: Trained,
    settings: Settings,
    *,
    context: Context,
    shard: tuple[int, int] | None = None,
    compute: bool = True,
    progress: bool = True,
) -> Seeded | None:
    """Stages 1-4 for a :func:`check_classifier`'s classifier: heatmaps (this shard's
    volumes, split across the ranks), grids, summaries, the A.7 protocol. Rank 0 of a run
    without a shard returns the evaluations; other ranks and shards return None."""
    job, model = trained.job, trained.model
    volume_ids, specs, calibration = job.volume_ids, job.specs, job.calibration
    failures: list[str] = []
    if compute:
        mine = context.share(shard_ids(volume_ids, shard))
        first = [v for v in mine if v in calibration]
        failures += compute_missing_heatmaps(job, first, model, job.grids(), progress)
        context.barrier()
        # the calibration entries are summarised (their heatmaps dropped), then the rest
        failures += compute_missing_heatmaps(job, mine, model, job.grids(), progress)
    failures = [
        f"rank {rank}: {line}" if context.distributed else line
        for rank, lines in enumerate(context.gather(failures))
        for line in lines
    ]
    if failures:
        raise RunError(
            f"{len(failures)} failure(s), the first: {failures[0]}; every other heatmap "
            "is cached: fix the cause and rerun the same command"
        )
    if shard is not None or not context.is_main:
        return None
    grids = job.grids()
    if compute and len(grids) < len(specs):  # calibration entries lost since: again
        failures = compute_missing_heatmaps(job, calibration, model, grids, progress)
        grids = job.grids()
    absent = [(s, v) for s in specs if s not in grids for v in calibration if not job.record(s, v)]
    source = job.source()
    summaries, missing = (
        collect_summaries(source, grids, volume_ids, progress) if not absent else ({}, [])
    )
    if missing and compute:  # other entries lost since
        lost = list(dict.fromkeys(v for _, v in missing))
        failures += compute_missing_heatmaps(job, lost, model, grids, progress)
        summaries, missing = collect_summaries(source, grids, volume_ids, progress)
    if failures:
        raise RunError(f"{len(failures)} failure(s), the first: {failures[0]}")
    missing = absent or missing
    if missing:
        spec, volume_id = missing[0]
        raise RunError(
            f"{len(missing)} heatmap(s) are not cached, the first: {spec} on {volume_id}; "
            "run the missing shards, or run without --merge"
        )
    labels = [job.dataset.label(v) for v in volume_ids]
    return Seeded(
        seed=trained.seed,
        job=job,
        classifier=trained.classifier,
        model_name=trained.model_name,
        checkpoint=trained.key,
        train_config=trained.train_config,
        report=trained.report,
        evaluations=fold_results(summaries, labels, settings),
    )


def combine_seeds(seeded: Sequence[Seeded]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, folds, cases) over the classifiers of ``seeded`` (each row from the
    classifier of its spec): each metric and its fold spread averaged over seeds,
    ``{m}_seed_sd`` their standard deviation over seeds (with several); folds and cases
    keep a ``seed`` column when there are several seeds."""
    parts = []
    for s in seeded:
        dataset, volume_ids = s.job.dataset.name, s.job.volume_ids
        results, folds = results_tables(dataset, s.model_name, s.evaluations)
        cases = cases_table(dataset, s.model_name, s.evaluations, volume_ids)
        parts.append((results, folds, cases))
    seeds = [s.seed for s in seeded]
    if len(set(seeds)) == 1:
        return tuple(pd.concat([part[i] for part in parts], ignore_index=True) for i in range(3))
    results, folds, cases = (
        pd.concat(
            [part[i].assign(seed=k) for k, part in zip(seeds, parts, strict=True)]
        ).reset_index(drop=True)
        for i in range(3)
    )
    grouped = results.drop(columns="seed").groupby(KEY, sort=False)
    combined = grouped.mean()
    scores = [m for m in KEYS if m in combined]
    spread = grouped[scores].std().add_suffix("_seed_sd")
    columns = [
        c for m in scores for c in (m, f"{m}_std", f"{m}_seed_sd") if c in combined or c in spread
    ]
    combined = combined.join(spread)[columns].reset_index()
    return combined, folds, cases


def classifier_columns(seeded: Sequence[Seeded]) -> pd.DataFrame:
    """Per model (index): ``classifier_*`` columns, each report value averaged over its
    seeds (at chance: any seed), and the ``checkpoint`` and ``source`` of its heatmaps
    (its checkpoints' and stores' names, joined with "+")."""
    rows = {}
    for model in dict.fromkeys(s.model_name for s in seeded):
        mine = [s for s in seeded if s.model_name == model]
        reports = pd.DataFrame([s.report for s in mine])
        row = {f"classifier_{k}": reports[k].mean() for k in sorted(reports) if k != "at_chance"}
        if len(mine) == 1:
            row = {k: mine[0].report[k.removeprefix("classifier_")] for k in row}
        row["classifier_at_chance"] = bool(reports["at_chance"].any())
        row["checkpoint"] = "+".join(s.checkpoint for s in mine)
        row["source"] = "+".join(s.job.store.root.name for s in mine)
        rows[model] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def run_benchmark(
    dataset: Any,
    checkpoints: str | Path | Sequence[str | Path | Mapping[str, str | Path]],
    config: RunConfig,
    tomography: TomographyConfig,
    *,
    specs: Sequence[str],
    out_dir: str | Path,
    leaderboards: str | Path = "leaderboards",
    context: Context | None = None,
    shard: tuple[int, int] | None = None,
    compute: bool = True,
    unscored: Sequence[str] = (),
    notes: Sequence[str] = (),
    preset: str | None = None,
    progress: bool = True,
) -> RunOutputs | None:
    """Heatmaps of ``specs`` on the validation split for the classifiers of each training
    seed, A.7 protocol, leaderboards.

    ``checkpoints``: one item per seed, a checkpoint (the 2D classifier) or a mapping
    {classifier: checkpoint} (``"2d"``, ``"3d"``: :attr:`methods.Method.classifier`); each
    spec is explained through its method's classifier, so a seed is one classifier per
    kind its specs need. Every classifier of every seed is first checked
    (:func:`check_classifier`: its report); one at chance raises a :class:`ChanceError`
    before any heatmap unless ``config.allow_chance``. Then each one's
    :func:`evaluate_classifier`, whose volumes (of ``shard=(i, n)``, if given) are split
    across the ranks of ``context``: first the calibration volumes, whose tail quantiles
    set each spec's tau' grid, then the others, each summarised as it arrives. Rank 0 then
    combines the seeds (:func:`combine_seeds`) and writes; other ranks and shards return
    None. ``compute=False`` (a merge) computes nothing and fails if an entry is missing.
    Failing heatmaps raise a :class:`RunError` naming the rank, spec and volume after
    every other heatmap is computed and stored.
    """
    context = context or Context(device=resolve_device("auto"))
    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]
    options = fitted_options(dataset, specs, context)
    settings = Settings.of(config)  # the protocol's fields, read once
    calibration = settings.calibration(dataset.ids("val"))
    by_classifier = specs_by_classifier(specs)
    classifiers = []  # every classifier's report before the first heatmap of any
    for item in checkpoints:
        paths = dict(item) if isinstance(item, Mapping) else {"2d": item}
        missing = [kind for kind in by_classifier if kind not in paths]
        if missing:
            raise ValueError(f"no {missing[0]} classifier for {by_classifier[missing[0]][0]}")
        classifiers += [
            check_classifier(
                dataset,
                paths[kind],
                config,
                tomography,
                specs=kind_specs,
                context=context,
                settings=settings,
                calibration=calibration,
                unscored=unscored,
                options=options,
            )
            for kind, kind_specs in by_classifier.items()
        ]
    at_chance = [t for t in classifiers if t.report["at_chance"]]
    if at_chance and not config.allow_chance:
        raise chance_error(at_chance)
    seeded = [
        evaluate_classifier(
            trained, settings, context=context, shard=shard, compute=compute, progress=progress
        )
        for trained in classifiers
    ]
    if shard is not None or not context.is_main:
        return None
    return write_outputs(
        seeded, config, settings, tomography, out_dir, leaderboards, context, notes, preset
    )


def specs_by_classifier(specs: Sequence[str]) -> dict[str, list[str]]:
    """{classifier: its specs}, the 2D slice classifier first (it also scores the
    baselines, which explain none)."""
    groups: dict[str, list[str]] = {"2d": []}
    for spec in specs:
        groups.setdefault(method_class(spec).classifier, []).append(spec)
    return {kind: group for kind, group in groups.items() if group}


def write_outputs(
    seeded: Sequence[Seeded],
    config: RunConfig,
    settings: Settings,
    tomography: TomographyConfig,
    out_dir: str | Path,
    leaderboards: str | Path,
    context: Context,
    notes: Sequence[str],
    preset: str | None,
) -> RunOutputs:
    """Stage 5: results (with intervals over volumes and seeds), folds, per-case and
    timing CSVs (with the earlier runs' rows they keep, :func:`with_earlier`),
    summary.json, leaderboards, the Figure 6 layout, NIfTI on request. The run folder's
    tables and the pages are read and written under their locks, so that runs into the same
    folders side by side each add their rows."""
    first = seeded[0]
    job, dataset = first.job, first.job.dataset
    results, folds, cases = combine_seeds(seeded)
    seeds = list(dict.fromkeys(s.seed for s in seeded))
    jobs = [s.job for s in seeded if s.seed == first.seed]  # one per classifier
    environment = provenance(context.device.type)
    results = results.join(classifier_columns(seeded), on="model").assign(
        context=evaluation_context(
            dataset,
            job.volume_ids,
            job.images,
            job.truths,
            job.unscored,
            job.calibration,
            settings,
        ),
        **provenance_columns(environment, preset, seeds),
    )
    timings = pd.concat([timings_table(s.job) for s in seeded])  # summed over classifiers
    timings = timings.groupby(["method", "family", "volumes"], sort=False, as_index=False).sum()
    out_dir = Path(out_dir)
    computed = tuple(results.method)
    shown = folds[folds.seed == first.seed] if "seed" in folds else folds  # for the figures
    new = {"results": results, "folds": folds, "cases": cases, "timings": timings}
    with tables_lock(out_dir), page_lock(leaderboards):  # runs side by side take turns
        tables, kept = with_earlier(out_dir, new)
        folds, cases, timings = tables["folds"], tables["cases"], tables["timings"]
        intervals = Intervals(config.reference, config.bootstrap_resamples, seed=config.seed)
        results = with_intervals(tables["results"], cases, intervals)
        mine = results[results.method.isin(computed)]
        settings = {
            "preset": preset,
            "seeds": seeds,
            "run": dataclasses.asdict(config),
            "tomography": dataclasses.asdict(tomography),
            **{  # the first seed's training settings of each classifier
                TRAIN_SECTIONS[s.classifier]: s.train_config for s in seeded if s.seed == first.seed
            },
            "dataset": {"name": dataset.name, "options": dataset.options()},
            "unscored": sorted(job.unscored, key=natural_key),
        }
        classifiers = [
            {
                "seed": s.seed,
                "classifier": s.classifier,
                "model": s.model_name,
                "checkpoint": s.checkpoint,
                **s.report,
            }
            for s in seeded
        ]
        summary = summary_document(results, cases, folds, settings, classifiers, environment)
        write_reports(out_dir, results, folds, cases, summary)
        write_csv(timings, out_dir / RUN_TABLES["timings"])
        lines = [sanity_lines(s.report, s.model_name, s.classifier) for s in seeded]
        prefix = [f"Seed {s.seed}: " if len(seeds) > 1 else "" for s in seeded]
        page_notes = [p + note for p, (note, _) in zip(prefix, lines, strict=True)]
        warnings = [p + w for p, (_, w) in zip(prefix, lines, strict=True) if w]
        page_notes += [environment_note(environment, preset, seeds), *notes]
        if job.unscored:
            page_notes.append(
                f"{len(job.unscored)} positive(s) with an empty annotation are scored for "
                f"classification only: {', '.join(sorted(job.unscored, key=natural_key))}."
            )
        fallback = out_dir / "leaderboards"
        specs, rows = figure_rows(jobs, mine, shown, config, ["*"])  # a strip per family
        pages = write_leaderboards(
            results,
            leaderboards,
            strips=figures.method_strips(rows, specs) if rows else None,
            notes=page_notes,
            warning="\n".join(warnings) or None,
            fallback_dir=fallback,
            cases=cases,
            intervals=intervals,
        )
        folder = fallback if dataset.name in pages.fell_back else Path(leaderboards)
        figure = folder / f"{dataset.name}.png"
        if (dataset.name in pages.merged or kept) and figure.exists():
            log.info("%s left standing: it shows methods this run did not compute", figure)
            figure = None
        else:
            specs, rows = figure_rows(jobs, mine, shown, config, config.figure_methods)
            title = f"{dataset.name}: heatmaps and masks"
            figure = figures.save_png(figures.draw(rows, title=title), figure) if rows else None
            if not rows:
                log.info("no annotated validation positive to show: no figure")
    nifti = export_nifti(job, out_dir / "heatmaps") if config.save_heatmaps else []
    page = folder / f"{dataset.name}.html"
    written = [*pages, *([figure] if figure else [])]
    return RunOutputs(results, folds, timings, written, nifti, page, computed)


def with_earlier(
    out_dir: Path, new: Mapping[str, pd.DataFrame]
) -> tuple[dict[str, pd.DataFrame], int]:
    """The run folder's tables: ``new`` with the rows of the methods that earlier runs into
    ``out_dir`` computed and this one did not (:func:`~benchmark.publish.report.keep_earlier`), and
    how many methods they keep; rows resting on another classifier or data are dropped,
    said in one line."""
    try:
        earlier = read_tables(out_dir)
    except ValueError as error:
        log.warning("%s: replaced by this run's", error)
        earlier = {}
    tables, dropped = keep_earlier(earlier, new)
    if dropped is not None:
        lost = set(earlier["results"].method) - set(new["results"].method)
        log.warning(
            "%s: dropped the earlier rows of %d method(s) this run did not compute: %s",
            out_dir / RUN_TABLES["results"],
            len(lost),
            dropped,
        )
    return tables, len(tables["results"]) - len(new["results"])
