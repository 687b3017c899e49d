"""``inspect --dataset NAME [--root PATH] [--check]``: counts, shapes, spacings.

Without ``--check`` only file headers (or the cache) are read. ``--check`` reads every
voxel of every volume (``VolumeDataset.verify``), then reports the positives whose
annotation is empty (excluded from the localisation scores) and every problem, one line
each naming its file; the exit code is 2 when any volume has a problem, after all were
checked, so that every bad file shows at once.
"""

from __future__ import annotations

import argparse
import sys

from benchmark.commands import add_dataset_arguments, open_dataset

HELP = "show a data set: samples per split and class (paper Table 3), shapes and spacings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, default="synthetic")
    parser.add_argument(
        "--full",
        action="store_true",
        help="preprocess every volume (fills the cache) and report the preprocessed shapes; "
        "by default shapes come from file headers (AutoPET: before the SUV crop)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="read every voxel of every volume: values, annotations and the cache's "
        "integrity; lists every problem and exits with 2 if there is one",
    )


def _range(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{lo:{fmt}} - {hi:{fmt}}"


def check_all(dataset) -> tuple[list, dict[str, str]]:
    """``verify`` every volume: (the SampleChecks, {id: problem}), going on after a problem."""
    from tqdm import tqdm

    from datasets import DatasetError

    checks, problems = [], {}
    for sample_id in tqdm(dataset.ids(), desc=f"check {dataset.name}", unit="volume"):
        try:
            checks.append(dataset.verify(sample_id))
        except DatasetError as error:
            problems[sample_id] = str(error)
    return checks, problems


def report_checks(checks: list, problems: dict[str, str]) -> None:
    """Print how many volumes were read, the empty positives and the problems."""
    print(f"\nchecked {len(checks) + len(problems)} volumes (every voxel read)")
    empty = [c.id for c in checks if c.empty_truth]
    listed = f": {', '.join(empty)}" if empty else ""
    print(
        f"{len(empty)} positives with an empty annotation, "
        f"excluded from the localisation scores{listed}"
    )
    if problems:
        print(f"{len(problems)} volumes with a problem:")
        for message in problems.values():
            print(f"  {message}")


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate
    from tqdm import tqdm

    dataset = open_dataset(args)
    ids = dataset.ids()
    checks, problems = check_all(dataset) if args.check else ([], {})
    if args.full:
        for sample_id in tqdm(ids, desc=f"preprocess {dataset.name}", disable=len(ids) < 20):
            if sample_id not in problems:
                dataset[sample_id]
    readable = [i for i in ids if i not in problems]
    geometry = {
        i: dataset.geometry(i)
        for i in tqdm(
            readable, desc="read headers", disable=not dataset.needs_root or len(ids) < 50
        )
    }

    print(f"dataset {dataset.name}: {dataset.root or 'generated in code'}")
    print(f"channels: {', '.join(dataset.channels)}; annotation: {dataset.annotation}")
    counts = dataset.counts()
    rows = [[split, *counts[split].values()] for split in counts]
    print(tabulate(rows, headers=["split", *counts["all"]], tablefmt="github"))
    print()
    rows = []
    for split in ("train", "val"):
        shapes = [geometry[i][0] for i in dataset.ids(split) if i in geometry]
        spacings = [geometry[i][1] for i in dataset.ids(split) if i in geometry]
        if not shapes:
            continue
        rows.append(
            [split]
            + [_range([s[a] for s in shapes], "d") for a in range(3)]
            + [_range([s[a] for s in spacings], ".3g") for a in range(3)]
        )
    headers = ["split", "D", "H", "W", "spacing D (mm)", "spacing H", "spacing W"]
    source = "preprocessed" if args.full or args.check else "from the cache or file headers"
    source = source if dataset.cached else "as generated"
    print(f"shapes and spacings ({source}):")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if dataset.cached:
        print(f"\ncache: {dataset.cache_path}")
    if args.check:
        report_checks(checks, problems)
    if problems:
        print(f"error: {len(problems)} of {len(ids)} volumes have a problem", file=sys.stderr)
        return 2
    return 0
