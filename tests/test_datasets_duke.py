"""``duke``: DICOM series (both folder layouts), the xlsx tables, boxes, the breast split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from datasets import DatasetError, Record, load_dataset
from datasets.base import assign_splits
from datasets.duke import Duke, box_half, box_in_half, convert_box

D, H, W = 6, 8, 10  # slices, rows, columns
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows run to the patient's left, columns to posterior
SPACING = (0.5, 0.6)  # PixelSpacing: between rows, between columns
STEP = 2.0  # mm between slices
SERIES = {
    "pre": "ax dyn pre",
    "post_1": "ax dyn 1st pass",
    "post_2": "ax dyn 2nd pass",
    "t1": "ax t1",
}


def pixels(patient: int, sequence: str) -> np.ndarray:
    """Stored pixel values, (D, H, W) in position order (inferior first)."""
    rng = np.random.default_rng([patient, len(sequence)])
    return rng.integers(100, 400, (D, H, W)).astype(np.int16)


def write_series(folder, volume, description, study_uid, series_uid, reverse=False, rescale=None):
    """One file per slice with the real tags; ``reverse``: InstanceNumber 1 is the top slice."""
    folder.mkdir(parents=True)
    for k in range(D):
        instance = D - k if reverse else k + 1
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "MR", folder.parts[-3]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SeriesDescription, ds.InstanceNumber = description, instance
        ds.ImageOrientationPatient = list(AXIAL)
        ds.ImagePositionPatient = [-2.0, -3.0, 10.0 + STEP * k]
        ds.PixelSpacing, ds.SliceThickness = list(SPACING), STEP
        ds.Rows, ds.Columns = H, W
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = volume[k].tobytes()
        ds.save_as(folder / f"1-{instance:02d}.dcm", enforce_file_format=True)


PATIENTS = {
    # name: (layout, box (rows, columns, slices; 1-based inclusive), contralateral, reversed)
    "Breast_MRI_001": ("descriptive", (2, 4, 7, 9, 2, 3), 0, False),  # box in columns 6..8
    "Breast_MRI_002": ("descriptive", (3, 5, 2, 4, 2, 3), 1, True),  # box in the first half
    "Breast_MRI_003": ("classic", (1, 8, 4, 7, 1, 6), 0, False),  # straddles the midline (5)
    "Breast_MRI_004": ("unmapped", (5, 6, 8, 10, 4, 5), 0, False),  # found by description
}


@pytest.fixture(scope="module")
def duke(tmp_path_factory):
    root = tmp_path_factory.mktemp("duke")
    mapping = []
    for p, (name, (layout, _, _, reverse)) in enumerate(PATIENTS.items(), start=1):
        study_uid = generate_uid()
        study = (
            study_uid if layout == "classic" else "01-01-1990-NA-MRI BREAST BILATERAL W  WO-97538"
        )
        for s, (sequence, description) in enumerate(SERIES.items()):
            series_uid = generate_uid()
            folder = (
                series_uid if layout == "classic" else f"{s + 3}.000000-{description}-{9300 + s}"
            )
            path = root / "Duke-Breast-Cancer-MRI" / name / study / folder
            rescale = (2.0, -100.0) if sequence == "post_1" else None
            write_series(
                path, pixels(p, sequence), description, study_uid, series_uid, reverse, rescale
            )
            if layout == "unmapped":
                continue
            for k in range(1, D + 1):
                classic = f"Duke-Breast-Cancer-MRI/{name}/{study_uid}/{series_uid}/1-{k:02d}.dcm"
                descriptive = f"Duke-Breast-Cancer-MRI/{name}/{study}//{folder}/1-{k:02d}.dcm"
                original = f"DICOM_Images/{name}/{sequence}/{name}_{sequence}_{k:03d}.dcm"
                mapping.append((original, classic, descriptive))
    pd.DataFrame(
        mapping, columns=["original_path_and_filename", "classic_path", "descriptive_path"]
    ).to_excel(root / "Breast-Cancer-MRI-filepath_filename-mapping.xlsx", index=False)
    boxes = [(name, *box) for name, (_, box, _, _) in PATIENTS.items()]
    columns = ["Patient ID", "Start Row", "End Row", "Start Column", "End Column"]
    pd.DataFrame(boxes, columns=[*columns, "Start Slice", "End Slice"]).to_excel(
        root / "Annotation_Boxes.xlsx", index=False
    )
    header = [
        ["Patient Information", "Tumor Characteristics", "MRI Findings", None],
        [
            "Patient ID",
            "Tumor Location",
            "Multicentric/Multifocal",
            "Contralateral Breast Involvement",
        ],
        [None, "{L = left, R = right}", "{0 = no, 1 = yes}", "{0 = no, 1 = yes}"],
    ]
    rows = [[name, "L", 0, c] for name, (_, _, c, _) in PATIENTS.items()]
    pd.DataFrame(header + rows).to_excel(
        root / "Clinical_and_Other_Features.xlsx", index=False, header=False
    )
    return root


@pytest.fixture(scope="module")
def ds(duke, tmp_path_factory):
    return load_dataset("duke", root=duke, cache_dir=tmp_path_factory.mktemp("c"), val_fraction=0)


def zscore(x):
    return (x - x.mean()) / x.std()


def test_ids_labels_and_annotation_follow_box_and_contralateral(ds):
    assert ds.ids() == [
        f"Breast_MRI_00{p}_{side}" for p in range(1, 5) for side in ("left", "right")
    ]
    assert ds.channels == ("pre", "post_1") and ds.annotation == "boxes"
    labels = {i: ds.label(i) for i in ds.ids()}
    assert labels == {
        "Breast_MRI_001_left": 1, "Breast_MRI_001_right": 0,  # columns 7-9 of 10: left half
        "Breast_MRI_002_left": 1, "Breast_MRI_002_right": 1,  # contralateral involvement
        "Breast_MRI_003_left": 0, "Breast_MRI_003_right": 1,  # straddles, a tie: first half
        "Breast_MRI_004_left": 1, "Breast_MRI_004_right": 0,
    }  # fmt: skip
    assert not ds.has_annotation("Breast_MRI_002_left")  # positive without a box
    assert ds.has_annotation("Breast_MRI_002_right") and ds.has_annotation("Breast_MRI_001_right")
    assert {ds.patient(i) for i in ds.ids()} == set(PATIENTS)


def test_breast_split_channels_rescale_and_zscore(ds):
    """Axial rows run to the patient's left: columns 0-4 are the right breast, 5-9 the left."""
    left, right = ds["Breast_MRI_001_left"], ds["Breast_MRI_001_right"]
    assert left.image.shape == right.image.shape == (2, D, H, W // 2)
    pre, post = pixels(1, "pre").astype(float), pixels(1, "post_1") * 2.0 - 100.0
    assert np.allclose(right.image[0], zscore(pre[..., :5]), atol=1e-5)
    assert np.allclose(left.image[0], zscore(pre[..., 5:]), atol=1e-5)
    assert np.allclose(left.image[1], zscore(post[..., 5:]), atol=1e-5)
    assert left.mask is None and left.spacing == pytest.approx((STEP, 0.5, 0.6))
    # the affine of each half maps its voxels to the right world points (RAS: x = -LPS x)
    assert np.allclose(right.affine @ [0, 0, 0, 1], [2.0, 3.0, 10.0, 1.0])
    assert np.allclose(left.affine @ [1, 2, 0, 1], [2.0 - 5 * 0.6, 3.0 - 2 * 0.5, 12.0, 1.0])


def test_boxes_are_half_open_zero_based_in_half_coordinates(ds):
    # rows 2-4 -> [1, 4); columns 7-9 -> [6, 9) -> [1, 4) in the left half; slices 2-3 -> [1, 3)
    assert ds["Breast_MRI_001_left"].boxes == [(1, 3, 1, 4, 1, 4)]
    assert ds["Breast_MRI_001_right"].boxes == []  # negative: annotated, no box
    assert ds["Breast_MRI_002_left"].boxes is None  # positive, unannotated
    # columns 4-7 -> [3, 7): 2 columns right of the midline, 2 left; a tie goes to the first half
    assert ds["Breast_MRI_003_right"].boxes == [(0, 6, 0, 8, 3, 5)]


def test_reversed_instance_order_is_sorted_by_position_and_boxes_follow(ds, duke, tmp_path):
    """Patient 002: InstanceNumber 1 is the top slice; Start/End Slice count instances."""
    right = ds["Breast_MRI_002_right"]
    assert np.allclose(right.image[0], zscore(pixels(2, "pre")[..., :5].astype(float)), atol=1e-5)
    assert np.all(np.diff([(right.affine @ [d, 0, 0, 1])[2] for d in range(D)]) == STEP)
    # instances 2-3 are positions 4 and 3 of the sorted stack
    assert right.boxes == [(3, 5, 2, 5, 1, 4)]
    by_position = load_dataset(
        "duke", root=duke, cache_dir=tmp_path, val_fraction=0, slice_numbering="position"
    )
    assert by_position["Breast_MRI_002_right"].boxes == [(1, 3, 2, 5, 1, 4)]


def test_series_found_in_classic_layout_and_by_description(ds):
    for patient, p in (("Breast_MRI_003", 3), ("Breast_MRI_004", 4)):
        v = ds[f"{patient}_left"]
        assert np.allclose(v.image[0], zscore(pixels(p, "pre")[..., 5:].astype(float)), atol=1e-5)


def test_helpers_convert_and_split_boxes():
    rank = np.array([5, 4, 3, 2, 1, 0])  # reversed instances
    assert convert_box((1, 2, 3, 4, 1, 2), None) == (0, 2, 0, 2, 2, 4)
    assert convert_box((1, 2, 3, 4, 1, 2), rank) == (4, 6, 0, 2, 2, 4)
    box = (0, 2, 0, 2, 3, 9)
    assert box_half(box, 2, 5) == 1 and box_in_half(box, 2, 5, 1) == (0, 2, 0, 2, 0, 4)
    assert box_half((0, 1, 0, 1, 3, 7), 2, 5) == 0  # 2 and 2: the first half


def test_second_pass_uses_the_cache(duke, tmp_path, monkeypatch):
    first = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0)
    first["Breast_MRI_001_left"]
    monkeypatch.setattr("datasets.duke.read_series", None)
    monkeypatch.setattr("datasets.duke.read_header", None)
    again = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0)
    assert isinstance(again["Breast_MRI_001_left"].image, np.memmap)


