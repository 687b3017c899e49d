"""``evaluate --dataset NAME --heatmaps DIR --name "My method"``: another tool's heatmaps,
scored with the paper's protocol (A.7) and added to the data set's leaderboard: the files
read here, the rest on a run's path (:func:`~benchmark.protocol.assess.assess`,
:func:`~benchmark.publish.pipeline.publish`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmark.commands import add_dataset_arguments, add_set_argument, open_dataset

HELP = "score heatmaps made by any tool (one per validation volume), add them to the leaderboard"

PROTOCOL_FIELDS = (
    "folds",
    "seed",
    "n_tune",
    "calibration_volumes",
    "reference",
    "bootstrap_resamples",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument(
        "--heatmaps",
        required=True,
        help="folder with one heatmap per validation volume, named by its id: <id>.nii.gz in "
        "the source image's space (its affine), or <id>.npy in the preprocessed [D,H,W] space",
    )
    parser.add_argument(
        "--name", required=True, help='the method\'s name on the leaderboard, e.g. "nnU-Net probs"'
    )
    parser.add_argument(
        "--reference",
        help="the spec (or family, at its best layer) deltas refer to (default: layercam)",
    )
    add_set_argument(
        parser,
        "a protocol field, repeatable: " + ", ".join(PROTOCOL_FIELDS) + " (as run's --set)",
    )
    parser.add_argument("--out", help="folder of the CSVs; default runs/<dataset>/external-<name>")
    parser.add_argument(
        "--leaderboards", default="leaderboards", help="folder of the tables to add the row to"
    )


def method_key(name: str) -> str:
    """The leaderboard key of an external method: ``"nnU-Net probs"`` -> ``nnu-net-probs``."""
    key = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-.")
    if not key:
        raise ValueError(f"--name {name!r}: give a name with letters or digits")
    return key


def _protocol(args: argparse.Namespace):
    """The run settings that the protocol and the page's statistics read, checked."""
    from benchmark.config import RunConfig, parse_overrides, resolve
    from benchmark.specs import check_reference

    overrides = parse_overrides(args.overrides)
    if args.reference:
        overrides["reference"] = args.reference
    unknown = sorted(set(overrides) - set(PROTOCOL_FIELDS))
    if unknown:
        raise ValueError(f"--set {unknown[0]}: evaluate takes {', '.join(PROTOCOL_FIELDS)}")
    config = resolve(RunConfig, "paper", overrides=overrides)
    check_reference(config.reference)
    return config


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from benchmark.distributed import Context, resolve_device
    from benchmark.protocol.assess import Settings, assess, evaluation_context
    from benchmark.publish.pipeline import Reports, evaluation_tables, publish
    from benchmark.publish.report import provenance
    from benchmark.publish.rows import EXTERNAL, Intervals
    from benchmark.run.external import ExternalHeatmaps
    from benchmark.run.preflight import check_volumes, writable

    config = _protocol(args)
    settings = Settings.of(config)
    key = method_key(args.name)
    dataset = open_dataset(args)
    volume_ids = dataset.ids("val")
    if not volume_ids:
        raise ValueError(f"{dataset.name}: the validation split is empty: nothing to evaluate")
    out = writable(args.out or Path("runs") / dataset.name / f"external-{key}", "--out")
    writable(args.leaderboards, "--leaderboards")
    heatmaps = ExternalHeatmaps(dataset, Path(args.heatmaps), volume_ids)
    with logging_redirect_tqdm():
        checks = check_volumes(dataset, volume_ids, Context(device=resolve_device("cpu")))
        heatmaps.check()  # every file, before any scoring
        unscored = {c.id for c in checks if c.empty_truth}
        calibration = settings.calibration(volume_ids)
        source = heatmaps.source(key, unscored, settings.grid_levels)
        labels = [dataset.label(v) for v in volume_ids]
        evaluations = assess(source, volume_ids, labels, calibration, settings)

    result = evaluations[key]
    results, folds, cases = evaluation_tables(dataset.name, EXTERNAL, evaluations, volume_ids)
    images = {v: dataset.fingerprint(v) for v in volume_ids}
    truths = {v: dataset.truth_fingerprint(v) for v in volume_ids}
    files = heatmaps.digest()  # reads every file once more
    results = results.assign(
        display_name=args.name,
        source=f"external-{files[:16]}",
        context=evaluation_context(
            dataset, volume_ids, images, truths, unscored, calibration, settings
        ),
    )
    intervals = Intervals(config.reference, config.bootstrap_resamples, seed=config.seed)
    settings = {
        "run": {f: getattr(config, f) for f in PROTOCOL_FIELDS},
        "dataset": {"name": dataset.name, "options": dataset.options()},
        "heatmaps": {"folder": str(Path(args.heatmaps).resolve()), "digest": files},
        "unscored": sorted(unscored),
    }
    published = publish(
        results,
        folds,
        cases,
        Reports(out, settings, environment=lambda: provenance(None)),
        args.leaderboards,
        intervals,
        fallback_dir=out / "leaderboards",
        from_page=True,  # the reports hold the row as its page shows it
    )
    results, pages, written = published.results, published.pages, published.reports
    overlap = result.overlap
    line = results.iloc[0]
    print(
        f"{args.name}: {overlap} {line[overlap]:.3f} "
        f"[{line.get(f'{overlap}_ci_low', float('nan')):.3f}, "
        f"{line.get(f'{overlap}_ci_high', float('nan')):.3f}], "
        f"balanced accuracy {line['balanced_accuracy']:.3f} on {len(volume_ids)} volumes"
    )
    print("reports: " + ", ".join(str(p) for p in written))
    print("leaderboards: " + ", ".join(str(p) for p in pages))
    return 0
