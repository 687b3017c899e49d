"""``inspect --dataset NAME [--root PATH]``: counts per split and class, shapes, spacings."""

from __future__ import annotations

import argparse

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


def _range(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{lo:{fmt}} - {hi:{fmt}}"


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate
    from tqdm import tqdm

    dataset = open_dataset(args)
    ids = dataset.ids()
    if args.full:
        for sample_id in tqdm(ids, desc=f"preprocess {dataset.name}", disable=len(ids) < 20):
            dataset[sample_id]
    geometry = {
        i: dataset.geometry(i)
        for i in tqdm(ids, desc="read headers", disable=not dataset.needs_root or len(ids) < 50)
    }

    print(f"dataset {dataset.name}: {dataset.root or 'generated in code'}")
    print(f"channels: {', '.join(dataset.channels)}; annotation: {dataset.annotation}")
    counts = dataset.counts()
    rows = [[split, *counts[split].values()] for split in counts]
    print(tabulate(rows, headers=["split", *counts["all"]], tablefmt="github"))
    print()
    rows = []
    for split in ("train", "val"):
        shapes = [geometry[i][0] for i in dataset.ids(split)]
        spacings = [geometry[i][1] for i in dataset.ids(split)]
        if not shapes:
            continue
        rows.append(
            [split]
            + [_range([s[a] for s in shapes], "d") for a in range(3)]
            + [_range([s[a] for s in spacings], ".3g") for a in range(3)]
        )
    headers = ["split", "D", "H", "W", "spacing D (mm)", "spacing H", "spacing W"]
    source = "preprocessed" if args.full else "from the cache or file headers"
    source = source if dataset.cached else "as generated"
    print(f"shapes and spacings ({source}):")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if dataset.cached:
        print(f"\ncache: {dataset.cache_path}")
    return 0
