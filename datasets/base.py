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
  in memory. An entry follows the content of the files it was read from (``_sources``)
  and of the sample's index record; its arrays are hashed before they are first served
  and a damaged entry is rebuilt, never served: the rule and its one blind spot are in
  ``datasets.cache``;
- every loaded sample is checked (``datasets.checks``: finite values within
  ``max_abs``, no annotation on a negative); ``verify(id)`` reads every voxel and
  returns a :class:`SampleCheck`; ``fingerprint(id)`` and ``truth_fingerprint(id)`` are
  content hashes for downstream caches (``datasets.content``);
- options are converted to the types annotated on the adapter's ``__init__`` by
  :func:`check_options`;
- errors raised by an adapter are prefixed with the data set name.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import re
import typing
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasets.cache import FORMAT, CacheEntry, DamagedEntry, changed_source, stamp
from datasets.checks import SampleCheck, check_truth, check_values, empty_truth
from datasets.content import image_fingerprint, truth_fingerprint
from datasets.volume import DatasetError, Volume, relative_path
from foundation.io import cache_root
from foundation.registry import convert_value, natural_key

log = logging.getLogger(__name__)

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


Share = float | tuple[int, int]  # a fraction of a class's samples, or a count (n, of)


def val_target(share: Share, samples: int) -> int:
    """Validation samples of a class that has ``samples``: ``round(f * samples)`` for a
    fraction f; for a count ``(n, of)`` (paper Table 3: n of a release's ``of``), n on a data
    set of ``of`` samples or more and the same share of a smaller one:
    ``min(n, round(n * samples / of))``."""
    if isinstance(share, tuple):
        count, of = share
        return min(count, round(count * samples / of))
    return round(share * samples)


def assign_splits(
    records: list[Record], val_fraction: Share | dict[int, Share], seed: int
) -> list[Record]:
    """Give every record without a split one, patient by patient, seeded.

    ``val_fraction`` sets how many samples of each class go to val (:func:`val_target`;
    one share for both classes, or {label: share}): T_c of the S_c samples of class c
    outside fixed splits, at least 1 and at most S_c - 1 when the share is > 0 and
    S_c >= 2. Patients are stratified by their label (positive if any of their samples
    is) and shuffled with ``seed``; patients of one composition (their numbers of
    positive and negative samples) are taken in that order, as many as
    :func:`allocate_patients` gives the composition. With one sample per patient this is
    the first T_c patients of each shuffled stratum; with several, the counts are exact
    whenever the compositions allow it (logged when not).
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
    shares = val_fraction if isinstance(val_fraction, dict) else dict.fromkeys((0, 1), val_fraction)
    kind = {}  # patient -> composition (positive, negative samples)
    for p in (p for names in strata.values() for p in names):
        positives = sum(r.label for r in patients[p])
        kind[p] = (positives, len(patients[p]) - positives)
    targets = []
    for label, column in ((1, 0), (0, 1)):
        samples = sum(k[column] for k in kind.values())
        target = val_target(shares[label], samples)
        share = shares[label][0] if isinstance(shares[label], tuple) else shares[label]
        if share > 0 and samples >= 2:
            target = min(max(target, 1), samples - 1)
        targets.append(target)
    sizes = dict(Counter(kind.values()))
    take = allocate_patients(sizes, (targets[0], targets[1]))
    got = [sum(n * k[i] for k, n in take.items()) for i in (0, 1)]
    if got != targets:
        log.info(
            "val: %d positive + %d negative samples (asked %d + %d): the patients' "
            "compositions allow no closer split",
            *got,
            *targets,
        )
    rng = np.random.default_rng(seed)
    taken = dict.fromkeys(sizes, 0)
    for names in strata.values():
        names.sort(key=natural_key)
        for index in rng.permutation(len(names)):
            k = kind[names[index]]
            split = "val" if taken[k] < take[k] else "train"
            taken[k] += split == "val"
            for r in patients[names[index]]:
                r.split = split
    return records


def allocate_patients(
    sizes: dict[tuple[int, int], int], targets: tuple[int, int]
) -> dict[tuple[int, int], int]:
    """How many patients of each composition (positive, negative samples) -> count go to
    val for it to hold ``targets`` = (positive, negative) samples.

    Each multi-sample composition gets its proportional share (rounded), the
    single-sample ones (1, 0) and (0, 1) the rest; then, while one patient more or less
    of a composition brings the totals closer to the targets, the best such move is made.
    """
    totals = [sum(n * k[i] for k, n in sizes.items()) for i in (0, 1)]
    rate = [t / s if s else 0.0 for t, s in zip(targets, totals, strict=True)]
    take = dict.fromkeys(sizes, 0)
    for k, n in sizes.items():
        if sum(k) > 1:
            take[k] = min(n, round(n * (k[0] * rate[0] + k[1] * rate[1]) / sum(k)))
    for i, single in enumerate(((1, 0), (0, 1))):
        if single in sizes:
            have = sum(n * k[i] for k, n in take.items() if k != single)
            take[single] = min(sizes[single], max(0, targets[i] - have))
    miss = [targets[i] - sum(n * k[i] for k, n in take.items()) for i in (0, 1)]
    while any(miss):
        moves = [
            (abs(miss[0] - step * k[0]) + abs(miss[1] - step * k[1]), k, step)
            for k in sorted(sizes)
            for step in (1, -1)
            if 0 <= take[k] + step <= sizes[k]
        ]
        best = min(moves, default=None, key=lambda move: move[0])
        if best is None or best[0] >= abs(miss[0]) + abs(miss[1]):
            break
        _, k, step = best
        take[k] += step
        miss = [miss[0] - step * k[0], miss[1] - step * k[1]]
    return take


def check_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` converted to the types annotated on ``cls.__init__``.

    Raise a DatasetError naming the options ``cls`` does not take (and those it does),
    or an option whose value cannot be read as its type.
    """
    types = _init_options(cls)
    unknown = sorted(set(options) - set(types) - {"root"})
    if unknown:
        known = ", ".join(p for p in types if p != "root")
        raise DatasetError(f"{cls.name}: unknown option(s) {', '.join(unknown)}; options: {known}")
    converted = {}
    for key, value in options.items():
        try:
            converted[key] = convert_value(value, types.get(key, Any), f"option {key}")
        except ValueError as error:
            raise DatasetError(f"{cls.name}: {error}") from None
    return converted


