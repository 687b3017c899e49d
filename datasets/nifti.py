"""Reading NIfTI files into the benchmark's orientation, with boundary checks.

Orientation: whatever the file's voxel order, arrays come out as (D, H, W) with axis
codes ("S", "P", "L") in nibabel's terms: D runs inferior -> superior (the axial axis),
H anterior -> posterior and W right -> left, so ``image[:, d]`` is an axial slice relative_path
the radiological way (anterior up, patient's right on the left), like a DICOM axial
image. The reordering uses nibabel's orientation tools (``io_orientation``,
``ornt_transform``) and the returned affine is the file's affine composed with it, so
it maps the returned array's indices to the same world points.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations

from datasets.volume import DatasetError, relative_path

AXCODES = ("S", "P", "L")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


def _open(path: Path, root: Path | None) -> nib.Nifti1Image:
    if not path.is_file():
        raise DatasetError(f"missing file {relative_path(path, root)}")
    try:
        image = nib.load(path)
    except _READ_ERRORS as error:
        raise DatasetError(f"cannot read {relative_path(path, root)}: {error}") from error
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise DatasetError(f"{relative_path(path, root)} is not a 3D image (shape {image.shape})")
    return image


def _transform(image: nib.Nifti1Image) -> np.ndarray:
    """The orientation transform from the file's voxel axes to (D, H, W)."""
    start = orientations.io_orientation(image.affine)
    return orientations.ornt_transform(start, orientations.axcodes2ornt(AXCODES))


def read_nifti(
    path: Path,
    root: Path | None = None,
    *,
    binary: bool = False,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(array (D, H, W), affine); float32 with finite values checked, or bool if ``binary``
    (a mask: see :func:`binarise` for ``threshold``).

    ``root`` only shortens the file names in error messages.
    """
    image = _open(path, root)
    transform = _transform(image)
    try:
        data = np.asanyarray(image.dataobj) if binary else image.get_fdata(dtype=np.float32)
    except _READ_ERRORS as error:
        raise DatasetError(
            f"cannot read {relative_path(path, root)} (truncated?): {error}"
        ) from error
    data = orientations.apply_orientation(data, transform)
    if binary:
        data = binarise(data, relative_path(path, root), threshold)
    else:
        check_finite(data, path, root)
    affine = image.affine @ orientations.inv_ornt_aff(transform, image.shape)
    return np.ascontiguousarray(data), affine


def binarise(data: np.ndarray, name: str, threshold: float | None = None) -> np.ndarray:
    """A mask as bool: ``data > threshold``; without a threshold the values must be 0
    and 1 (anything else raises, naming the file ``name`` and the way out)."""
    if threshold is not None:
        return data > threshold
    if data.dtype == bool:
        return data
    other = (data != 0) & (data != 1)
    if other.any():
        values = np.unique(data[other])
        listed = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise DatasetError(
            f"{name}: mask has values other than 0 and 1 ({listed}); pass "
            "--dataset-option mask_threshold=T to read it as mask = value > T"
        )
    return data == 1


def nifti_geometry(
    path: Path, root: Path | None = None
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(D, H, W) shape and spacing (mm) from the header alone."""
    image = _open(path, root)
    transform = _transform(image)
    order = np.argsort(transform[:, 0])  # file axis that lands on D, H, W
    zooms = image.header.get_zooms()[:3]
    return tuple(int(image.shape[i]) for i in order), tuple(float(zooms[i]) for i in order)


def check_finite(array: np.ndarray, path: Path, root: Path | None = None) -> None:
    """Raise if ``array`` (read from ``path``) holds NaN or infinite values."""
    n_nan = int(np.isnan(array).sum())
    if n_nan:
        raise DatasetError(f"{relative_path(path, root)} has {n_nan} NaN voxels")
    n_inf = int(np.isinf(array).sum())
    if n_inf:
        raise DatasetError(f"{relative_path(path, root)} has {n_inf} infinite voxels")


def check_same_grid(
    a: tuple[np.ndarray, np.ndarray, Path],
    b: tuple[np.ndarray, np.ndarray, Path],
    root: Path | None = None,
    atol: float = 1e-3,
) -> None:
    """Raise unless arrays ``a`` and ``b`` ((array, affine, path) each) share a grid."""
    (array_a, affine_a, path_a), (array_b, affine_b, path_b) = a, b
    names = f"{relative_path(path_b, root)} and {relative_path(path_a, root)}"
    if array_a.shape != array_b.shape:
        raise DatasetError(f"shape mismatch between {names}: {array_b.shape} vs {array_a.shape}")
    if not np.allclose(affine_a, affine_b, atol=atol):
        raise DatasetError(
            f"affine mismatch between {names} (max difference "
            f"{np.abs(affine_a - affine_b).max():.3g} mm): they are not on the same grid"
        )
