"""``inspect --dataset NAME [--root PATH]``: counts per split and class, shapes, spacings."""

from __future__ import annotations

import argparse

HELP = "show a data set: samples per split and class (paper Table 3), shapes and spacings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic", help="a registered data set")
    parser.add_argument("--root", help="the data set's folder (not needed for synthetic)")
    parser.add_argument(
        "--dataset-option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="adapter option, repeatable (values read as YAML: n_train=96, shape=[32,64,64])",
    )
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
    import yaml
    from tabulate import tabulate
    from tqdm import tqdm

    from benchmark.config import parse_overrides
    from datasets import DATASETS, load_dataset
    from datasets.base import check_options

    options = {k: yaml.safe_load(v) for k, v in parse_overrides(args.dataset_option).items()}
    check_options(DATASETS.entry(args.dataset).obj, options)
    dataset = load_dataset(args.dataset, root=args.root, **options)
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