def _init_options(cls: type) -> dict[str, Any]:
    """The keyword options ``cls.__init__`` takes and their annotations, following
    ``**options`` up the class chain (``synthetic_pet`` passes ``synthetic``'s on)."""
    options: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        try:
            hints = typing.get_type_hints(klass.__init__)
        except (NameError, TypeError):  # an annotation that cannot be resolved: keep values
            hints = {}
        for name, parameter in list(parameters.items())[1:]:  # self
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                options.setdefault(name, hints.get(name, Any))
        if all(p.kind is not p.VAR_KEYWORD for p in parameters.values()):
            return options
    return options


def channel_names(n: int) -> tuple[str, ...]:
    """Default channel names: ``("image",)`` for one channel, else ``("ch0", "ch1", ...)``."""
    return ("image",) if n == 1 else tuple(f"ch{c}" for c in range(n))


def safe_stem(sample_id: str) -> str:
    """A file name for ``sample_id``: itself when harmless, else sanitised + hash, never
    hidden (a leading "." becomes "_": tools and ``evaluate`` skip hidden files)."""
    if _SAFE.match(sample_id) and len(sample_id) <= 120:
        return sample_id
    digest = hashlib.sha1(sample_id.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)[:100]
    return f"{re.sub(r'^[.]', '_', stem)}-{digest}"


