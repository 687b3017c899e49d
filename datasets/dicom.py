"""Reading a DICOM series (one folder of single-slice files) into a (D, H, W) array.

Slices are sorted by ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column directions), whatever the file
names or InstanceNumbers; H and W are the DICOM image rows and columns; RescaleSlope
and RescaleIntercept are applied. The affine maps (d, h, w) to RAS+ millimetres (DICOM's
LPS with x and y negated), like NIfTI's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from datasets.volume import DatasetError, relative_path

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, AttributeError, KeyError)
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def series_files(folder: Path) -> list[Path]:
    """The files of a series folder (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_header(path: Path, root: Path | None = None) -> pydicom.Dataset:
    """The DICOM header of ``path`` (pixels not read)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except _READ_ERRORS as error:
        raise DatasetError(
            f"cannot read DICOM file {relative_path(path, root)}: {error}"
        ) from error


@dataclass
class Series:
    """A sorted series: voxels, geometry and the InstanceNumber rank of every slice."""

    array: np.ndarray  # float32 (D, H, W), rescaled
    affine: np.ndarray  # 4x4, (d, h, w) -> RAS+ mm
    instance_rank: np.ndarray  # int (D,): rank (0-based) of slice d by InstanceNumber


def _tag(dataset: pydicom.Dataset, name: str, path: Path, root: Path | None):
    value = dataset.get(name)
    if value is None:
        raise DatasetError(f"{relative_path(path, root)} lacks the DICOM tag {name}")
    return value


def read_series(folder: Path, root: Path | None = None) -> Series:
    """Read every file of ``folder`` as one series, sorted along the slice normal."""
    files = series_files(folder) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"missing series: no DICOM files in {relative_path(folder, root)}")
    slices, positions, instances = [], [], []
    orientation = None
    for path in files:
        try:
            dataset = pydicom.dcmread(path)
            pixels = dataset.pixel_array
        except _READ_ERRORS as error:
            raise DatasetError(
                f"cannot read DICOM file {relative_path(path, root)}: {error}"
            ) from error
        for name in (*_GEOMETRY_TAGS, "InstanceNumber"):
            _tag(dataset, name, path, root)
        iop = np.array(dataset.ImageOrientationPatient, dtype=np.float64)
        if orientation is None:
            orientation, first = iop, dataset
        elif not np.allclose(iop, orientation, atol=1e-4):
            raise DatasetError(
                f"{relative_path(path, root)}: ImageOrientationPatient differs from the rest "
                "of the series"
            )
        if pixels.shape != (first.Rows, first.Columns):
            raise DatasetError(f"{relative_path(path, root)}: slice shape {pixels.shape} differs")
        slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels.astype(np.float32) * slope + intercept)
        positions.append(np.array(dataset.ImagePositionPatient, dtype=np.float64))
        instances.append(int(dataset.InstanceNumber))
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    along = np.array([p @ normal for p in positions])
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if len(steps) and steps.min() < 1e-3:
        raise DatasetError(
            f"{relative_path(folder, root)}: two slices at the same position (several series or "
            "phases in one folder?)"
        )
    if len(steps) and steps.max() - steps.min() > 0.01 * steps.mean():
        log.warning("%s: irregular slice spacing", relative_path(folder, root))
    spacing_rc = np.array(first.PixelSpacing, dtype=np.float64)  # (between rows, columns)
    if len(order) > 1:
        slice_step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    else:
        slice_step = normal * float(first.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = slice_step
    lps[:3, 1] = col_dir * spacing_rc[0]  # increasing row index moves along the column direction
    lps[:3, 2] = row_dir * spacing_rc[1]
    lps[:3, 3] = positions[order[0]]
    rank = np.argsort(np.argsort(np.array(instances), kind="stable"), kind="stable")
    return Series(np.stack([slices[i] for i in order]), LPS_TO_RAS @ lps, rank[order])
