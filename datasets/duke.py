"""``duke``: Duke Breast Cancer MRI (Saha et al.), paper 4.1 and A.4.

Reads the TCIA DICOM download as it comes, under ``root``:

- images: ``[Duke-Breast-Cancer-MRI/]Breast_MRI_XXX/<study>/<series>/*.dcm``, with
  descriptive folder names ("3.000000-ax dyn pre-93877") or classic ones (UIDs);
- ``Breast-Cancer-MRI-filepath_filename-mapping.xlsx`` (optional; columns
  ``original_path_and_filename`` = ``DICOM_Images/Breast_MRI_XXX/<pre|post_1>/...``,
  ``classic_path``, ``descriptive_path``) picks the ``pre`` and ``post_1`` series: the
  SeriesInstanceUID is the parent folder of ``classic_path``. Without it, or for a
  patient it does not list, SeriesDescription is matched against ``series_patterns``;
- ``Annotation_Boxes.xlsx``: ``Patient ID``, ``Start Row``, ``End Row``, ``Start Column``,
  ``End Column``, ``Start Slice``, ``End Slice``, 1-based and inclusive as distributed;
- ``Clinical_and_Other_Features.xlsx``: three header rows (group, name, coding);
  columns are matched by name in any header row (``Patient ID``,
  ``Contralateral Breast Involvement``, 1 = yes).
Tables may also be ``.csv`` with the same stem, in ``root`` or one folder below.

Preprocessing (A.4): pre and post_1 stacked as channels ("pre", "post_1"), slices sorted
by position along the slice normal (``datasets.dicom``), rescale applied. Each patient
gives two volumes, ``<patient>_left`` and ``<patient>_right``: the array is cut at the
midline ``n // 2`` of the left-right axis (the in-plane axis, H or W, whose direction is
closest to the patient's x axis; W, the DICOM columns, for axial scans); each half is
z-normalised per channel. The half holding the box is positive, the other negative
unless Contralateral Breast Involvement is 1 (then positive, without box).

Boxes: rows -> H, columns -> W, converted to half-open 0-based ``(start - 1, end)``.
Slices: with ``slice_numbering="instance"`` (default) Start/End Slice count the slices in
InstanceNumber order, the order of the original file names ``..._pre_001.dcm`` that the
annotators' slice numbers follow, and are mapped to the position-sorted stack (the two
differ when a series was acquired from head to feet); ``"position"`` counts the sorted
stack directly. A box straddling the midline goes to the half that holds most of it
(the first half on a tie), clipped to that half.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from datasets.base import Record, VolumeDataset
from datasets.cache import read_memo, save_memo
from datasets.dicom import read_header, read_series, series_files
from datasets.registry import register_dataset
from datasets.volume import (
    Box,
    DatasetError,
    Volume,
    relative_path,
    shift_affine,
    spacing_of,
    zscore,
)

log = logging.getLogger(__name__)

SEQUENCES = ("pre", "post_1")
DEFAULT_PATTERNS = {
    "pre": r"(?i)\bpre\b",
    "post_1": r"(?i)\b(1st|first)\b|\bph(ase)?[ _-]?1\b|\bpost[ _-]?1\b",
}
BOX_COLUMNS = ("Start Row", "End Row", "Start Column", "End Column", "Start Slice", "End Slice")
ANNOTATION = "Annotation_Boxes"
CLINICAL = "Clinical_and_Other_Features"
MAPPING = "Breast-Cancer-MRI-filepath_filename-mapping"
CONTRALATERAL = "Contralateral Breast Involvement"


def _norm(name: object) -> str:
    return " ".join(str(name).split()).lower()


def read_table(
    path: Path, columns: tuple[str, ...], header_rows: int = 1, root: Path | None = None
) -> dict[str, list]:
    """The ``columns`` of an .xlsx/.csv table, found by name in any of its header rows."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            raw = pd.read_csv(path, header=None, dtype=object)
        else:
            raw = pd.read_excel(path, header=None, dtype=object)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DatasetError(f"cannot read {relative_path(path, root)}: {error}") from error
    heads = [[_norm(raw.iat[i, j]) for i in range(header_rows)] for j in range(raw.shape[1])]
    out = {}
    for wanted in columns:
        index = next((j for j, names in enumerate(heads) if _norm(wanted) in names), None)
        if index is None:
            raise DatasetError(f"{relative_path(path, root)} has no column {wanted!r}")
        out[wanted] = [None if pd.isna(v) else v for v in raw.iloc[header_rows:, index]]
    return out


