"""``mosmed``: MosMedData COVID-19 chest CT (Morozov et al.), paper 4.1 and A.4.

Layout: ``studies/CT-0/study_XXXX.nii.gz`` (negatives) and ``studies/CT-1/`` (positives),
or the same folders without ``studies/``, ``.nii`` or ``.nii.gz``; masks
``masks/study_XXXX_mask.nii.gz`` exist for 50 CT-1 studies. CT-2 to CT-4 are not used.

Split (paper 4.1, Table 3): the masked studies form the validation positives, with as
many CT-0 studies drawn with ``seed`` (``val_negatives``); everything else is training.

Preprocessing (A.4): volumes / 1000; masks (0/1, or value > ``mask_threshold`` when
given) closed with a ball of radius 20 then opened with a ball of radius 10. The paper
does not give the unit. MosMed keeps every tenth slice (about 10 mm apart for 0.7 mm
pixels), so a ball of 10 *voxels* (21 slices across) would open away every lesion; the
default unit is therefore millimetres (an ellipsoid in voxels, ``radius_unit="mm"``);
``radius_unit="voxel"`` gives the literal voxel ball.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from datasets.base import Record, VolumeDataset
from datasets.nifti import check_same_grid, nifti_geometry, read_nifti
from datasets.registry import register_dataset
from datasets.volume import DatasetError, Volume, spacing_of

log = logging.getLogger(__name__)

CLASSES = {"CT-0": 0, "CT-1": 1}
_EPS = 1e-6  # a voxel exactly at the radius is inside the ball


def close_open(
    mask: np.ndarray,
    closing_radius: float,
    opening_radius: float,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Binary closing then opening with balls {o : |o * spacing| <= r} (A.4).

    Exact morphology through Euclidean distance transforms (fast for large radii). The
    mask is padded with background by the radius first, so that the closing does not
    shrink objects at the border: the result is the closing and opening of the mask on
    an infinite background.
    """
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    radius = max(closing_radius, opening_radius)
    pad = [math.ceil(radius / s) + 1 for s in spacing]
    grown = np.pad(mask.astype(bool), [(p, p) for p in pad])
    if closing_radius > 0:
        grown = ndimage.distance_transform_edt(~grown, sampling=spacing) <= closing_radius + _EPS
        grown = ndimage.distance_transform_edt(grown, sampling=spacing) > closing_radius + _EPS
    if opening_radius > 0:
        grown = ndimage.distance_transform_edt(grown, sampling=spacing) > opening_radius + _EPS
        if grown.any():
            grown = (
                ndimage.distance_transform_edt(~grown, sampling=spacing) <= opening_radius + _EPS
            )
    return grown[tuple(slice(p, p + n) for p, n in zip(pad, mask.shape, strict=True))]


@register_dataset("mosmed", annotation="mask", files=True)
class MosMed(VolumeDataset):
    """MosMed CT-0 / CT-1; options ``val_negatives`` (default: as many as masked
    studies), ``closing_radius`` (20), ``opening_radius`` (10), ``radius_unit``
    ("mm" or "voxel"), ``mask_threshold``, plus ``cache_dir``, ``seed``, ``max_abs``."""

    version = "1"
    channels = ("ct",)
    scale = 1000.0  # A.4: volumes / 1000

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        val_negatives: int | None = None,
        closing_radius: float = 20.0,
        opening_radius: float = 10.0,
        radius_unit: str = "mm",
        cache_dir: str | Path | None = None,
        seed: int = 0,
        max_abs: float = 1e6,
        mask_threshold: float | None = None,
    ):
        if radius_unit not in ("mm", "voxel"):
            raise DatasetError(f"mosmed: radius_unit must be 'mm' or 'voxel', got {radius_unit!r}")
        if min(closing_radius, opening_radius) < 0:
            raise DatasetError("mosmed: closing_radius and opening_radius must be >= 0")
        self.val_negatives = val_negatives
        self.closing_radius, self.opening_radius = float(closing_radius), float(opening_radius)
        self.radius_unit = radius_unit
        super().__init__(
            root, cache_dir=cache_dir, seed=seed, max_abs=max_abs, mask_threshold=mask_threshold
        )

    def options(self) -> dict:
        return {
            **super().options(),
            "closing_radius": self.closing_radius,
            "opening_radius": self.opening_radius,
            "radius_unit": self.radius_unit,
        }

    def _scan(self) -> list[Record]:
        base = self.root / "studies" if (self.root / "studies").is_dir() else self.root
        records = []
        for folder, label in CLASSES.items():
            for path in sorted((base / folder).glob("*.nii*")):
                study = path.name.split(".nii")[0]
                mask = next(
                    (m for m in self.root.glob(f"masks/{study}_mask.nii*") if m.is_file()), None
                )
                records.append(Record(study, label, study, mask is not None, source=(path, mask)))
        if not records:
            raise DatasetError(
                f"no studies under {self.root}: expected studies/CT-0/*.nii.gz and "
                "studies/CT-1/*.nii.gz (or CT-0/, CT-1/ directly under the root)"
            )
        self._assign_splits(records)
        return records

    def _assign_splits(self, records: list[Record]) -> None:
        """Masked studies -> val, with ``val_negatives`` CT-0 studies; the rest -> train."""
        negatives = [r for r in records if r.label == 0 and not r.annotated]
        n_masked = sum(r.annotated for r in records)
        if n_masked == 0:
            log.warning("mosmed: no masks under %s/masks: the validation split is empty", self.root)
        n_val = n_masked if self.val_negatives is None else self.val_negatives
        if not 0 <= n_val <= len(negatives):
            raise DatasetError(
                f"val_negatives={n_val} but only {len(negatives)} unmasked CT-0 studies"
            )
        chosen = set(np.random.default_rng(self.seed).permutation(len(negatives))[:n_val])
        for r in records:
            r.split = "val" if r.annotated else "train"
        for k, r in enumerate(negatives):
            r.split = "val" if k in chosen else "train"

    def _load(self, record: Record) -> Volume:
        path, mask_path = record.source
        ct, affine = read_nifti(path, self.root)
        spacing = spacing_of(affine)
        mask = None
        if mask_path is not None:
            raw, mask_affine = read_nifti(
                mask_path, self.root, binary=True, threshold=self.mask_threshold
            )
            check_same_grid((ct, affine, path), (raw, mask_affine, mask_path), self.root)
            unit = spacing if self.radius_unit == "mm" else (1.0, 1.0, 1.0)
            mask = close_open(raw, self.closing_radius, self.opening_radius, unit)
        image = (ct / self.scale)[None].astype(np.float32)
        return Volume(record.id, image, record.label, mask, None, affine, spacing)

    def _header(self, record: Record):
        return nifti_geometry(record.source[0], self.root)

    def _image_files(self, record: Record) -> list[Path]:
        return [record.source[0]]

    def _truth_file(self, record: Record) -> Path | None:
        return record.source[1]