def test_patient_level_split(duke, tmp_path):
    ds = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0.5, seed=2)
    for patient in PATIENTS:
        assert ds.split(f"{patient}_left") == ds.split(f"{patient}_right")
    assert ds.counts()["val"]["patients"] == 2


@pytest.fixture
def copy(duke, tmp_path):
    import shutil

    root = tmp_path / "duke"
    shutil.copytree(duke, root)
    return root


def test_missing_series_is_named(copy, tmp_path):
    import shutil

    series = copy / "Duke-Breast-Cancer-MRI" / "Breast_MRI_004"
    shutil.rmtree(next(series.glob("*/*1st pass*")))
    with pytest.raises(DatasetError, match="duke: missing series 'post_1' for Breast_MRI_004"):
        load_dataset("duke", root=copy, cache_dir=tmp_path)


def test_unreadable_dicom_file_is_named(copy, tmp_path):
    bad = next((copy / "Duke-Breast-Cancer-MRI" / "Breast_MRI_001").glob("*/*pre*/1-03.dcm"))
    bad.write_bytes(b"\0" * 200)
    ds = load_dataset("duke", root=copy, cache_dir=tmp_path, val_fraction=0)
    with pytest.raises(
        DatasetError, match=r"duke: cannot read DICOM file .*ax dyn pre.*/1-03\.dcm"
    ):
        ds["Breast_MRI_001_left"]


