"""One preprocessed sample on disk, and the rule that says whether it may be served.

An entry is ``<stem>.image.npy``, ``<stem>.mask.npy`` (when masked) and ``<stem>.json``,
written in that order, atomically, so the JSON's presence marks a complete entry. The
JSON is sealed with the sha256 of its content (``foundation.seal``) and records, besides
the geometry and the boxes:

- ``fields``: what of the sample's index record changes the arrays (id, label,
  annotated, the adapter's ``source`` and the list of source files). Index files (the
  folder CSV, Duke's tables) are represented by what they say about *this* sample, so
  editing one CSV row recomputes that sample only;
- ``sources``: for each file the sample is read from, its path, size, mtime_ns and
  sha256;
- ``arrays``: for each ``.npy``, its byte size, shape and dtype;
- ``fingerprint`` and ``truth_fingerprint`` (``datasets.content``), and ``verified``
  once ``VolumeDataset.verify`` has read every voxel and found them matching.

Validity, checked on every read with stat calls and the JSON's seal:

1. the JSON parses and matches its seal, and the ``.npy`` files exist with their
   recorded byte sizes, and open memory-mapped with their recorded shape and dtype;
   otherwise the entry is *damaged*: a WARNING names the file, the entry is deleted and
   rebuilt;
2. the record's fields equal the stored ones; otherwise the entry is *stale*;
3. for each source file: same size and mtime -> unchanged; size differs -> stale;
   mtime differs but size same -> re-hash: same sha256 -> unchanged (the new mtime is
   stored, so the hash runs once), else stale. A stale entry is logged (INFO, naming the
   changed file) and recomputed.

Before its arrays are served they are hashed and compared with ``fingerprint`` and
``truth_fingerprint`` (:meth:`CacheEntry.check_content`): a mismatch (bytes flipped in
place) is damage, rule 1. ``VolumeDataset`` hashes an entry on its first read and again
whenever an array file's inode, size or mtime changes, so bytes that rot after that first
read, keeping all three, are seen by the next data set object (the next run).

Processes sharing the cache (job arrays, ``--shard`` jobs) serve a valid entry without
locking; anything else (deleting a damaged entry, rebuilding a stale one, storing a
verification) happens under the entry's lock, ``<stem>.lock`` (:func:`~foundation.io.file_lock`),
after looking at the entry again: what another process is writing is waited for, never
taken for damage.

Blind spot: an edit that keeps both the size and the mtime of a *source* file (a tool
that restores mtimes, or an edit within the file system's timestamp resolution) is not
seen; delete the cache entry (or the cache) after such an edit.

Adapters' memo files beside the entries (AutoPET's labels, Duke's series index) are
sealed too (:func:`save_memo`, :func:`read_memo`): a damaged one is logged and rebuilt,
never fatal.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.content import file_sha256, image_fingerprint, truth_fingerprint
from datasets.volume import DatasetError, Volume
from foundation.io import atomic_save_npy, file_lock
from foundation.seal import read_sealed, save_sealed

FORMAT = 3  # of the JSON; an entry of another format is stale

log = logging.getLogger(__name__)


class DamagedEntry(Exception):
    """A cache file is missing, truncated or unreadable: the message names it."""


def stamp(path: Path) -> dict[str, Any]:
    """Path, size, mtime_ns and sha256 of a source file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"missing file {path}") from None
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": file_sha256(path, stat.st_size, stat.st_mtime_ns),
    }


