"""Atomic file writes and the cache root, shared by every cache and checkpoint.

A reader never sees a half-written file: data go to a temporary file in the target's
folder, which then replaces the target in one ``os.replace`` (atomic on POSIX and
Windows). A killed writer leaves at most a stray ``.tmp`` file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_root() -> Path:
    """``$TONNO_CACHE`` if set, else ``~/.cache/tonno-benchmark``."""
    return Path(os.environ.get("TONNO_CACHE") or Path.home() / ".cache" / "tonno-benchmark")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it; mkstemp makes it 0600
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_write` (the file can be memory-mapped later)."""
    with atomic_write(path) as file:
        np.save(file, np.asarray(array), allow_pickle=False)


def atomic_save_json(path: str | Path, obj: Any) -> None:
    """``json.dump`` through :func:`atomic_write`."""
    with atomic_write(path, "w") as file:
        json.dump(obj, file, indent=1, sort_keys=True)