def test_truncated_pixel_data_is_named(copy, tmp_path):
    bad = next((copy / "Duke-Breast-Cancer-MRI" / "Breast_MRI_001").glob("*/*pre*/1-04.dcm"))
    bad.write_bytes(bad.read_bytes()[:-50])
    ds = load_dataset("duke", root=copy, cache_dir=tmp_path, val_fraction=0)
    with pytest.raises(DatasetError, match=r"1-04\.dcm"):
        ds["Breast_MRI_001_left"]


def test_box_outside_the_image_and_missing_box(copy, tmp_path):
    table = pd.read_excel(copy / "Annotation_Boxes.xlsx")
    table.loc[0, "End Column"] = 11
    table.to_excel(copy / "Annotation_Boxes.xlsx", index=False)
    with pytest.raises(DatasetError, match="box .* of Breast_MRI_001 is outside its image"):
        load_dataset("duke", root=copy, cache_dir=tmp_path)
    table.drop(index=0).to_excel(copy / "Annotation_Boxes.xlsx", index=False)
    with pytest.raises(DatasetError, match="Annotation_Boxes.xlsx has no box for Breast_MRI_001"):
        load_dataset("duke", root=copy, cache_dir=tmp_path)


def test_missing_tables_and_columns(copy, tmp_path):
    table = pd.read_excel(copy / "Annotation_Boxes.xlsx")
    table.rename(columns={"Start Slice": "Slice"}).to_excel(copy / "Annotation_Boxes.xlsx")
    with pytest.raises(DatasetError, match="Annotation_Boxes.xlsx has no column 'Start Slice'"):
        load_dataset("duke", root=copy, cache_dir=tmp_path)
    table.to_excel(copy / "Annotation_Boxes.xlsx", index=False)
    (copy / "Clinical_and_Other_Features.xlsx").unlink()
    with pytest.raises(DatasetError, match="missing file Clinical_and_Other_Features.xlsx"):
        load_dataset("duke", root=copy, cache_dir=tmp_path)


