"""Heatmaps made by another pipeline (``evaluate --heatmaps DIR``): found, checked, and
mapped into the preprocessed volumes' space.

One file per volume to score, named by the volume id (:func:`~datasets.base.safe_stem`,
as ``--save-heatmaps`` names them): ``<id>.nii.gz`` or ``<id>.nii``, NIfTI in the *source*
image's space (the grid the user's pipeline read, with its affine), or ``<id>.npy``,
already in the volume's ``[D, H, W]``. Other files (README.txt, .json) are ignored; the
folder is listed once, on first use.

A NIfTI file is mapped through the affines: a Volume's affine maps its indices (after
the adapter's reorientation and crop) to world mm, so ``inv(A_file) @ A_volume`` maps
volume indices to file indices. When that is a signed permutation with an integral
shift (the same grid), the values are taken by indexing, which is exactly the adapter's
crop and reorientation; otherwise (another resolution, an oblique grid) they are
resampled trilinearly, and the file is named in an INFO line. A grid that misses a
volume voxel (by more than half a voxel when resampled) is an error.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from benchmark.protocol.assess import HeatmapSource, ground_truth
from datasets.base import VolumeDataset, safe_stem
from datasets.nifti import check_finite, read_nifti
from datasets.volume import DatasetError
from foundation.registry import natural_key

log = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".nii", ".npy")
PERMUTATION_TOL = 1e-4  # |entry - (0 or ±1)| of inv(A_file) @ A_volume for the exact path
SHIFT_TOL = 1e-3  # voxels from an integral shift for the exact path
LISTED = 10  # problems listed in one error message
_CHUNK = 1 << 20


class ExternalHeatmapError(ValueError):
    """A heatmap folder that cannot be scored: the message names the file and the problem."""


def heatmap_stem(name: str) -> str | None:
    """``<stem>`` of a heatmap file name ``<stem>.nii.gz``, ``.nii`` or ``.npy`` (any case)."""
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def corners(shape: tuple[int, ...]) -> np.ndarray:
    """The 8 corner voxel indices of a 3D grid of ``shape``: float [8, 3]."""
    return np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)


@dataclass(frozen=True)
class GridMap:
    """Volume voxel indices (d, h, w) -> heatmap array indices, as a 4x4 matrix."""

    matrix: np.ndarray
    exact: bool  # a signed permutation and an integral shift: indexing, no interpolation

    def covers(self, data_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
        """Whether every voxel of a volume of ``shape`` falls inside the heatmap's grid
        (within half a voxel when resampled)."""
        reached = corners(shape) @ self.matrix[:3, :3].T + self.matrix[:3, 3]
        if self.exact:
            reached, margin = np.rint(reached), 0.0
        else:
            margin = 0.5 + 1e-6
        return bool(
            (reached >= -margin).all() and (reached <= np.subtract(data_shape, 1) + margin).all()
        )

    def apply(self, data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        """``data`` at every voxel of a volume of ``shape``: float32 [D, H, W], C order."""
        if not self.exact:
            return ndimage.affine_transform(
                data,
                self.matrix[:3, :3],
                offset=self.matrix[:3, 3],
                output_shape=tuple(shape),
                output=np.float32,
                order=1,
                mode="nearest",  # the half-voxel rim outside the last centres
            )
        turn = np.rint(self.matrix[:3, :3]).astype(int)
        start = np.rint(self.matrix[:3, 3]).astype(int)
        axes = [int(np.flatnonzero(turn[:, j])[0]) for j in range(3)]  # data axis of d, h, w
        cut = []
        for j, n in enumerate(shape):
            step, first = int(turn[axes[j], j]), int(start[axes[j]])
            stop = first + step * n
            cut.append(slice(first, stop if stop >= 0 else None, step))
        return np.ascontiguousarray(data.transpose(axes)[tuple(cut)], dtype=np.float32)


def grid_map(file_affine: np.ndarray, volume_affine: np.ndarray) -> GridMap:
    """The map from a volume's voxels to a heatmap's, from both affines (voxel -> mm)."""
    matrix = np.linalg.inv(file_affine) @ volume_affine
    turn, shift = matrix[:3, :3], matrix[:3, 3]
    rounded = np.rint(turn)
    exact = bool(
        np.abs(turn - rounded).max() <= PERMUTATION_TOL
        and (np.abs(rounded).sum(axis=0) == 1).all()
        and (np.abs(rounded).sum(axis=1) == 1).all()
        and np.abs(shift - np.rint(shift)).max() <= SHIFT_TOL
    )
    return GridMap(matrix, exact)


def world_box(affine: np.ndarray, shape: tuple[int, ...]) -> str:
    """The world extent (mm, RAS) of a grid's voxel centres, for messages."""
    world = corners(shape) @ affine[:3, :3].T + affine[:3, 3]
    low, high = world.min(axis=0), world.max(axis=0)
    return ", ".join(f"{a} {lo:.1f}..{hi:.1f}" for a, lo, hi in zip("xyz", low, high, strict=True))


