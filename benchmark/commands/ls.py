"""``ls methods|datasets [PATTERN]``: list what is registered."""

from __future__ import annotations

import argparse

HELP = "list registered methods or datasets (fnmatch wildcards)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=("methods", "datasets"))
    parser.add_argument("pattern", nargs="?", default="*", help="e.g. 'tomographic_*'")
    parser.add_argument(
        "--specs", action="store_true", help="methods: one line per NAME@LAYER spec"
    )


def run(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from methods import list_methods

        names = list_methods(args.pattern, specs=args.specs)
    else:
        from datasets import list_datasets

        names = list_datasets(args.pattern)
    for name in names:
        print(name)
    if not names:
        print(f"no {args.what} match {args.pattern!r}")
    return 0