def convert_box(box: tuple[int, ...], instance_rank: np.ndarray | None) -> Box:
    """1-based inclusive (rows, columns, slices) -> half-open 0-based (d0, d1, h0, h1, w0, w1).

    With ``instance_rank`` (rank of each sorted slice by InstanceNumber) the slice range
    counts InstanceNumber order; without it, the sorted stack.
    """
    r0, r1, c0, c1, s0, s1 = box
    d0, d1 = s0 - 1, s1
    if instance_rank is not None:
        hits = np.flatnonzero((instance_rank >= s0 - 1) & (instance_rank <= s1 - 1))
        d0, d1 = int(hits.min()), int(hits.max()) + 1
    return (d0, d1, r0 - 1, r1, c0 - 1, c1)


def box_half(box: Box, axis: int, mid: int) -> int:
    """0 or 1: the half along ``axis`` (0 = D, 1 = H, 2 = W) holding most of ``box``."""
    lo, hi = box[2 * axis], box[2 * axis + 1]
    first = max(0, min(hi, mid) - lo)
    second = max(0, hi - max(lo, mid))
    return 0 if first >= second else 1


def box_in_half(box: Box, axis: int, mid: int, half: int) -> Box:
    """``box`` clipped to half ``half`` along ``axis`` and in that half's coordinates."""
    out = list(box)
    lo, hi = box[2 * axis], box[2 * axis + 1]
    if half == 0:
        out[2 * axis], out[2 * axis + 1] = min(lo, mid), min(hi, mid)
    else:
        out[2 * axis], out[2 * axis + 1] = max(lo, mid) - mid, max(hi, mid) - mid
    return tuple(out)