def read_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A ``.npy`` heatmap already in a volume's space, as float32, checked: readable,
    numbers, of the volume's ``shape``, finite."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ExternalHeatmapError(f"cannot read {path.name}: {error}") from None
    if data.dtype.kind not in "biuf":
        raise ExternalHeatmapError(f"{path.name} holds {data.dtype} values, not numbers")
    if data.shape != shape:
        raise ExternalHeatmapError(
            f"{path.name} has shape {data.shape}, the volume's is {shape} "
            "(a .npy heatmap is in the preprocessed volume's [D, H, W])"
        )
    data = np.array(data, dtype=np.float32)
    check_finite(data, path, path.parent)
    return data


def report(folder: Path, problems: list[str]) -> str:
    """One message: the first problem, and the others (up to ``LISTED``) on lines below."""
    head = f"{folder}: {problems[0]}"
    rest = problems[1:]
    if not rest:
        return head
    lines = [f"{head} (and {len(rest)} more problem{'s' * (len(rest) > 1)}, below)"]
    lines += [f"  {p}" for p in rest[: LISTED - 1]]
    if len(rest) > LISTED - 1:
        lines.append(f"  ... and {len(rest) - LISTED + 1} more")
    return "\n".join(lines)


class ExternalHeatmaps:
    """A folder of heatmaps, one per volume to score, named by the volume id."""

    def __init__(self, dataset: VolumeDataset, folder: str | Path, volume_ids: Sequence[str]):
        self.dataset = dataset
        self.folder = Path(folder)
        self.volume_ids = list(volume_ids)
        self._ids = {safe_stem(i): i for i in self.volume_ids}

    def check(self) -> None:
        """Raise one ExternalHeatmapError listing every problem (names, shapes, grids,
        NaN / inf), before any scoring. Reads every file once, one at a time."""
        found = self._found
        if not found:
            raise ExternalHeatmapError(
                f"{self.folder}: no heatmap files (<volume id>.nii.gz, .nii or .npy)"
            )
        problems = [p for stem, paths in found.items() if (p := self._naming(stem, paths))]
        present = [i for i in self.volume_ids if len(found.get(safe_stem(i), ())) == 1]
        for volume_id in tqdm(present, desc="checking heatmaps", unit="file", leave=False):
            try:
                self._read(volume_id)
            except ExternalHeatmapError as error:
                problems.append(str(error))
        missing = [i for i in self.volume_ids if safe_stem(i) not in found]
        if missing:
            problems.append(self._missing(missing))
        if problems:
            raise ExternalHeatmapError(report(self.folder, problems))

    def source(self, name: str, unscored: Collection[str], levels: int) -> HeatmapSource:
        """The folder as the protocol reads it (:mod:`benchmark.protocol.assess`): one spec,
        ``name``, each heatmap read when asked for (:meth:`load`), scored against its
        volume's reference (none for the ``unscored`` positives)."""
        return HeatmapSource.of_heatmaps(
            [name],
            lambda _, v: self.load(v),
            lambda v: ground_truth(self.dataset, self.dataset[v], unscored),
            levels,
        )

    def load(self, volume_id: str) -> np.ndarray:
        """float32 [D, H, W] in the preprocessed volume's space
        (``dataset[volume_id].image.shape[1:]``)."""
        try:
            data, grid, shape = self._read(volume_id)
        except ExternalHeatmapError as error:
            raise ExternalHeatmapError(report(self.folder, [str(error)])) from None
        if not grid.exact:
            name = self._found[safe_stem(volume_id)][0].name
            log.info("%s: resampled (trilinear) onto the grid of volume %s", name, volume_id)
        return grid.apply(data, shape)

    def digest(self) -> str:
        """sha256 (hex) over the heatmap files' names and contents, in volume order: the
        cache key of these heatmaps."""
        digest = hashlib.sha256()
        for volume_id in self.volume_ids:
            for path in self._found.get(safe_stem(volume_id), ()):
                digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
                with open(path, "rb") as file:
                    while chunk := file.read(_CHUNK):
                        digest.update(chunk)
        return digest.hexdigest()

    @cached_property
    def _found(self) -> dict[str, list[Path]]:
        """Heatmap files by stem, in natural order (hidden files skipped)."""
        if not self.folder.is_dir():
            raise ExternalHeatmapError(f"{self.folder}: no such folder")
        found: dict[str, list[Path]] = {}
        for path in sorted(self.folder.iterdir(), key=lambda p: natural_key(p.name)):
            stem = heatmap_stem(path.name)
            if stem is not None and not path.name.startswith(".") and path.is_file():
                found.setdefault(stem, []).append(path)
        return found

    @cached_property
    def _known(self) -> dict[str, str]:
        """Every volume id of the data set, by file stem."""
        return {safe_stem(i): i for i in self.dataset.ids()}

    def _naming(self, stem: str, paths: list[Path]) -> str | None:
        """What is wrong with the files named ``stem`` (None when nothing is)."""
        names = " and ".join(p.name for p in paths)
        if stem in self._ids:
            if len(paths) == 1:
                return None
            return f"{names}: {len(paths)} heatmaps for volume {self._ids[stem]}; keep one"
        volume_id = self._known.get(stem)
        if volume_id is None:
            return f"{names}: no volume of {self.dataset.name} has the id {stem!r}"
        if self.dataset.split(volume_id) == "train":
            return (
                f"{names}: {volume_id} is a training volume; "
                "heatmaps of training volumes are not scored"
            )
        return f"{names}: volume {volume_id} is not among the volumes scored"

    def _missing(self, missing: list[str]) -> str:
        shown = [i if safe_stem(i) == i else f"{i} (file {safe_stem(i)}.*)" for i in missing[:5]]
        more = ", ..." if len(missing) > 5 else ""
        return (
            f"no heatmap (<id>.nii.gz, .nii or .npy) for {len(missing)} of the "
            f"{len(self.volume_ids)} volumes to score: {', '.join(shown)}{more}"
        )

    def _read(self, volume_id: str) -> tuple[np.ndarray, GridMap, tuple[int, int, int]]:
        """The file's values, their map onto the volume's grid, and the volume's shape;
        ExternalHeatmapError (one problem, naming the file) if anything is wrong."""
        paths = self._found.get(safe_stem(volume_id), [])
        if len(paths) != 1:
            stem = safe_stem(volume_id)
            raise ExternalHeatmapError(
                self._naming(stem, paths)
                if paths
                else f"no heatmap for volume {volume_id} ({stem}.nii.gz, {stem}.nii or {stem}.npy)"
            )
        (path,) = paths
        volume = self.dataset[volume_id]
        shape = tuple(volume.image.shape[1:])
        try:
            if path.name.lower().endswith(".npy"):
                return read_npy(path, shape), GridMap(np.eye(4), exact=True), shape
            data, affine = read_nifti(path, self.folder)
        except DatasetError as error:
            raise ExternalHeatmapError(str(error)) from None
        grid = grid_map(affine, volume.affine)
        if not grid.covers(data.shape, shape):
            raise ExternalHeatmapError(
                f"{path.name} does not cover volume {volume_id}: its affine places it elsewhere "
                f"(heatmap {world_box(affine, data.shape)}; "
                f"volume {world_box(volume.affine, shape)}; mm, RAS)"
            )
        return data, grid, shape