def changed_source(stamps: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """(why the first changed source file makes the entry stale, or None; whether an
    unchanged file's new mtime was written into ``stamps``), by the module's rule 3."""
    refreshed = False
    for recorded in stamps:
        path = Path(recorded["path"])
        try:
            stat = path.stat()
        except FileNotFoundError:
            return f"{path} is missing", refreshed
        if stat.st_size != recorded["size"]:
            return f"{path} changed (size {recorded['size']} -> {stat.st_size})", refreshed
        if stat.st_mtime_ns == recorded["mtime_ns"]:
            continue
        if file_sha256(path, stat.st_size, stat.st_mtime_ns) != recorded["sha256"]:
            return f"{path} changed (same size, new content)", refreshed
        recorded["mtime_ns"] = stat.st_mtime_ns
        refreshed = True
    return None, refreshed


def _well_formed(meta: Any) -> bool:
    """Whether ``meta`` has the structure :meth:`CacheEntry.write` gives it."""
    try:
        return (
            isinstance(meta["fields"], dict)
            and all(
                isinstance(s["path"], str)
                and isinstance(s["size"], int)
                and isinstance(s["mtime_ns"], int)
                and isinstance(s["sha256"], str)
                for s in meta["sources"]
            )
            and "image" in meta["arrays"]
            and all(
                isinstance(a["bytes"], int)
                and isinstance(a["shape"], list)
                and isinstance(a["dtype"], str)
                for a in meta["arrays"].values()
            )
            and all(isinstance(meta[k], str) for k in ("fingerprint", "truth_fingerprint"))
            and all(isinstance(meta[k], list) for k in ("shape", "affine", "spacing"))
            and "boxes" in meta
        )
    except (KeyError, TypeError, AttributeError):
        return False


def read_memo(path: Path) -> dict[str, Any]:
    """An adapter's memo file (labels, index): {} when missing, or when damaged (unreadable,
    not matching its seal, not a mapping; then with a WARNING naming it: it is rebuilt,
    never fatal)."""
    try:
        memo = read_sealed(path)
    except FileNotFoundError:
        return {}
    except ValueError as error:
        log.warning("damaged cache file %s; rebuilding it", error)
        return {}
    if not isinstance(memo, dict):
        log.warning("damaged cache file %s (not a mapping); rebuilding it", path)
        return {}
    return memo


def save_memo(path: Path, memo: dict[str, Any]) -> None:
    """Write an adapter's memo file, sealed, for :func:`read_memo`."""
    save_sealed(path, memo)


@dataclass(frozen=True)
class CacheEntry:
    """The files of one cached sample, ``<stem>.{image.npy,mask.npy,json}``."""

    stem: Path

    @property
    def json_path(self) -> Path:
        return Path(f"{self.stem}.json")

    def array_path(self, name: str) -> Path:
        return Path(f"{self.stem}.{name}.npy")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The entry's lock (module docstring), held while it is changed."""
        return file_lock(f"{self.stem}.lock")

    def read_meta(self) -> dict[str, Any] | None:
        """The entry's JSON, None when there is none; DamagedEntry when unreadable."""
        try:
            meta = read_sealed(self.json_path)
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise DamagedEntry(str(error)) from error
        if not _well_formed(meta):
            raise DamagedEntry(f"{self.json_path} lacks the fields of a cache entry")
        return meta

    def check_files(self, meta: dict[str, Any]) -> None:
        """DamagedEntry unless every array file exists with its recorded byte size."""
        for name, info in meta["arrays"].items():
            path = self.array_path(name)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise DamagedEntry(f"{path} is missing (its {self.json_path.name} stays)") from None
            if size != info["bytes"]:
                raise DamagedEntry(f"{path} has {size} bytes, {info['bytes']} recorded")

    def open(self, name: str, meta: dict[str, Any]) -> np.memmap:
        """Array ``name`` memory-mapped; DamagedEntry unless of the recorded shape and dtype."""
        info, path = meta["arrays"][name], self.array_path(name)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise DamagedEntry(f"{path} is unreadable ({error})") from error
        if list(array.shape) != info["shape"] or array.dtype.str != info["dtype"]:
            raise DamagedEntry(
                f"{path} holds {array.dtype.str} {list(array.shape)}, "
                f"{info['dtype']} {info['shape']} recorded"
            )
        return array

    def check_content(self, meta: dict[str, Any], volume: Volume) -> None:
        """DamagedEntry unless the served arrays hash to the JSON's fingerprints (reads
        every voxel)."""
        if image_fingerprint(volume.image) != meta["fingerprint"]:
            name = "image"
        elif (
            truth_fingerprint(volume.label, volume.mask, volume.boxes) != meta["truth_fingerprint"]
        ):
            name = "mask"
        else:
            return
        raise DamagedEntry(
            f"{self.array_path(name)} does not match the sha recorded in {self.json_path.name}"
        )

    def write(
        self, volume: Volume, fields: dict[str, Any], stamps: list[dict], options: dict
    ) -> dict[str, Any]:
        """Write the arrays, then the JSON (last: it marks a complete entry); its content."""
        arrays = {"image": np.ascontiguousarray(volume.image, dtype=np.float32)}
        if volume.mask is not None:
            arrays["mask"] = np.ascontiguousarray(volume.mask, dtype=bool)
        info = {}
        for name, array in arrays.items():
            atomic_save_npy(self.array_path(name), array)
            info[name] = {
                "bytes": self.array_path(name).stat().st_size,
                "shape": list(array.shape),
                "dtype": array.dtype.str,
            }
        meta = {
            "format": FORMAT,
            "id": volume.id,
            "shape": list(volume.image.shape),
            "boxes": None if volume.boxes is None else [list(b) for b in volume.boxes],
            "affine": np.asarray(volume.affine).tolist(),
            "spacing": list(volume.spacing),
            "options": options,
            "fields": fields,
            "sources": stamps,
            "arrays": info,
            "fingerprint": image_fingerprint(arrays["image"]),
            "truth_fingerprint": truth_fingerprint(volume.label, arrays.get("mask"), volume.boxes),
            "verified": None,
        }
        self.save_meta(meta)
        return meta

    def save_meta(self, meta: dict[str, Any]) -> None:
        save_sealed(self.json_path, meta)

    def delete(self) -> None:
        """Remove the entry's files (the JSON first, so no half entry looks complete)."""
        for path in (self.json_path, self.array_path("image"), self.array_path("mask")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
