"""The heatmap cache: what a run keeps per (method spec, validation volume).

A run keeps what the A.7 protocol needs, not the heatmap: a *record* (the heatmap's
maximum, its :func:`~benchmark.protocol.evaluation.tail_quantiles` and the seconds it took) and a
*summary* (its component tables on the spec's tau' grid). Full heatmaps are kept only
while a spec's grid is unknown, for the figure's volumes and on request, so that disk
grows with the number of results, not with voxels.

Layout under ``<cache_root>/heatmaps/<dataset>/<digest of the key>/``::

    key.json                                   what the digest hashes (:func:`heatmap_key`)
    <spec>/<volume>-<image>.json               record; written last, marks the entry
    <spec>/<volume>-<image>.npy                full heatmap [D,H,W] float32 (when kept)
    <spec>/summaries/<grid>/<volume>-<image>-<truth>.npz   summary on tau' grid <grid>

``<image>`` and ``<truth>`` are the first 16 hex digits of the volume's content digests
(``dataset.fingerprint`` and ``dataset.truth_fingerprint``; for a spec with options fitted
to the data set, or whose method has a non-zero ``Method.revision``, ``<image>`` digests
the image's with the options and the revision: ``Job.image`` in :mod:`benchmark.run.job`),
so an edited image or mask, or a method whose code changed its heatmaps, gets new
entries and never an old one. ``<grid>`` hashes the grid's levels and the protocol's
settings (connectivity, matching IoU, tail fractions). Every file is written atomically and verified
when read: a record that does not match its seal (:mod:`foundation.seal`: a digit flipped
in its maximum is seen), a heatmap whose sha256 differs from its record's, a summary
whose zip CRC fails, a ``key.json`` that does not hold the key. A damaged file is logged
(WARNING), deleted and recomputed (``key.json``: rewritten).

Processes sharing the cache (job arrays, ``--shard`` jobs, runs side by side) write an
entry's files under its lock, ``<spec>/<volume>-<image>.lock``
(:func:`~foundation.io.file_lock`), and read a file that looks damaged again under that
lock before deleting it: another process between an entry's files is waited for, never
taken for damage. Two processes that miss the same entry both compute it; the files
are the same, the last written stays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from benchmark import __version__
from benchmark.protocol.evaluation import GRID_LEVELS, MATCH_IOU, STRUCTURE, Summary, tail_fractions
from datasets.base import safe_stem
from foundation.io import atomic_save_json, atomic_write, cache_root, file_lock
from foundation.seal import digest, read_sealed, save_sealed

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # the layout above
_DAMAGED = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)
T = TypeVar("T")


def heatmap_key(
    dataset: str, checkpoint: str, tomography: Any, batch_size: int, device: str
) -> dict[str, Any]:
    """Everything that changes a heatmap besides its spec and the volume's content.

    ``checkpoint`` is the classifier's :func:`~benchmark.training.checkpoint.checkpoint_id`;
    ``device`` its type (CUDA runs in bf16).
    """
    key = {
        "cache_version": CACHE_VERSION,
        "benchmark": __version__,
        "dataset": dataset,
        "checkpoint": checkpoint,
        "tomography": dataclasses.asdict(tomography),
        "batch_size": batch_size,
        "device": device,
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def grid_id(grid: np.ndarray, levels: int) -> str:
    """A name for a tau' grid under this protocol: its levels and the protocol's settings
    (connectivity, matching IoU, the ``levels`` tail fractions the grid was made from)."""
    settings = [STRUCTURE.ravel(), [MATCH_IOU], tail_fractions(levels)]
    protocol = np.concatenate(settings).astype(np.float64)
    return digest(np.ascontiguousarray(grid, np.float64).tobytes() + protocol.tobytes(), 12)


def _array_sha(array: np.ndarray) -> str:
    return digest(np.ascontiguousarray(array).tobytes(), 64)


@dataclass(frozen=True)
class HeatmapStore:
    """The cache of one heatmap key (module docstring). Entries are addressed by
    (spec, volume id, image digest); summaries also by truth digest and grid."""

    root: Path
    levels: int = GRID_LEVELS  # tail fractions of the run's tau' grids

    @classmethod
    def open(
        cls, key: dict[str, Any], base: str | Path | None = None, levels: int = GRID_LEVELS
    ) -> HeatmapStore:
        """The store of ``key`` under ``base`` (default :func:`cache_root`), for a run whose
        tau' grids have ``levels`` tail fractions."""
        text = json.dumps(key, sort_keys=True)
        root = Path(base or cache_root()) / "heatmaps" / key["dataset"] / digest(text)
        path = root / "key.json"
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            stored = None
        except (OSError, ValueError) as error:
            stored = error
        if stored != json.loads(text):
            if stored is not None:
                why = stored if isinstance(stored, Exception) else "not this store's key"
                log.warning("cache: %s is damaged (%s); rewriting it", path, why)
            atomic_save_json(path, key)
        return cls(root, levels)

    def _stem(self, spec: str, volume: str, image: str) -> Path:
        return self.root / spec / f"{safe_stem(volume)}-{image[:16]}"

    def lock(self, spec: str, volume: str, image: str):
        """The entry's lock (module docstring), held while its files are written."""
        return file_lock(self._stem(spec, volume, image).with_suffix(".lock"))

    def _read(self, entry: tuple[str, str, str], path: Path, read: Callable[[], T]) -> T | None:
        """``read()``; None when its file is missing. A damaged file is read again under the
        lock of ``entry`` (spec, volume, image) and, damaged still, logged and deleted."""
        try:
            return read()
        except FileNotFoundError:
            return None
        except _DAMAGED:
            pass
        with self.lock(*entry):
            try:
                return read()
            except FileNotFoundError:
                return None
            except _DAMAGED as error:
                log.warning("cache: %s is damaged (%s); recomputing it", path, error)
                path.unlink(missing_ok=True)
                return None

    # -- records ------------------------------------------------------------------------

    def record(self, spec: str, volume: str, image: str) -> dict[str, Any] | None:
        """The entry's record, or None when missing, damaged (then it is deleted) or made
        for tau' grids of another number of levels (then it is recomputed).

        Its ``sketch`` holds the heatmap's :func:`~benchmark.protocol.evaluation.tail_quantiles`."""
        path = self._stem(spec, volume, image).with_suffix(".json")

        def read() -> dict[str, Any]:
            record = read_sealed(path)
            if not (isinstance(record, dict) and isinstance(record["sketch"], list)):
                raise ValueError("not a heatmap record")
            float(record["max"]), float(record["seconds"])
            return record

        record = self._read((spec, volume, image), path, read)
        return record if record and len(record["sketch"]) == self.levels + 1 else None

    def save_record(self, spec: str, volume: str, image: str, record: dict[str, Any]) -> None:
        save_sealed(self._stem(spec, volume, image).with_suffix(".json"), record)

    # -- full heatmaps ------------------------------------------------------------------

    def save_heatmap(self, spec: str, volume: str, image: str, heatmap: np.ndarray) -> str:
        """Keep the full heatmap (float32); its sha256, for the record."""
        heatmap = np.ascontiguousarray(heatmap, dtype=np.float32)
        with atomic_write(self._stem(spec, volume, image).with_suffix(".npy")) as file:
            np.save(file, heatmap, allow_pickle=False)
        return _array_sha(heatmap)

    def heatmap(self, spec: str, volume: str, image: str) -> np.ndarray | None:
        """The kept heatmap if its record names it and its content matches, else None."""
        path = self._stem(spec, volume, image).with_suffix(".npy")

        def read() -> np.ndarray | None:
            record = self.record(spec, volume, image)
            sha = record.get("heatmap") if record else None
            if sha is None:
                return None
            heatmap = np.load(path, allow_pickle=False)
            if _array_sha(heatmap) != sha:
                raise ValueError("its sha256 differs from its record's")
            return heatmap

        return self._read((spec, volume, image), path, read)

    def drop_heatmap(self, spec: str, volume: str, image: str) -> None:
        self._stem(spec, volume, image).with_suffix(".npy").unlink(missing_ok=True)

    # -- summaries ----------------------------------------------------------------------

    def _summary_path(self, spec: str, volume: str, image: str, truth: str, grid) -> Path:
        name = f"{self._stem(spec, volume, image).name}-{truth[:16]}.npz"
        return self.root / spec / "summaries" / grid_id(grid, self.levels) / name

    def summary(
        self, spec: str, volume: str, image: str, truth: str, grid: np.ndarray
    ) -> Summary | None:
        """The entry's summary on ``grid``, or None when missing or damaged (then deleted)."""
        path = self._summary_path(spec, volume, image, truth, grid)

        def read() -> Summary:
            with np.load(path, allow_pickle=False) as data:
                summary = Summary.from_dict({k: data[k] for k in data.files})
            if not np.array_equal(summary.levels, grid):
                raise ValueError("made on another grid")
            return summary

        return self._read((spec, volume, image), path, read)

    def save_summary(
        self, spec: str, volume: str, image: str, truth: str, grid: np.ndarray, summary: Summary
    ) -> None:
        with atomic_write(self._summary_path(spec, volume, image, truth, grid)) as file:
            np.savez(file, **summary.to_dict())
