"""``python -m benchmark``: one sub-command per module in ``benchmark.commands``.

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``
and imports its heavy dependencies inside ``run``, so ``--help`` and ``ls`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import zipfile

import yaml

from benchmark import __version__
from foundation.registry import RegistryError

COMMANDS = ("ls", "bench", "train", "inspect", "run", "evaluate")

# What a user can cause (a bad setting, name or file); anything else is a bug: traceback.
USER_ERRORS = (
    RegistryError,
    ValueError,
    OSError,  # FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError...
    ModuleNotFoundError,
    yaml.YAMLError,
    zipfile.BadZipFile,
)

log = logging.getLogger("benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="ToNNO benchmark: weakly supervised 3D segmentation from image-level labels.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    parser.add_argument(
        "--plugins",
        action="extend",
        type=lambda text: [name for name in text.split(",") if name],
        default=[],
        metavar="MODULE[,MODULE]",
        help="import these modules first, e.g. my_pkg.my_methods (their @register_method "
        "and @register_dataset classes become available)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        for module in args.plugins:
            importlib.import_module(module)
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        if args.verbose:
            raise
        print(f"error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def user_message(error: BaseException) -> str:
    """One line for ``error: ...``: an OSError names its file, a YAMLError its line."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        files = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        text = f"{files}: {error.strerror}"
    elif isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}: " if mark is not None else ""
        text = f"{where}not valid YAML ({getattr(error, 'problem', None) or error})"
    elif isinstance(error, zipfile.BadZipFile):
        text = f"a damaged zip-based file (.xlsx, .pt, .npz): {error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
