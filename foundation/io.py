"""Atomic file writes, file locks and the cache root, shared by every cache and checkpoint.

A reader never sees a half-written file: data go to a temporary file in the target's
folder, which then replaces the target in one ``os.replace`` (atomic on POSIX and
Windows). A killed writer leaves at most a stray ``.tmp`` file behind.

What several files make together (a cache entry, a page and its tables, a classifier's
training) is written under :func:`file_lock`, so that processes sharing a folder (job
arrays, ``--shard`` jobs, runs started side by side) take turns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock, file_lock runs its block unlocked
    fcntl = None

_UMASK = os.umask(0)
os.umask(_UMASK)

log = logging.getLogger(__name__)
_HELD: set[str] = set()  # the locks this process holds (file_lock nests)
_UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # a file system without flock
_warned = False  # that locks are unsupported here (once a process)


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


@contextlib.contextmanager
def file_lock(path: str | Path, waiting: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (``fcntl.flock`` on that file) for the block.

    Other processes wait (``waiting``, if given, says why in an INFO line when they have
    to); in this process the lock nests. The file is created, and removed on release, while
    locked: a process that waited on a removed file takes the new one, so a folder keeps no
    lock files. On a file system without ``flock`` (some network mounts; Windows) the block
    runs unlocked, after one WARNING.
    """
    key = os.path.abspath(path)
    if key in _HELD:
        yield
        return
    fd = _acquire(key, waiting)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(key)
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for a forked child that holds a copy
            os.close(fd)


def _acquire(path: str, waiting: str | None) -> int | None:
    """The descriptor of lock file ``path``, flocked and still at ``path``; None where the
    file system has no locks."""
    global _warned
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no fcntl.flock on this platform")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                note = waiting or f"waiting for {path}, which another process holds"
                log.log(logging.INFO if waiting else logging.DEBUG, "%s", note)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            os.close(fd)
            if error.errno not in _UNSUPPORTED:
                raise
            if not _warned:
                log.warning("cannot lock %s (%s): concurrent runs here are not safe", path, error)
                _warned = True
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        os.close(fd)  # released and removed by its holder meanwhile: take the new one
