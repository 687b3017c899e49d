"""The record every adapter produces, and the error every bad input raises.

Axis convention (DESIGN.md): ``image[c, d, h, w]`` with D the axial (slice) axis, so the
slice-wise baselines' axial slices are ``image[:, d]``. ``affine`` maps voxel indices
(d, h, w) of the array *as stored* (after reorientation and cropping) to world
coordinates in millimetres, RAS+ like NIfTI, so a heatmap of the same shape can be
written as NIfTI with it. ``spacing`` is the voxel size along (D, H, W) in mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

Box = tuple[int, int, int, int, int, int]
"""Half-open voxel box ``(d0, d1, h0, h1, w0, w1)``: ``image[:, d0:d1, h0:h1, w0:w1]``."""


class DatasetError(ValueError):
    """Bad input: the message names the data set, the file and the problem."""


@dataclass
class Volume:
    """One preprocessed sample (paper A.4), as fed to the classifier and the methods."""

    id: str
    image: np.ndarray  # float32 [C, D, H, W]; may be a read-only memmap
    label: int  # 0 negative, 1 positive
    mask: np.ndarray | None  # bool [D, H, W]; None when not annotated
    boxes: list[Box] | None  # half-open voxel boxes; None when not annotated
    affine: np.ndarray  # 4x4 voxel (d, h, w) -> world (mm, RAS+)
    spacing: tuple[float, float, float]  # (D, H, W) in mm


def relative_path(path: str | Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when inside it (for error messages), else as given."""
    path = Path(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(path)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along each array axis: the norms of the affine's first three columns."""
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def shift_affine(affine: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    """Affine of ``array[d0:, h0:, w0:]`` given the affine of ``array``."""
    moved = np.array(affine, dtype=np.float64)
    moved[:3, 3] += affine[:3, :3] @ np.asarray(offset, dtype=np.float64)
    return moved


def zscore(image: np.ndarray) -> np.ndarray:
    """Channel-wise z-normalisation of ``image[C, ...]`` (a constant channel becomes 0)."""
    axes = tuple(range(1, image.ndim))
    mean = image.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = image.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((image - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