@register_dataset("duke", annotation="boxes", files=True)
class Duke(VolumeDataset):
    """Duke breast MRI; options ``slice_numbering`` ("instance" or "position"),
    ``series_patterns`` ({"pre": regex, "post_1": regex} for SeriesDescription), plus
    ``cache_dir``, ``seed``, ``val_fraction``, ``max_abs``."""

    version = "1"
    channels = SEQUENCES
    intensity_channel = "post_1"  # tumours enhance after contrast
    annotation = "boxes"
    # Table 3: 92 of 1067 positive and 66 of 765 negative breasts in val, i.e. 916 patients
    # of whom 151 have both breasts positive (the release has 922 patients)
    paper_split = {1: (92, 1067), 0: (66, 765)}

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        slice_numbering: str = "instance",
        series_patterns: dict[str, str] | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        val_fraction: float | None = None,
        max_abs: float = 1e6,
    ):
        if slice_numbering not in ("instance", "position"):
            raise DatasetError(
                f"duke: slice_numbering must be 'instance' or 'position', got {slice_numbering!r}"
            )
        self.slice_numbering = slice_numbering
        self.series_patterns = {**DEFAULT_PATTERNS, **(series_patterns or {})}
        self._patient_volume = lru_cache(maxsize=1)(self._read_patient)
        super().__init__(
            root, cache_dir=cache_dir, seed=seed, val_fraction=val_fraction, max_abs=max_abs
        )

    def options(self) -> dict:
        return {
            **super().options(),
            "slice_numbering": self.slice_numbering,
            "series_patterns": self.series_patterns,
        }

    # -- index ----------------------------------------------------------------------

    def _table(self, stem: str, required: bool = True) -> Path | None:
        for pattern in (f"{stem}.xlsx", f"{stem}.csv", f"*/{stem}.xlsx", f"*/{stem}.csv"):
            found = sorted(self.root.glob(pattern))
            if found:
                return found[0]
        if required:
            raise DatasetError(f"missing file {stem}.xlsx under {self.root}")
        return None

    def _scan(self) -> list[Record]:
        base = self.root / "Duke-Breast-Cancer-MRI"
        base = base if base.is_dir() else self.root
        patients = sorted(p for p in base.glob("Breast_MRI_*") if p.is_dir())
        if not patients:
            raise DatasetError(f"no Breast_MRI_* folders under {base}")
        boxes = self._boxes(self._table(ANNOTATION))
        contralateral = self._contralateral(self._table(CLINICAL))
        mapping = self._mapping(self._table(MAPPING, required=False))
        self._entries = index = self._index(patients, mapping)
        records = []
        for folder in patients:
            patient = folder.name
            if patient not in boxes:
                raise DatasetError(
                    f"{relative_path(self._table(ANNOTATION), self.root)} has no box for {patient}"
                )
            records += self._halves(patient, boxes[patient], index[patient], contralateral)
        return records

    def _boxes(self, path: Path) -> dict[str, tuple[int, ...]]:
        table = read_table(path, ("Patient ID", *BOX_COLUMNS), root=self.root)
        out = {}
        for row, patient in enumerate(table["Patient ID"]):
            if patient is None:
                continue
            try:
                out[str(patient).strip()] = tuple(int(float(table[c][row])) for c in BOX_COLUMNS)
            except (TypeError, ValueError):
                raise DatasetError(
                    f"{relative_path(path, self.root)}: box of {patient} is not integer: "
                    f"{[table[c][row] for c in BOX_COLUMNS]}"
                ) from None
        return out

    def _contralateral(self, path: Path) -> dict[str, bool]:
        table = read_table(path, ("Patient ID", CONTRALATERAL), header_rows=3, root=self.root)
        out = {}
        for patient, value in zip(table["Patient ID"], table[CONTRALATERAL], strict=True):
            if patient is None:
                continue
            text = _norm(value)
            if text not in ("1", "1.0", "yes", "0", "0.0", "no", "none", ""):
                log.warning(
                    "%s: %s = %r for %s, read as no", path.name, CONTRALATERAL, value, patient
                )
            out[str(patient).strip()] = text in ("1", "1.0", "yes")
        return out

    def _mapping(self, path: Path | None) -> dict[str, dict[str, list[str]]]:
        """{patient: {sequence: [series UID, descriptive folder name]}}, memoised (the
        real table lists every one of ~770,000 DICOM files)."""
        if path is None:
            return {}
        memo_path = self.cache_path / "mapping.json"
        stat = path.stat()
        key = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
        memo = read_memo(memo_path)
        if memo.get("key") == key and isinstance(memo.get("series"), dict):
            return memo["series"]
        columns = ("original_path_and_filename", "classic_path", "descriptive_path")
        table = read_table(path, columns, root=self.root)
        series: dict[str, dict[str, list[str]]] = {}
        for original, classic, descriptive in zip(*(table[c] for c in columns), strict=True):
            parts = re.split(r"/+", str(original or "").strip())
            if len(parts) < 3 or parts[-2] not in SEQUENCES:
                continue
            folders = [re.split(r"/+", str(p or ""))[-2:-1] for p in (classic, descriptive)]
            series.setdefault(parts[-3], {})[parts[-2]] = [(f or [""])[0] for f in folders]
        save_memo(memo_path, {"key": key, "series": series})
        return series

    def _index(self, patients: list[Path], mapping: dict) -> dict[str, dict]:
        """Per patient: the two series folders and the pre series' geometry, memoised."""
        memo_path = self.cache_path / "index.json"
        memo = read_memo(memo_path)
        index, changed = {}, False
        for folder in patients:
            key = [folder.stat().st_mtime_ns, mapping.get(folder.name)]
            entry = memo.get(folder.name)
            if not isinstance(entry, dict) or entry.get("key") != key:
                entry = {"key": key, **self._locate(folder, mapping.get(folder.name, {}))}
                memo[folder.name] = entry
                changed = True
            index[folder.name] = entry
        if changed:
            save_memo(memo_path, memo)
        return index

    def _locate(self, patient_dir: Path, mapped: dict[str, list[str]]) -> dict:
        """Find the pre and post_1 series folders of a patient and read their geometry."""
        folders = [Path(d) for d, _, files in sorted(os.walk(patient_dir)) if files]
        headers = {}

        def header(folder: Path):
            if folder not in headers:
                headers[folder] = read_header(series_files(folder)[0], self.root)
            return headers[folder]

        entry = {}
        for sequence in SEQUENCES:
            if sequence in mapped:
                uid, name = mapped[sequence]
                hits = [f for f in folders if f.name in (uid, name)] or [
                    f for f in folders if str(header(f).get("SeriesInstanceUID", "")) == uid
                ]
                rule = f"SeriesInstanceUID {uid} (from the mapping table)"
            else:
                pattern = re.compile(self.series_patterns[sequence])
                hits = [
                    f
                    for f in folders
                    if pattern.search(str(header(f).get("SeriesDescription", "")))
                ]
                rule = f"a SeriesDescription matching {pattern.pattern!r}"
            if len(hits) != 1:
                found = ", ".join(
                    repr(str(header(f).get("SeriesDescription", f.name))) for f in folders
                )
                problem = "missing series" if not hits else "ambiguous series"
                raise DatasetError(
                    f"{problem} {sequence!r} for {patient_dir.name}: {len(hits)} folders with "
                    f"{rule}; series found: {found or 'none'}"
                )
            entry[sequence] = hits[0].relative_to(self.root).as_posix()
            if sequence == "pre":
                pre = header(hits[0])
        iop = np.array(pre.ImageOrientationPatient, dtype=np.float64)
        # direction (LPS) of the array axes D (slice normal), H (down a column), W (along a row)
        directions = {0: np.cross(iop[:3], iop[3:]), 1: iop[3:], 2: iop[:3]}
        axis = max(directions, key=lambda a: abs(directions[a][0]))
        if axis == 0:
            raise DatasetError(
                f"{entry['pre']}: the left-right axis is the slice axis (sagittal series); "
                "only axial or coronal series can be split into breasts"
            )
        entry.update(
            rows=int(pre.Rows),
            columns=int(pre.Columns),
            slices=len(series_files(self.root / entry["pre"])),
            lr_axis=axis,
            left_is_second=bool(directions[axis][0] > 0),  # LPS +x points to the patient's left
        )
        return entry

    def _halves(
        self, patient: str, box: tuple[int, ...], entry: dict, contralateral: dict[str, bool]
    ) -> list[Record]:
        """The two breast records of a patient (labels from the box and the clinical table)."""
        r0, r1, c0, c1, s0, s1 = box
        limits = (entry["rows"], entry["columns"], entry["slices"])
        if not all(
            1 <= a <= b <= n for a, b, n in zip((r0, c0, s0), (r1, c1, s1), limits, strict=True)
        ):
            raise DatasetError(
                f"{ANNOTATION}: box {box} of {patient} is outside its image of "
                f"{entry['rows']} rows, {entry['columns']} columns, {entry['slices']} slices"
            )
        if patient not in contralateral:
            raise DatasetError(f"{CLINICAL} has no row for {patient}")
        axis = entry["lr_axis"]
        mid = limits[axis - 1] // 2
        holding = box_half(convert_box(box, None), axis, mid)
        names = ("right", "left") if entry["left_is_second"] else ("left", "right")
        records = []
        for half, side in enumerate(names):
            has_box = half == holding
            label = int(has_box or contralateral[patient])
            records.append(
                Record(
                    id=f"{patient}_{side}",
                    label=label,
                    patient=patient,
                    annotated=has_box or label == 0,
                    source={"patient": patient, "half": half, "box": box if has_box else None},
                )
            )
        return records

    # -- volumes --------------------------------------------------------------------

    def _read_patient(self, patient: str):
        """Both series of a patient on one grid: (image [2, D, H, W], affine, instance rank)."""
        entry = self._entries[patient]
        pre = read_series(self.root / entry["pre"], self.root)
        post = read_series(self.root / entry["post_1"], self.root)
        if pre.array.shape != post.array.shape or not np.allclose(
            pre.affine, post.affine, atol=0.05
        ):
            raise DatasetError(
                f"{entry['post_1']} ({post.array.shape}) is not on the grid of "
                f"{entry['pre']} ({pre.array.shape})"
            )
        return np.stack([pre.array, post.array]), pre.affine, pre.instance_rank

    def _load(self, record: Record) -> Volume:
        source = record.source
        image, affine, rank = self._patient_volume(source["patient"])
        entry = self._entries[source["patient"]]
        axis, half = entry["lr_axis"], source["half"]
        mid = image.shape[1 + axis] // 2
        cut = [slice(None)] * 3
        cut[axis] = slice(0, mid) if half == 0 else slice(mid, None)
        offset = [0, 0, 0]
        offset[axis] = 0 if half == 0 else mid
        boxes: list[Box] | None = [] if record.label == 0 else None
        if source["box"] is not None:
            numbering = rank if self.slice_numbering == "instance" else None
            boxes = [box_in_half(convert_box(tuple(source["box"]), numbering), axis, mid, half)]
        return Volume(
            record.id,
            zscore(image[(slice(None), *cut)]),
            record.label,
            None,
            boxes,
            shift_affine(affine, tuple(offset)),
            spacing_of(affine),
        )

    def _image_files(self, record: Record) -> list[Path]:
        """The pre and post_1 series folders (one per channel)."""
        entry = self._entries[record.source["patient"]]
        return [self.root / entry[sequence] for sequence in SEQUENCES]

    def _truth_file(self, record: Record) -> Path | None:
        return self._table(ANNOTATION)

    def _sources(self, record: Record) -> list[Path]:
        """Every DICOM file of both series (the box and label are in the Record)."""
        return [f for folder in self._image_files(record) for f in series_files(folder)]

    def _header(self, record: Record):
        entry = self._entries[record.source["patient"]]
        shape = [entry["slices"], entry["rows"], entry["columns"]]
        axis, mid = entry["lr_axis"], shape[entry["lr_axis"]] // 2
        shape[axis] = mid if record.source["half"] == 0 else shape[axis] - mid
        header = read_header(series_files(self.root / entry["pre"])[0], self.root)
        rows, columns = (float(s) for s in header.PixelSpacing)
        thickness = float(header.get("SpacingBetweenSlices") or header.get("SliceThickness") or 0)
        return tuple(shape), (thickness, rows, columns)
