"""The benchmark run: classifier -> heatmaps -> summaries -> A.7 protocol -> leaderboards.

``python -m benchmark run`` is :func:`prepare_classifier` (every seed's classifiers) then
:func:`run_benchmark`, which first reports on every classifier (:func:`check_classifier`;
one at chance stops the run here, :class:`ChanceError`, unless ``allow_chance``) and then
runs stages that each resume where a killed run stopped:

1. heatmaps: every method spec on every validation volume, one
   :func:`~methods.heatmaps.compute_heatmaps` call per volume (so that specs share slices
   and classifier passes), the *calibration* volumes first;
2-4. the protocol, :func:`~benchmark.protocol.assess.assess`, the one path that ``evaluate``
   takes too (the store enters it as a ``HeatmapSource``,
   :meth:`~benchmark.run.job.Job.source`): grids, one tau' grid per spec from its calibration
   heatmaps' tail quantiles (:func:`~benchmark.protocol.assess.tau_grids`; the calibration
   volumes, a seeded label-free subset, are drawn once per run), so that every other
   heatmap is summarised the moment it is computed and only its summary is kept
   (:mod:`benchmark.run.cache`); summaries on those grids
   (:func:`~benchmark.protocol.assess.collect_summaries`); A.7's Monte-Carlo folds per spec
   (:func:`~benchmark.protocol.assess.fold_results`);
5. outputs: results, per-fold and timing CSVs, leaderboards, the Figure 6 layout, and
   NIfTI heatmaps on request (:mod:`benchmark.run.outputs`).

Each classifier's heatmap work, its store and stage 1 are :mod:`benchmark.run.job`; this
module is left with the classifiers and their seeds.

Everything is cached by content (:mod:`benchmark.run.cache`): a run that was killed and
resumed ends with the numbers of an uninterrupted one. Under torchrun the ranks split the
volumes (:class:`~benchmark.distributed.Context`); a shard (``shard=(i, n)``) computes
every n-th validation volume into the same cache and stops; a run without a shard then
finds them and evaluates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.config import TRAIN_SECTIONS, RunConfig, TrainConfig
from benchmark.distributed import Context, resolve_device
from benchmark.protocol.assess import MissingHeatmaps, Settings, assess
from benchmark.publish import figures
from benchmark.run.cache import HeatmapStore, heatmap_key
from benchmark.run.job import Job, compute_missing_heatmaps, fitted_options
from benchmark.run.outputs import RunOutputs, Seeded, sanity_lines, write_outputs
from benchmark.run.plan import layer_channels
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
from foundation.seal import digest, read_sealed, save_sealed
from methods import method_class
from methods.config import TomographyConfig

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
    volume_ids, calibration = job.volume_ids, job.calibration
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

    def repair(lost: list[str], grids: dict[str, np.ndarray]) -> None:
        """Entries lost since they were computed: again (failures kept for below)."""
        failures.extend(compute_missing_heatmaps(job, lost, model, grids, progress))

    labels = [job.dataset.label(v) for v in volume_ids]
    missing: list[tuple[str, str]] = []
    try:
        evaluations = assess(
            job.source(),
            volume_ids,
            labels,
            calibration,
            settings,
            progress,
            repair if compute else None,
        )
    except MissingHeatmaps as error:
        missing = error.missing
    if failures:
        raise RunError(f"{len(failures)} failure(s), the first: {failures[0]}")
    if missing:
        spec, volume_id = missing[0]
        raise RunError(
            f"{len(missing)} heatmap(s) are not cached, the first: {spec} on {volume_id}; "
            "run the missing shards, or run without --merge"
        )
    return Seeded(
        seed=trained.seed,
        job=job,
        classifier=trained.classifier,
        model_name=trained.model_name,
        checkpoint=trained.key,
        train_config=trained.train_config,
        report=trained.report,
        evaluations=evaluations,
    )


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