def test_an_edited_dicom_file_or_box_row_recomputes_only_that_patient(copy, tmp_path):
    import os

    import pydicom

    ids = ("Breast_MRI_001_left", "Breast_MRI_001_right", "Breast_MRI_002_left")
    first = load_dataset("duke", root=copy, cache_dir=tmp_path / "c", val_fraction=0)
    old = {i: (np.array(first[i].image), first[i].boxes) for i in ids}
    kept = (first.cache_path / "Breast_MRI_002_left.json").stat().st_mtime_ns
    path = next((copy / "Duke-Breast-Cancer-MRI" / "Breast_MRI_001").glob("*/*pre*/1-03.dcm"))
    dicom = pydicom.dcmread(path)
    dicom.PixelData = (dicom.pixel_array + 50).astype(np.int16).tobytes()  # same size
    mtime = path.stat().st_mtime_ns + 10**9
    dicom.save_as(path)
    os.utime(path, ns=(mtime, mtime))
    boxes = pd.read_excel(copy / "Annotation_Boxes.xlsx")
    boxes.loc[boxes["Patient ID"] == "Breast_MRI_001", "End Row"] = 6
    boxes.to_excel(copy / "Annotation_Boxes.xlsx", index=False)

    again = load_dataset("duke", root=copy, cache_dir=tmp_path / "c", val_fraction=0)
    fresh = load_dataset("duke", root=copy, cache_dir=tmp_path / "fresh", val_fraction=0)
    for i in ids:
        assert np.allclose(again[i].image, fresh[i].image) and again[i].boxes == fresh[i].boxes
    assert not np.allclose(again[ids[0]].image, old[ids[0]][0])
    assert [again[i].boxes for i in ids[:2]] != [old[i][1] for i in ids[:2]]
    assert (again.cache_path / "Breast_MRI_002_left.json").stat().st_mtime_ns == kept


@pytest.mark.parametrize("name", ["index.json", "mapping.json"])
def test_a_damaged_memo_is_rebuilt_with_a_warning(duke, tmp_path, caplog, name):
    first = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0)
    (first.cache_path / name).write_text("[1, 2")
    again = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0)
    assert [again.label(i) for i in again] == [first.label(i) for i in first]
    assert f"damaged cache file {first.cache_path / name}" in caplog.text
    (first.cache_path / name).write_text('{"Breast_MRI_001": 3, "key": 1}')
    third = load_dataset("duke", root=duke, cache_dir=tmp_path, val_fraction=0)
    assert third["Breast_MRI_001_left"].image.shape == first["Breast_MRI_001_left"].image.shape


def breasts(unilateral: int, bilateral: int) -> list[Record]:
    """Duke's records as the adapter makes them: two breasts per patient, the boxed one
    positive, the other positive too with contralateral involvement."""
    records = []
    for p in range(unilateral + bilateral):
        patient = f"Breast_MRI_{p + 1:03d}"
        for side, label in (("left", 1), ("right", int(p >= unilateral))):
            records.append(Record(f"{patient}_{side}", label, patient, annotated=bool(label)))
    return records


@pytest.mark.parametrize(("unilateral", "seed"), [(765, 0), (765, 1), (771, 0)])
def test_the_default_split_is_table_3s_on_a_release_of_dukes_size(unilateral, seed):
    """Table 3: 92 positive + 66 negative validation breasts of 1067 + 765, i.e. 916
    patients of whom 151 have both breasts positive: 66 one-sided and 13 two-sided
    patients. The release has 922 patients (6 more, here one-sided): the same counts."""
    records = assign_splits(breasts(unilateral, 151), Duke.paper_split, seed)
    val = [r for r in records if r.split == "val"]
    assert (sum(r.label for r in val), sum(1 - r.label for r in val)) == (92, 66)
    sides = {}
    for r in records:
        sides.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())  # patient level
    train = [r for r in records if r.split == "train"]
    assert sum(r.label for r in train) == 975 + (unilateral - 765)
    assert sum(1 - r.label for r in train) == 699 + (unilateral - 765)
