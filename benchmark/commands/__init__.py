"""Sub-commands of ``python -m benchmark`` (see ``benchmark.cli``), and what they share."""

from __future__ import annotations

import argparse
from typing import Any


def add_dataset_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--dataset NAME --root PATH --dataset-option KEY=VALUE ...`` (required without default)."""
    parser.add_argument(
        "--dataset",
        required=default is None,
        default=default,
        help="a registered data set, e.g. synthetic (`ls datasets` lists them)",
    )
    parser.add_argument("--root", help="the data set's folder (not needed for synthetic)")
    parser.add_argument(
        "--dataset-option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="adapter option, repeatable (values read as YAML: n_val=12, shape=[16,32,32])",
    )


def open_dataset(args: argparse.Namespace) -> Any:
    """The data set named by :func:`add_dataset_arguments`; options are converted to the
    adapter's annotated types, and an unknown or unreadable option is an error."""
    import yaml

    from benchmark.config import parse_overrides
    from datasets import DATASETS, load_dataset
    from datasets.base import check_options

    options = {k: _read_yaml(v, yaml) for k, v in parse_overrides(args.dataset_option).items()}
    options = check_options(DATASETS.entry(args.dataset).obj, options)
    return load_dataset(args.dataset, root=args.root, **options)


def _read_yaml(text: str, yaml: Any) -> Any:
    """``text`` read as YAML; kept as the string when it is not YAML (the adapter's type
    conversion then names the option)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE [KEY=VALUE ...]``, repeatable: config fields into ``args.overrides``."""
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        dest="overrides",
        help=help,
    )
