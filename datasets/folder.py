"""``folder``: any data set of NIfTI files listed in a CSV (e.g. the paper's private MS set).

The CSV (``root`` itself, or ``root/<csv>``) has the columns ``id,label,image`` and
optionally ``mask``, ``split`` (train/val; empty = seeded split) and ``patient`` (for a
patient-level split of longitudinal data; default: the id). ``image`` holds one path per
channel joined by ``;`` (the MS set stacks 5 sequences, A.4); paths are relative to the
CSV's folder. Labels must be 0 or 1. Option ``zscore``: channel-wise z-normalisation of
each volume (A.4, MS and Duke); otherwise intensities are kept as stored. Masks hold 0
and 1 (anything else is an error) unless ``mask_threshold=T`` reads them as value > T.
A row labelled 0 whose mask marks voxels is an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datasets.base import SPLITS, Record, VolumeDataset, channel_names
from datasets.nifti import check_same_grid, nifti_geometry, read_nifti
from datasets.registry import register_dataset
from datasets.volume import DatasetError, Volume, relative_path, spacing_of, zscore

REQUIRED = ("id", "label", "image")
OPTIONAL = ("mask", "split", "patient")


@register_dataset("folder", annotation="mask", files=True)
class Folder(VolumeDataset):
    """NIfTI files + CSV; options ``csv`` (file name under ``root``, default
    ``dataset.csv``), ``channels`` (names), ``zscore``, ``mask_threshold``, plus
    ``cache_dir``, ``seed``, ``val_fraction``, ``max_abs``."""

    version = "1"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        csv: str = "dataset.csv",
        channels: tuple[str, ...] | None = None,
        zscore: bool = False,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        max_abs: float = 1e6,
        mask_threshold: float | None = None,
    ):
        self.csv_name = csv
        self.channel_option = tuple(channels) if channels is not None else None
        self.zscore = bool(zscore)
        super().__init__(
            root,
            cache_dir=cache_dir,
            seed=seed,
            val_fraction=val_fraction,
            max_abs=max_abs,
            mask_threshold=mask_threshold,
        )

    @property
    def csv_path(self) -> Path:
        return self.root if self.root.is_file() else self.root / self.csv_name

    def options(self) -> dict:
        return {**super().options(), "csv": self.csv_name, "zscore": self.zscore}

    def _scan(self) -> list[Record]:
        path = self.csv_path
        folder = path.parent
        if not path.is_file():
            raise DatasetError(f"missing file {path} (the CSV listing id,label,image)")
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise DatasetError(f"{path.name} lacks the column(s) {', '.join(missing)}")
            rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        records = []
        n_channels = None
        for line, row in enumerate(rows, start=2):
            where = f"{path.name} line {line} (id {row['id']!r})"
            if row["label"] not in ("0", "1"):
                raise DatasetError(f"{where}: label {row['label']!r} is not 0 or 1")
            if row.get("split") and row["split"] not in SPLITS:
                raise DatasetError(f"{where}: split {row['split']!r} is not train or val")
            images = [folder / p.strip() for p in row["image"].split(";") if p.strip()]
            mask = folder / row["mask"] if row.get("mask") else None
            for file in [*images, *([mask] if mask else [])]:
                if not file.is_file():
                    raise DatasetError(f"{where}: missing file {relative_path(file, folder)}")
            if n_channels is None:
                n_channels = len(images)
            elif len(images) != n_channels:
                raise DatasetError(f"{where}: {len(images)} image channels, expected {n_channels}")
            records.append(
                Record(
                    id=row["id"],
                    label=int(row["label"]),
                    patient=row.get("patient") or row["id"],
                    annotated=mask is not None,
                    split=row.get("split") or None,
                    source=(images, mask),
                )
            )
        if n_channels is not None:
            names = self.channel_option or channel_names(n_channels)
            if len(names) != n_channels:
                raise DatasetError(f"{len(names)} channel names given for {n_channels} channels")
            self.channels = names
        return records

    def _load(self, record: Record) -> Volume:
        images, mask_path = record.source
        folder = self.csv_path.parent
        first, affine = read_nifti(images[0], folder)
        arrays = [first]
        for path in images[1:]:
            array, other = read_nifti(path, folder)
            check_same_grid((first, affine, images[0]), (array, other, path), folder)
            arrays.append(array)
        image = np.stack(arrays)
        if self.zscore:
            image = zscore(image)
        mask = None
        if mask_path is not None:
            mask, mask_affine = read_nifti(
                mask_path, folder, binary=True, threshold=self.mask_threshold
            )
            check_same_grid((first, affine, images[0]), (mask, mask_affine, mask_path), folder)
        return Volume(record.id, image, record.label, mask, None, affine, spacing_of(affine))

    def _header(self, record: Record):
        return nifti_geometry(record.source[0][0], self.csv_path.parent)

    def _image_files(self, record: Record) -> list[Path]:
        return list(record.source[0])

    def _truth_file(self, record: Record) -> Path | None:
        return record.source[1]