class VolumeDataset(ABC):
    """A data set of :class:`Volume` s; subclass it and register with ``register_dataset``.

    Mapping-like: ``ds[id]`` (or ``ds[i]``, the i-th id) is a preprocessed Volume,
    ``len(ds)`` and ``iter(ds)`` go over ids; ``ds.ids("val")`` lists a split.
    """

    name: str = ""  # set by register_dataset
    version: str = "1"  # bump when preprocessing changes: part of the cache key
    channels: tuple[str, ...] = ("image",)
    intensity_channel: str | None = None  # the ``intensity`` baseline's; None: the first
    annotation: str = "mask"  # "mask" or "boxes"
    cached: bool = True  # False: _load is cheap enough to run every time
    needs_root: bool = True  # False: generated in code
    # The paper's split (Table 3), the default when ``val_fraction`` is None:
    # {label: (validation samples, of samples)}, see :func:`val_target`.
    paper_split: dict[int, tuple[int, int]] | None = None

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        val_fraction: float | None = 0.1,
        max_abs: float = 1e6,
        mask_threshold: float | None = None,
    ):
        if val_fraction is None and self.paper_split is None:
            raise DatasetError(f"{self.name}: val_fraction is needed (no paper split)")
        if val_fraction is not None and not 0 <= val_fraction < 1:
            raise DatasetError(f"{self.name}: val_fraction must be in [0, 1), got {val_fraction}")
        if not max_abs > 0:
            raise DatasetError(f"{self.name}: max_abs must be > 0, got {max_abs}")
        self.max_abs = float(max_abs)
        self.mask_threshold = None if mask_threshold is None else float(mask_threshold)
        self._checks: dict[str, SampleCheck] = {}  # uncached adapters: verify, memoised
        self._digests: dict[str, tuple[str, str]] = {}  # uncached: fingerprints, memoised
        self._hashed: dict[str, tuple] = {}  # cached: arrays found matching, by file stats
        if root is None and self.needs_root:
            raise DatasetError(f"{self.name}: no root given: pass the data set's folder (--root)")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and not self.root.exists():
            raise DatasetError(f"{self.name}: root {self.root} does not exist")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
        self.seed = seed
        self.val_fraction = val_fraction
        records = self._named_errors(self._scan)
        if not records:
            raise DatasetError(f"{self.name}: no samples found under {self.root}")
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise DatasetError(f"{self.name}: sample id {duplicate!r} appears twice")
        share = self.paper_split if val_fraction is None else val_fraction
        records = self._named_errors(assign_splits, records, share, seed)
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

    def _image_files(self, record: Record) -> list[Path]:
        """The files (or DICOM series folders) of the image channels, one per channel
        when they are separate; named in error messages. Default: none (the id is)."""
        return []

    def _truth_file(self, record: Record) -> Path | None:
        """The file the annotation comes from (mask, box table); named in messages."""
        return None

    def _sources(self, record: Record) -> list[Path]:
        """Every file the sample's arrays are read from: the cache entry follows them.

        Default: the image files, the truth file and every Path inside
        ``record.source``, a folder standing for every file below it. Override when a
        sample reads files not listed there. Index files (CSV, tables) need not be
        listed: what they say about the sample is in its Record, which the cache entry
        also compares, so editing one row recomputes that sample only.
        """
        paths = [*self._image_files(record), self._truth_file(record), *_paths_in(record.source)]
        files = []
        for path in dict.fromkeys(p for p in paths if p is not None):
            files += sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        return files

    def options(self) -> dict[str, Any]:
        """Everything that changes the preprocessed arrays (the cache key); extend it."""
        return {
            "root": str(self.root.resolve()) if self.root is not None else None,
            "max_abs": self.max_abs,
            "mask_threshold": self.mask_threshold,
        }

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
            return self._named_errors(self._loaded, record)
        return self._open(record)[2]

    def volumes(self, split: str | None = None) -> Iterator[Volume]:
        """Volumes of ``split``, one at a time."""
        for sample_id in self.ids(split):
            yield self[sample_id]

    def geometry(self, sample_id: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(D, H, W) shape and spacing: from the cache if there, else from file headers."""
        record = self.record(sample_id)
        if self.cached:
            entry, sources = self._entry(record), self._sources(record)
            meta = self._valid_meta(entry, record, sources, locked=False)
            if meta is not None:
                return tuple(meta["shape"][1:]), tuple(meta["spacing"])
        return self._named_errors(self._header, record)

    @property
    def cache_path(self) -> Path:
        """``<cache_dir>/<adapter>/<version>-<hash of options>``."""
        key = json.dumps(self.options(), sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        return self.cache_dir / self.name / f"{self.version}-{digest}"

    # -- content: fingerprints and verification --------------------------------------

    def fingerprint(self, sample_id: str) -> str:
        """sha256 (hex) of the preprocessed image (dtype, shape, bytes): what the
        classifier and the methods see. From the cache entry's JSON when cached."""
        return self._fingerprints(self.record(sample_id))[0]

    def truth_fingerprint(self, sample_id: str) -> str:
        """sha256 (hex) of the label and the preprocessed annotation (mask, boxes or none)."""
        return self._fingerprints(self.record(sample_id))[1]

    def verify(self, sample_id: str) -> SampleCheck:
        """Read every voxel of the preprocessed sample, check it, and say what it holds.

        Cached adapters: the result is stored in the entry, so verifying an unchanged
        entry again reads no voxel (reading the arrays hashes them, see :meth:`_open`).
        Uncached adapters: memoised in the process. Raises DatasetError for a bad sample.
        """
        record = self.record(sample_id)
        return self._verify_cached(record) if self.cached else self._verify_uncached(record)

    def _verify_uncached(self, record: Record) -> SampleCheck:
        if record.id not in self._checks:
            volume = self._named_errors(self._loaded, record)
            self._checks[record.id] = _sample_check(volume, *self._digest(volume))
        return self._checks[record.id]

    def _verify_cached(self, record: Record) -> SampleCheck:
        entry = self._entry(record)
        known = _known_check(record, self._ready(entry, record))
        if known is not None:
            return known
        with entry.lock():  # the entry as it is now, while no other process changes it
            entry, meta, volume = self._open(record)  # its arrays hashed (_checked)
            known = _known_check(record, meta)  # verified by another process meanwhile
            if known is not None:
                return known
            self._named_errors(self._check, volume, record)
            check = _sample_check(volume, meta["fingerprint"], meta["truth_fingerprint"])
            meta["verified"] = {
                "fingerprint": check.fingerprint,
                "truth_fingerprint": check.truth_fingerprint,
                "empty_truth": check.empty_truth,
            }
            entry.save_meta(meta)
            return check

    def _fingerprints(self, record: Record) -> tuple[str, str]:
        if self.cached:
            meta = self._ready(self._entry(record), record)
            return meta["fingerprint"], meta["truth_fingerprint"]
        if record.id not in self._digests:
            self._digests[record.id] = self._digest(self._named_errors(self._loaded, record))
        return self._digests[record.id]

    @staticmethod
    def _digest(volume: Volume) -> tuple[str, str]:
        return (
            image_fingerprint(volume.image),
            truth_fingerprint(volume.label, volume.mask, volume.boxes),
        )

    # -- loading and checking ----------------------------------------------------------

    def _loaded(self, record: Record) -> Volume:
        """``_load`` then the checks of ``datasets.checks`` (messages name the files)."""
        volume = self._load(record)
        self._check(volume, record)
        return volume

    def _check(self, volume: Volume, record: Record) -> None:
        files = [self._shown(p) for p in self._image_files(record)]
        n = volume.image.shape[0]
        names = files if len(files) == n else [files[0]] * n if len(files) == 1 else []
        check_values(volume.image, names or [record.id] * n, self.max_abs)
        truth = self._truth_file(record)
        check_truth(volume, self._shown(truth) if truth is not None else None)

    def _shown(self, path: Path) -> str:
        """``path`` relative to the data set's folder, for messages."""
        if self.root is None:
            return str(path)
        return relative_path(path, self.root if self.root.is_dir() else self.root.parent)

    # -- the cache (rules in datasets.cache) -------------------------------------------

    def _entry(self, record: Record) -> CacheEntry:
        return CacheEntry(self.cache_path / safe_stem(record.id))

    def _open(self, record: Record) -> tuple[CacheEntry, dict[str, Any], Volume]:
        """The sample's valid entry (rebuilt if stale or damaged) and its Volume, whose
        arrays hash to the entry's fingerprints (:meth:`_checked`)."""
        entry = self._entry(record)
        meta = self._ready(entry, record)
        with contextlib.suppress(DamagedEntry):  # else replaced since, or damaged: locked
            return entry, meta, self._checked(entry, meta, record)
        with entry.lock():
            meta = self._ready(entry, record)
            try:
                return entry, meta, self._checked(entry, meta, record)
            except DamagedEntry as damage:
                self._discard(entry, damage)
            meta = self._rebuild(entry, record, self._sources(record))
            try:
                return entry, meta, self._checked(entry, meta, record)
            except DamagedEntry as damage:
                raise DatasetError(f"{self.name}: {damage} right after rebuilding it") from None

    def _ready(self, entry: CacheEntry, record: Record) -> dict[str, Any]:
        """The entry's JSON once the entry is valid, rebuilding it (under its lock) if needed."""
        sources = self._sources(record)
        meta = self._valid_meta(entry, record, sources, locked=False)
        if meta is not None:
            return meta
        with entry.lock():
            meta = self._valid_meta(entry, record, sources)
            return meta if meta is not None else self._rebuild(entry, record, sources)

    def _fields(self, record: Record, sources: list[Path]) -> dict[str, Any]:
        """What of the record the cached arrays depend on (compared on every read)."""
        return json.loads(
            json.dumps(
                {
                    "id": record.id,
                    "label": record.label,
                    "annotated": record.annotated,
                    "source": record.source,
                    "sources": [str(p) for p in sources],
                },
                default=str,
            )
        )

    def _valid_meta(
        self, entry: CacheEntry, record: Record, sources: list[Path], *, locked: bool = True
    ) -> dict[str, Any] | None:
        """The entry's JSON if the entry may be served, else None. Under the entry's lock
        (``locked``) logged, see ``datasets.cache``: damaged -> WARNING and deleted, stale
        -> INFO, new mtimes stored; without it, None says only "look again under the lock"
        (another process may be writing the entry) and nothing is logged or changed."""
        try:
            meta = entry.read_meta()
            if meta is None:
                return None
            entry.check_files(meta)
        except DamagedEntry as damage:
            if locked:
                self._discard(entry, damage)
            return None
        fields = self._fields(record, sources)
        if not locked:
            unchanged = meta.get("format") == FORMAT and meta["fields"] == fields
            return meta if unchanged and changed_source(meta["sources"]) == (None, False) else None
        if meta.get("format") != FORMAT or meta["fields"] != fields:
            changed = sorted(k for k in fields if meta["fields"].get(k) != fields[k])
            log.info(
                "%s: %s: its index record changed (%s); recomputing its cached volume",
                self.name,
                record.id,
                ", ".join(changed) or "cache format",
            )
            return None
        reason, refreshed = changed_source(meta["sources"])
        if reason is not None:
            log.info("%s: %s: %s; recomputing its cached volume", self.name, record.id, reason)
            return None
        if refreshed:
            entry.save_meta(meta)
        return meta

    def _rebuild(self, entry: CacheEntry, record: Record, sources: list[Path]) -> dict[str, Any]:
        """Load, check and write the sample's entry; its JSON."""
        entry.delete()
        stamps = self._named_errors(lambda: [stamp(p) for p in sources])
        volume = self._named_errors(self._loaded, record)
        return entry.write(volume, self._fields(record, sources), stamps, self.options())

    def _discard(self, entry: CacheEntry, damage: DamagedEntry) -> None:
        log.warning("%s: damaged cache entry: %s; deleting and rebuilding it", self.name, damage)
        entry.delete()

    def _checked(self, entry: CacheEntry, meta: dict[str, Any], record: Record) -> Volume:
        """The entry's Volume once its arrays hash to the entry's fingerprints: hashed on
        the first read by this object and again whenever an array file's inode, size or
        mtime changes (DamagedEntry when they do not match)."""
        volume = self._volume(entry, meta, record)
        stats = [entry.array_path(name).stat() for name in meta["arrays"]]
        key = (meta["fingerprint"], meta["truth_fingerprint"])
        key += tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)
        if self._hashed.get(record.id) != key:
            entry.check_content(meta, volume)
            self._hashed[record.id] = key
        return volume

    def _volume(self, entry: CacheEntry, meta: dict[str, Any], record: Record) -> Volume:
        """The Volume of a valid entry, arrays memory-mapped (DamagedEntry if unreadable)."""
        boxes = meta["boxes"]
        return Volume(
            id=record.id,
            image=entry.open("image", meta),
            label=record.label,
            mask=entry.open("mask", meta) if "mask" in meta["arrays"] else None,
            boxes=None if boxes is None else [tuple(b) for b in boxes],
            affine=np.array(meta["affine"]),
            spacing=tuple(meta["spacing"]),
        )

    # -- validation -----------------------------------------------------------------

    def _named_errors(self, function, *args):
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


def _paths_in(source: Any) -> list[Path]:
    """Every Path inside ``source`` (nested tuples, lists, dict values), in order."""
    if isinstance(source, Path):
        return [source]
    if isinstance(source, dict):
        source = list(source.values())
    if isinstance(source, (list, tuple)):
        return [p for item in source for p in _paths_in(item)]
    return []


def _sample_check(volume: Volume, fingerprint: str, truth: str) -> SampleCheck:
    shape = tuple(volume.image.shape)
    return SampleCheck(volume.id, shape, fingerprint, truth, empty_truth(volume))


def _known_check(record: Record, meta: dict[str, Any]) -> SampleCheck | None:
    """The check stored by an earlier ``verify`` of this very content, if any."""
    done = meta.get("verified")
    digests = (meta["fingerprint"], meta["truth_fingerprint"])
    if not isinstance(done, dict) or "empty_truth" not in done:
        return None
    if (done.get("fingerprint"), done.get("truth_fingerprint")) != digests:
        return None
    return SampleCheck(record.id, tuple(meta["shape"]), *digests, bool(done["empty_truth"]))
