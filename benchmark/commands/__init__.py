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


def add_config_arguments(parser: argparse.ArgumentParser, settable: tuple[str, ...]) -> None:
    """``--preset``, ``--config FILE`` and ``--set`` of the one settings schema
    (:func:`benchmark.config.load_settings`) that ``train`` and ``run`` share; ``settable``:
    the sections this command's ``--set`` takes."""
    parser.add_argument(
        "--preset",
        choices=("quick", "paper"),
        help="settings of every stage (default: paper on a GPU, quick on a CPU)",
    )
    uses = "" if len(settable) > 1 else f"; this command uses its {settable[0]}: section"
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file with sections run:, train:, train3d: and tomography: of config fields, one "
        f"file for train and run alike{uses}",
    )
    examples = {
        "run": "folds=5",
        "train": "train.iterations=100",
        "train3d": "train3d.iterations=100",
        "tomography": "tomography.n_angles=500",
    }
    fields = {
        "run": "FIELD (RunConfig)",
        "train": "train.FIELD",
        "train3d": "train3d.FIELD",
        "tomography": "tomography.FIELD",
    }
    add_set_argument(
        parser,
        f"a field, repeatable, over --config: {', '.join(fields[s] for s in settable)} "
        f"(e.g. {', '.join(examples[s] for s in settable)})",
    )


def chosen_preset(requested: str | None, context: Any) -> str:
    """``--preset``, or the default on the context's device (paper on a GPU, quick on a
    CPU), said once on stdout."""
    preset = requested or ("paper" if context.device.type == "cuda" else "quick")
    how = "chosen" if requested else f"the default on {context.device.type}"
    if context.is_main:
        print(f"preset: {preset} ({how})")
    return preset


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
