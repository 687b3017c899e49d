"""The base class of every adapter: index, patient-level split, lazy cached loading.

An adapter does two things: ``_scan()`` lists its samples as :class:`Record` s (ids,
labels, patients, paths: cheap, no image is read) and ``_load(record)`` reads one sample
and applies the paper's preprocessing (A.4). Everything else lives here:

- the train/val split, at patient level and seeded (stratified by patient label), unless
  the data set fixes it (a CSV ``split`` column, MosMed's masked studies);
- a data set without positives or without negatives fails at construction;
- ``dataset[id]`` loads lazily; preprocessed volumes are cached on disk as ``.npy``
  under ``<cache_dir>/<adapter>/<version>-<hash of options>/``, written atomically and
  read back memory-mapped, so a second pass reads the cache and 1,000 volumes never sit
  in memory;
- errors raised by an adapter are prefixed with the data set name.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.io import atomic_save_json, atomic_save_npy, cache_root
from benchmark.registry import natural_key
from datasets.volume import DatasetError, Volume

SPLITS = ("train", "val")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Record:
    """One sample as indexed by ``_scan``: everything but the voxels."""

    id: str
    label: int
    patient: str
    annotated: bool  # a mask (or boxes) comes with the volume
    split: str | None = None  # fixed by the data set; None = seeded split
    source: Any = None  # adapter-specific: paths, series, ...


def assign_splits(records: list[Record], val_fraction: float, seed: int) -> list[Record]:
    """Give every record without a split one, patient by patient, seeded.

    Patients are stratified by their label (positive if any of their samples is); in
    each stratum ``round(val_fraction * n)`` patients, shuffled with ``seed``, go to val
    (at least one when ``val_fraction > 0`` and the stratum has two patients or more).
    A patient with a fixed split takes all its samples there.
    """
    patients: dict[str, list[Record]] = {}
    for record in records:
        patients.setdefault(record.patient, []).append(record)
    strata: dict[int, list[str]] = {0: [], 1: []}
    for patient, group in patients.items():
        fixed = {r.split for r in group if r.split is not None}
        if len(fixed) > 1:
            raise DatasetError(f"patient {patient!r} has samples fixed in both train and val")
        if fixed:
            (split,) = fixed
            for r in group:
                r.split = split
        else:
            strata[max(r.label for r in group)].append(patient)
    rng = np.random.default_rng(seed)
    for names in strata.values():
        names.sort(key=natural_key)
        order = rng.permutation(len(names))
        n_val = round(val_fraction * len(names))
        if val_fraction > 0 and len(names) >= 2:
            n_val = min(max(n_val, 1), len(names) - 1)
        for rank, index in enumerate(order):
            for r in patients[names[index]]:
                r.split = "val" if rank < n_val else "train"
    return records


def check_options(cls: type, options: dict[str, Any]) -> None:
    """Raise a DatasetError naming the options ``cls`` does not take, and those it does."""
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(parameters) - {"root"})
    if unknown:
        known = ", ".join(p for p in parameters if p != "root")
        raise DatasetError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; options: {known}")


def channel_names(n: int) -> tuple[str, ...]:
    """Default channel names: ``("image",)`` for one channel, else ``("ch0", "ch1", ...)``."""
    return ("image",) if n == 1 else tuple(f"ch{c}" for c in range(n))


def safe_stem(sample_id: str) -> str:
    """A file name for ``sample_id``: itself when harmless, else sanitised + hash."""
    if _SAFE.match(sample_id) and len(sample_id) <= 120:
        return sample_id
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', sample_id)[:100]}-{digest}"


class VolumeDataset(ABC):
    """A data set of :class:`Volume` s; subclass it and register with ``register_dataset``.

    Mapping-like: ``ds[id]`` (or ``ds[i]``, the i-th id) is a preprocessed Volume,
    ``len(ds)`` and ``iter(ds)`` go over ids; ``ds.ids("val")`` lists a split.
    """

    name: str = ""  # set by register_dataset
    version: str = "1"  # bump when preprocessing changes: part of the cache key
    channels: tuple[str, ...] = ("image",)
    annotation: str = "mask"  # "mask" or "boxes"
    cached: bool = True  # False: _load is cheap enough to run every time
    needs_root: bool = True  # False: generated in code

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
    ):
        if not 0 <= val_fraction < 1:
            raise DatasetError(f"{self.name}: val_fraction must be in [0, 1), got {val_fraction}")
        if root is None and self.needs_root:
            raise DatasetError(f"{self.name}: no root given: pass the data set's folder (--root)")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and not self.root.exists():
            raise DatasetError(f"{self.name}: root {self.root} does not exist")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self.seed = seed
        self.val_fraction = val_fraction
        records = self._checked(self._scan)
        if not records:
            raise DatasetError(f"{self.name}: no samples found under {self.root}")
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise DatasetError(f"{self.name}: sample id {duplicate!r} appears twice")
        records = self._checked(assign_splits, records, val_fraction, seed)
        self._records = {r.id: r for r in sorted(records, key=lambda r: natural_key(r.id))}
        self._check_classes()

    # -- what an adapter implements -------------------------------------------------

    @abstractmethod
    def _scan(self) -> list[Record]:
        """Index the data set: one Record per sample, without reading voxels."""

    @abstractmethod
    def _load(self, record: Record) -> Volume:
        """Read and preprocess one sample (uncached)."""

    def _header(self, record: Record) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(D, H, W) shape and spacing, from file headers where possible."""
        volume = self._load(record)
        return tuple(volume.image.shape[1:]), volume.spacing

    def options(self) -> dict[str, Any]:
        """Everything that changes the preprocessed arrays (the cache key); extend it."""
        return {"root": str(self.root.resolve()) if self.root is not None else None}

    # -- index ----------------------------------------------------------------------

    def ids(self, split: str | None = None) -> list[str]:
        """Sample ids of ``split`` ("train", "val"; None = all), naturally sorted."""
        if split is None:
            return list(self._records)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        return [i for i, r in self._records.items() if r.split == split]

    def record(self, sample_id: str) -> Record:
        try:
            return self._records[sample_id]
        except KeyError:
            raise KeyError(f"{self.name}: no sample {sample_id!r}") from None

    def label(self, sample_id: str) -> int:
        """0/1 label, from the index (no image is read)."""
        return self.record(sample_id).label

    def has_annotation(self, sample_id: str) -> bool:
        """Whether the Volume comes with a mask (or boxes)."""
        return self.record(sample_id).annotated

    def split(self, sample_id: str) -> str:
        return self.record(sample_id).split

    def patient(self, sample_id: str) -> str:
        return self.record(sample_id).patient

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._records

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} root={self.root} n={len(self)}>"

    def counts(self) -> dict[str, dict[str, int]]:
        """Samples per split and class (paper Table 3), annotated samples, patients."""
        table = {}
        for split in (*SPLITS, "all"):
            records = [r for r in self._records.values() if split in (r.split, "all")]
            table[split] = {
                "positive": sum(r.label == 1 for r in records),
                "negative": sum(r.label == 0 for r in records),
                "annotated": sum(r.annotated for r in records),
                "patients": len({r.patient for r in records}),
            }
        return table

    # -- volumes --------------------------------------------------------------------

    def __getitem__(self, key: str | int) -> Volume:
        record = self.record(self.ids()[key] if isinstance(key, int) else key)
        if not self.cached:
            return self._checked(self._load, record)
        stem = self.cache_path / safe_stem(record.id)
        meta_path = Path(f"{stem}.json")
        if not meta_path.exists():
            self._write_cache(stem, self._checked(self._load, record))
        return self._read_cache(stem, record)

    def volumes(self, split: str | None = None) -> Iterator[Volume]:
        """Volumes of ``split``, one at a time."""
        for sample_id in self.ids(split):
            yield self[sample_id]

    def geometry(self, sample_id: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(D, H, W) shape and spacing: from the cache if there, else from file headers."""
        record = self.record(sample_id)
        meta_path = Path(f"{self.cache_path / safe_stem(record.id)}.json")
        if self.cached and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            return tuple(meta["shape"][1:]), tuple(meta["spacing"])
        return self._checked(self._header, record)

    @property
    def cache_path(self) -> Path:
        """``<cache_dir>/<adapter>/<version>-<hash of options>``."""
        key = json.dumps(self.options(), sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return self.cache_dir / self.name / f"{self.version}-{digest}"

    def _write_cache(self, stem: Path, volume: Volume) -> None:
        atomic_save_npy(f"{stem}.image.npy", volume.image.astype(np.float32, copy=False))
        if volume.mask is not None:
            atomic_save_npy(f"{stem}.mask.npy", volume.mask.astype(bool, copy=False))
        meta = {
            "id": volume.id,
            "shape": list(volume.image.shape),
            "mask": volume.mask is not None,
            "boxes": None if volume.boxes is None else [list(b) for b in volume.boxes],
            "affine": np.asarray(volume.affine).tolist(),
            "spacing": list(volume.spacing),
            "options": self.options(),
        }
        atomic_save_json(f"{stem}.json", meta)  # last: its presence marks a complete entry

    def _read_cache(self, stem: Path, record: Record) -> Volume:
        meta = json.loads(Path(f"{stem}.json").read_text())
        boxes = meta["boxes"]
        return Volume(
            id=record.id,
            image=np.load(f"{stem}.image.npy", mmap_mode="r"),
            label=record.label,
            mask=np.load(f"{stem}.mask.npy", mmap_mode="r") if meta["mask"] else None,
            boxes=None if boxes is None else [tuple(b) for b in boxes],
            affine=np.array(meta["affine"]),
            spacing=tuple(meta["spacing"]),
        )

    # -- validation -----------------------------------------------------------------

    def _checked(self, function, *args):
        """Call ``function``; prefix a DatasetError's message with the data set name."""
        try:
            return function(*args)
        except DatasetError as error:
            message = str(error)
            if message.startswith(f"{self.name}: "):
                raise
            raise DatasetError(f"{self.name}: {message}") from error

    def _check_classes(self) -> None:
        where = f"{self.name}: {self.root}" if self.root is not None else self.name
        for split in (None, *SPLITS):
            labels = [self._records[i].label for i in self.ids(split)]
            if split is not None and not labels:
                continue
            scope = "data set" if split is None else f"split {split!r}"
            for label, kind in ((1, "positive"), (0, "negative")):
                if label not in labels:
                    raise DatasetError(
                        f"{where}: the {scope} has no {kind} samples "
                        f"({len(labels)} samples, all labelled {1 - label}); "
                        "weak supervision needs both classes"
                    )
