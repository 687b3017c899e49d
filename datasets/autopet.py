"""``autopet``: AutoPET FDG-PET/CT (Gatidis et al.), paper 4.1 and A.4.

Layouts read (``layout="auto"`` picks the one present under ``root``):

- ``release``: the NIfTI release, ``PETCT_<patient>/<study>/{CTres,SUV,SEG}.nii.gz``,
  under ``root`` or under ``root/FDG-PET-CT-Lesions/`` (the folder the download unpacks
  to: either may be the root); CTres, SUV and SEG share the PET grid (CT.nii.gz does not
  and is not read). The TCIA download is DICOM: lab-midas/TCIA_processing's
  ``tcia_dicom_to_nifti.py`` converts ``FDG-PET-CT-Lesions/`` to this layout;
- ``nnunet``: ``imagesTr/<case>_0000.nii.gz``, ``imagesTr/<case>_0001.nii.gz``,
  ``labelsTr/<case>.nii.gz``. Which file holds CT and which SUV changed between
  releases (Dataset221_AutoPETII_2023: 0000 = CTres, 0001 = SUV), so it is the option
  ``channel_order`` (default ``("ct", "suv")``). The patient is read from the case name
  with ``patient_pattern`` (several studies of one patient stay in one split).

Preprocessing (A.4): crop to the bounding box of SUV > 0.2, channels CT / 1000 and
SUV / 10 in the order ("ct", "suv"), mask = SEG > 0 (SEG > ``mask_threshold`` when
given); positive = non-empty SEG (so no label contradicts its mask). Labels
need the SEG files, so the first scan reads them (once: they are remembered in the
cache, keyed by file size and modification time).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.base import Record, VolumeDataset
from datasets.cache import read_memo, save_memo
from datasets.nifti import check_same_grid, nifti_geometry, read_nifti
from datasets.registry import register_dataset
from datasets.volume import DatasetError, Volume, relative_path, shift_affine, spacing_of

log = logging.getLogger(__name__)

RELEASE_FILES = {"ct": "CTres.nii.gz", "suv": "SUV.nii.gz", "seg": "SEG.nii.gz"}
RELEASE_FOLDER = "FDG-PET-CT-Lesions"  # what the download unpacks to, around PETCT_*/


def suv_crop(suv: np.ndarray, threshold: float) -> tuple[slice, slice, slice] | None:
    """Minimal bounding box of ``suv > threshold`` (A.4), or None if no voxel is above."""
    above = suv > threshold
    if not above.any():
        return None
    crop = []
    for axis in range(3):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        crop.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(crop)


@register_dataset("autopet", annotation="mask", files=True)
class AutoPET(VolumeDataset):
    """AutoPET PET/CT; options ``layout``, ``channel_order``, ``suv_threshold``,
    ``patient_pattern`` (see the module docstring), ``mask_threshold`` (default 0),
    plus ``cache_dir``, ``seed``, ``val_fraction`` (default: Table 3's split, ``paper_split``),
    ``max_abs``."""

    version = "1"
    channels = ("ct", "suv")
    intensity_channel = "suv"  # thresholding SUV: the classic PET lesion baseline
    scales = {"ct": 1000.0, "suv": 10.0}  # A.4: CT / 1000, SUV / 10
    # Table 3: 57 of 501 positive and 55 of 512 negative studies in val (the release has
    # 513 negatives: the paper leaves one out without saying which)
    paper_split = {1: (57, 501), 0: (55, 512)}

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        layout: str = "auto",
        channel_order: tuple[str, str] = ("ct", "suv"),
        suv_threshold: float = 0.2,
        patient_pattern: str = r"^(?:PETCT|fdg|psma)_[0-9A-Fa-f]+",
        cache_dir: str | Path | None = None,
        seed: int = 0,
        val_fraction: float | None = None,
        max_abs: float = 1e6,
        mask_threshold: float | None = None,
    ):
        if layout not in ("auto", "release", "nnunet"):
            raise DatasetError(f"autopet: layout must be auto, release or nnunet, got {layout!r}")
        if sorted(channel_order) != ["ct", "suv"]:
            raise DatasetError(
                f"autopet: channel_order must order 'ct' and 'suv', got {channel_order!r}"
            )
        self.layout = layout
        self.channel_order = tuple(channel_order)
        self.suv_threshold = float(suv_threshold)
        self.patient_pattern = re.compile(patient_pattern)
        super().__init__(
            root,
            cache_dir=cache_dir,
            seed=seed,
            val_fraction=val_fraction,
            max_abs=max_abs,
            mask_threshold=mask_threshold,
        )

    def options(self) -> dict:
        return {
            **super().options(),
            "channel_order": self.channel_order,
            "suv_threshold": self.suv_threshold,
        }

    # -- index ----------------------------------------------------------------------

    def _scan(self) -> list[Record]:
        layout = self.layout
        if layout == "auto":
            layout = "nnunet" if (self.root / "imagesTr").is_dir() else "release"
        found = self._scan_nnunet() if layout == "nnunet" else self._scan_release()
        if not found:
            raise DatasetError(
                f"no studies under {self.root}: expected PETCT_<id>/<study>/SUV.nii.gz in it "
                f"or in its {RELEASE_FOLDER}/ (release), or imagesTr/<case>_0000.nii.gz (nnU-Net)"
            )
        labels = self._labels({i: paths["seg"] for i, _, paths in found})
        return [
            Record(id=i, label=labels[i], patient=patient, annotated=True, source=paths)
            for i, patient, paths in found
        ]

    def _scan_release(self) -> list[tuple[str, str, dict[str, Path]]]:
        base = self.root
        if not any(base.glob("PETCT_*")) and (base / RELEASE_FOLDER).is_dir():
            base = base / RELEASE_FOLDER
        found = []
        for study in sorted(p for p in base.glob("PETCT_*/*") if p.is_dir()):
            paths = {key: study / name for key, name in RELEASE_FILES.items()}
            for path in paths.values():
                if path.is_file():
                    continue
                if next(study.rglob("*.dcm"), None) is not None:
                    raise DatasetError(
                        f"{relative_path(study, self.root)} holds DICOM series, not the NIfTI "
                        "release's CTres/SUV/SEG.nii.gz: convert them first "
                        "(tcia_dicom_to_nifti.py of lab-midas/TCIA_processing)"
                    )
                raise DatasetError(f"missing file {relative_path(path, self.root)}")
            found.append((f"{study.parent.name}/{study.name}", study.parent.name, paths))
        return found

    def _scan_nnunet(self) -> list[tuple[str, str, dict[str, Path]]]:
        found = []
        for first in sorted(self.root.glob("imagesTr/*_0000.nii*")):
            case, ext = first.name.split("_0000.nii")
            paths = {
                key: first.parent / f"{case}_000{k}.nii{ext}"
                for k, key in enumerate(self.channel_order)
            }
            paths["seg"] = self.root / "labelsTr" / f"{case}.nii{ext}"
            for path in paths.values():
                if not path.is_file():
                    raise DatasetError(f"missing file {relative_path(path, self.root)}")
            match = self.patient_pattern.match(case)
            found.append((case, match.group(0) if match else case, paths))
        return found

    def _labels(self, segs: dict[str, Path]) -> dict[str, int]:
        """Positive = non-empty SEG; remembered in the cache by file size and mtime."""
        memo_path = self.cache_path / "labels.json"
        memo = read_memo(memo_path)
        labels, changed = {}, False
        for sample_id, seg in tqdm(
            segs.items(), desc="autopet labels", disable=len(segs) < 50, leave=False
        ):
            stat = seg.stat()
            key = [stat.st_size, stat.st_mtime_ns]
            known = memo.get(sample_id)
            if isinstance(known, list) and len(known) == 3 and known[1:] == key:
                labels[sample_id] = memo[sample_id][0]
                continue
            labels[sample_id] = int(self._read_seg(seg)[0].any())
            memo[sample_id] = [labels[sample_id], *key]
            changed = True
        if changed:
            save_memo(memo_path, memo)
        return labels

    # -- volumes --------------------------------------------------------------------

    def _load(self, record: Record) -> Volume:
        paths = record.source
        suv, affine = read_nifti(paths["suv"], self.root)
        ct, ct_affine = read_nifti(paths["ct"], self.root)
        seg, seg_affine = self._read_seg(paths["seg"])
        check_same_grid((suv, affine, paths["suv"]), (ct, ct_affine, paths["ct"]), self.root)
        check_same_grid((suv, affine, paths["suv"]), (seg, seg_affine, paths["seg"]), self.root)
        crop = suv_crop(suv, self.suv_threshold)
        if crop is None:
            raise DatasetError(
                f"{relative_path(paths['suv'], self.root)} has no voxel with SUV > "
                f"{self.suv_threshold}: nothing to crop to"
            )
        lost = int(seg.sum() - seg[crop].sum())
        if lost:
            log.warning("%s: the SUV crop drops %d lesion voxels", record.id, lost)
        arrays = {"ct": ct, "suv": suv}
        image = np.stack([arrays[c][crop] / self.scales[c] for c in self.channels])
        affine = shift_affine(affine, tuple(s.start for s in crop))
        return Volume(
            record.id,
            image.astype(np.float32),
            record.label,
            np.ascontiguousarray(seg[crop]),
            None,
            affine,
            spacing_of(affine),
        )

    def _read_seg(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """SEG > 0 (A.4), or SEG > ``mask_threshold``: (mask, affine)."""
        threshold = 0.0 if self.mask_threshold is None else self.mask_threshold
        return read_nifti(path, self.root, binary=True, threshold=threshold)

    def _header(self, record: Record):
        """Shape and spacing of the SUV grid *before* the crop (headers only)."""
        return nifti_geometry(record.source["suv"], self.root)

    def _image_files(self, record: Record) -> list[Path]:
        return [record.source[c] for c in self.channels]

    def _truth_file(self, record: Record) -> Path | None:
        return record.source["seg"]
