"""Stage 5 of a run: its classifiers' seeds combined (:func:`combine_seeds`), the run
folder's tables (with the earlier runs' rows they keep), summary.json, the leaderboards,
the Figure 6 layout and NIfTI heatmaps on request (:func:`write_outputs`)."""

from __future__ import annotations

import dataclasses
import gzip
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from benchmark.config import TRAIN_SECTIONS, RunConfig
from benchmark.distributed import Context
from benchmark.protocol.assess import (
    Settings,
    evaluation_context,
)
from benchmark.protocol.evaluation import (
    EvaluationResult,
    binarize,
)
from benchmark.protocol.metrics import KEYS
from benchmark.publish import figures
from benchmark.publish.leaderboard import page_lock
from benchmark.publish.pipeline import Reports, evaluation_tables, publish
from benchmark.publish.report import (
    RUN_TABLES,
    environment_note,
    keep_earlier,
    provenance,
    provenance_columns,
    read_tables,
    tables_lock,
)
from benchmark.publish.rows import KEY, Intervals
from benchmark.run.job import Job
from datasets.base import safe_stem
from foundation.io import atomic_write
from foundation.registry import natural_key
from methods.config import TomographyConfig
from methods.registry import method_name

log = logging.getLogger(__name__)


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


def figure_rows(
    jobs: Sequence[Job],
    results: pd.DataFrame,
    folds: pd.DataFrame,
    volumes: int,
    patterns: Sequence[str],
) -> tuple[list[str], list[figures.FigureRow]]:
    """(specs, rows) of the Figure 6 layout: a few annotated validation positives, each
    method family matching ``patterns`` at its best layer, binarised with fold 0's
    (tau, tau') (A.7); ``volumes`` positives at most. ``jobs``: one classifier seed's, one
    per classifier (the same volumes), each with its specs' heatmaps. Empty when there is
    nothing to show."""
    job_of = {spec: job for job in jobs for spec in job.specs}
    dataset, first = jobs[0].dataset, jobs[0]
    positives = figures.figure_ids(dataset, first.volume_ids, first.unscored, volumes)
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
    each spec's as run alone (:func:`~benchmark.run.prices.split_seconds`): the specs' seconds
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


def combine_seeds(seeded: Sequence[Seeded]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, folds, cases) over the classifiers of ``seeded`` (each row from the
    classifier of its spec): each metric and its fold spread averaged over seeds,
    ``{m}_seed_sd`` their standard deviation over seeds (with several); folds and cases
    keep a ``seed`` column when there are several seeds."""
    parts = []
    for s in seeded:
        dataset, volume_ids = s.job.dataset.name, s.job.volume_ids
        parts.append(evaluation_tables(dataset, s.model_name, s.evaluations, volume_ids))
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
    summary.json, leaderboards (:func:`~benchmark.publish.pipeline.publish`, reports
    first), the Figure 6 layout, NIfTI on request. The run folder's tables and the pages
    are read and written under their locks, so that runs into the same folders side by side
    each add their rows."""
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

        def strips(results: pd.DataFrame) -> dict[str, bytes] | None:  # a strip per family
            mine = results[results.method.isin(computed)]
            specs, rows = figure_rows(jobs, mine, shown, config.figure_volumes, ["*"])
            return figures.method_strips(rows, specs) if rows else None

        fallback = out_dir / "leaderboards"
        reports = Reports(out_dir, settings, classifiers, environment, {"timings": timings})
        published = publish(
            tables["results"],
            folds,
            cases,
            reports,
            leaderboards,
            intervals,
            fallback_dir=fallback,
            notes=page_notes,
            warning="\n".join(warnings) or None,
            strips=strips,
        )
        results, pages = published.results, published.pages
        mine = results[results.method.isin(computed)]
        folder = fallback if dataset.name in pages.fell_back else Path(leaderboards)
        figure = folder / f"{dataset.name}.png"
        if (dataset.name in pages.merged or kept) and figure.exists():
            log.info("%s left standing: it shows methods this run did not compute", figure)
            figure = None
        else:
            volumes, methods = config.figure_volumes, config.figure_methods
            specs, rows = figure_rows(jobs, mine, shown, volumes, methods)
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
