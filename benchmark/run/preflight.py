"""Checks made before the long work, so that a mistake costs seconds, not a training run.

:func:`writable` probes an output folder by writing to it; :func:`check_volumes` reads
every voxel of every volume once per content (``dataset.verify``, cached by the data set),
so that a NaN, an absurd value, an unreadable file or a contradictory annotation is named
before training starts rather than after hours of it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datasets.volume import DatasetError

log = logging.getLogger(__name__)


def writable(path: str | Path, what: str) -> Path:
    """``path`` as a folder this process can write to (created if missing), or a ValueError
    naming ``what`` (``--out``, the cache) and the reason."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{what} {path}: cannot write there ({reason})") from None
    return path


def check_volumes(
    dataset: Any, ids: Sequence[str], context: Any, progress: bool = True
) -> list[Any]:
    """``dataset.verify`` of every volume in ``ids`` (split across the ranks of
    ``context``); every problem is collected first, then one error names the first of them.
    Returns the checks of all volumes, on every rank."""
    checks, problems = [], []
    mine = context.share(list(ids))
    for sample_id in tqdm(mine, desc="check volumes", unit="volume", disable=not progress):
        try:
            checks.append(dataset.verify(sample_id))
        except DatasetError as error:
            problems.append(str(error))
    checks = [c for part in context.gather(checks) for c in part]
    problems = [p for part in context.gather(problems) for p in part]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DatasetError(
            f"{problems[0]}{more}; `python -m benchmark inspect --check` lists every problem"
        )
    return checks
