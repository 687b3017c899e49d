"""``ls methods|datasets [PATTERN]``: list what is registered."""

from __future__ import annotations

import argparse

HELP = "list registered methods or datasets (fnmatch wildcards); none matching is an error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("methods", "datasets"))
    parser.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="e.g. 'tomographic_*', or a spec pattern for methods ('*cam@2')",
    )
    parser.add_argument(
        "--specs", action="store_true", help="methods: one line per NAME@LAYER spec"
    )


def run(args: argparse.Namespace) -> int:
    """Print the matching names, one a line; a pattern that matches nothing is an error
    (``error: no method matches 'xyz*' ...``, exit code 2), as in ``run --methods``."""
    if args.what == "methods":
        import fnmatch

        from methods import METHODS, list_methods

        registry = METHODS
        if "@" in args.pattern:  # a spec pattern, as ``--methods`` reads it
            specs = list_methods(specs=True)
            names = [s for s in specs if fnmatch.fnmatchcase(s, args.pattern)]
        else:
            names = list_methods(args.pattern, specs=args.specs)
    else:
        from datasets import DATASETS, list_datasets

        registry = DATASETS
        names = list_datasets(args.pattern)
    if not names:
        raise registry.no_match(args.pattern)
    for name in names:
        print(name)
    return 0
