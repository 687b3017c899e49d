"""``autopet``: both layouts, the SUV crop, scaling, orientation, labels, errors."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from datasets import DatasetError, load_dataset
from datasets.autopet import AutoPET

AFFINE = np.diag([2.0, 2.5, 3.0, 1.0])  # file axes (x, y, z) = (R, A, S): the PET grid
AFFINE[:3, 3] = (-8.0, -10.0, 5.0)
SHAPE = (8, 9, 6)  # (x, y, z) as stored: 6 axial slices of 8 x 9
BLOCK = (slice(2, 6), slice(1, 7), slice(1, 5))  # x, y, z where SUV > 0.2


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)


def study(seed: int, positive: bool):
    """(CTres, SUV, SEG) as stored in the files, (x, y, z) order."""
    rng = np.random.default_rng(seed)
    ct = rng.uniform(-1000, 1000, SHAPE).astype(np.float32)
    suv = np.zeros(SHAPE, np.float32)
    suv[BLOCK] = rng.uniform(0.5, 20, suv[BLOCK].shape)
    seg = np.zeros(SHAPE, np.uint8)
    if positive:
        seg[3:5, 2:4, 2:4] = 1
    return ct, suv, seg


STUDIES = {  # patient -> [(study, positive)]: patient aaa has two studies
    "PETCT_0aaa": [("01-01-2000-NA-PET-CT Ganzkoerper-1", True), ("02-02-2002-NA-PET-2", False)],
    "PETCT_0bbb": [("03-03-2003-NA-PET-3", True)],
    "PETCT_0ccc": [("04-04-2004-NA-PET-4", False)],
    "PETCT_0ddd": [("05-05-2005-NA-PET-5", True)],
    "PETCT_0eee": [("06-06-2006-NA-PET-6", False)],
}


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "FDG-PET-CT-Lesions"
    for k, (patient, studies) in enumerate(STUDIES.items()):
        for j, (name, positive) in enumerate(studies):
            ct, suv, seg = study(10 * k + j, positive)
            save(root / patient / name / "CTres.nii.gz", ct)
            save(root / patient / name / "SUV.nii.gz", suv)
            save(root / patient / name / "SEG.nii.gz", seg)
            save(root / patient / name / "CT.nii.gz", np.zeros((3, 3, 3)), np.eye(4))  # other grid
    return root


def expected(array):
    """The stored (x, y, z) array in the benchmark's (D, H, W) = (S, P, L) order, cropped."""
    dhw = np.transpose(array, (2, 1, 0))[:, ::-1, ::-1]  # z up, y reversed (A->P), x reversed
    return dhw[1:5, 9 - 7 : 9 - 1, 8 - 6 : 8 - 2]  # BLOCK in the new order


def test_release_layout_labels_crop_scaling_orientation(release, tmp_path):
    ds = load_dataset("autopet", root=release, cache_dir=tmp_path / "cache", val_fraction=0)
    first = "PETCT_0aaa/01-01-2000-NA-PET-CT Ganzkoerper-1"
    assert ds.ids()[0] == first and len(ds) == 6 and ds.channels == ("ct", "suv")
    assert [ds.label(i) for i in ds.ids()] == [1, 0, 1, 0, 1, 0]
    assert ds.patient(first) == "PETCT_0aaa"
    v = ds[first]
    ct, suv, seg = study(0, True)
    assert v.image.shape == (2, 4, 6, 4) and v.image.dtype == np.float32
    assert np.allclose(v.image[0], expected(ct) / 1000, atol=1e-6)
    assert np.allclose(v.image[1], expected(suv) / 10, atol=1e-6)
    assert np.array_equal(v.mask, expected(seg) > 0) and v.mask.sum() == 8
    assert v.spacing == (3.0, 2.5, 2.0) and v.boxes is None
    # voxel (0, 0, 0) of the crop is stored voxel (x=5, y=6, z=1): the affine still says so
    assert np.allclose(v.affine @ [0, 0, 0, 1], AFFINE @ [5, 6, 1, 1])
    assert np.allclose(v.affine @ [1, 1, 1, 1], AFFINE @ [4, 5, 2, 1])


def test_patient_level_split_keeps_studies_together(release, tmp_path):
    for seed in range(6):
        ds = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0.4, seed=seed)
        splits = {ds.split(i) for i in ds.ids() if ds.patient(i) == "PETCT_0aaa"}
        assert len(splits) == 1
        assert ds.counts()["val"]["patients"] == 2


def test_nnunet_layout_with_channel_order_as_option(release, tmp_path):
    root = tmp_path / "Dataset221_AutoPETII_2023"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for study_dir in sorted(release.glob("PETCT_*/*")):
        case = f"{study_dir.parent.name}_{study_dir.name}"
        copies = {"SUV": f"imagesTr/{case}_0000", "CTres": f"imagesTr/{case}_0001"}
        copies["SEG"] = f"labelsTr/{case}"
        for name, target in copies.items():
            nib.save(nib.load(study_dir / f"{name}.nii.gz"), root / f"{target}.nii.gz")
    ds = load_dataset(
        "autopet", root=root, channel_order=("suv", "ct"), cache_dir=tmp_path, val_fraction=0
    )
    ref = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    case = "PETCT_0aaa_01-01-2000-NA-PET-CT Ganzkoerper-1"
    assert ds.patient(case) == "PETCT_0aaa" and ds.label(case) == 1
    assert np.array_equal(ds[case].image, ref[ref.ids()[0]].image)  # ct first, then suv
    # read with the other order, the CT is taken for SUV: crop and scaling go wrong
    wrong = load_dataset("autopet", root=root, cache_dir=tmp_path / "w", val_fraction=0)
    assert wrong[case].image.shape == (2, 6, 9, 8)


def test_second_pass_reads_cache_and_remembered_labels(release, tmp_path, monkeypatch):
    ds = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    first = ds[ds.ids()[0]]

    def fail(*args, **kwargs):
        raise AssertionError("read a NIfTI file on the second pass")

    monkeypatch.setattr("datasets.autopet.read_nifti", fail)
    again = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    volume = again[again.ids()[0]]
    assert isinstance(volume.image, np.memmap)
    assert np.array_equal(volume.image, first.image) and np.array_equal(volume.mask, first.mask)


def test_header_geometry_is_the_pet_grid_before_crop(release, tmp_path):
    ds = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert ds.geometry(ds.ids()[0]) == ((6, 9, 8), (3.0, 2.5, 2.0))
    ds[ds.ids()[0]]
    assert ds.geometry(ds.ids()[0]) == ((4, 6, 4), (3.0, 2.5, 2.0))


FIRST = "PETCT_0bbb/03-03-2003-NA-PET-3"


def load_first(root, tmp_path):
    ds = load_dataset("autopet", root=root, cache_dir=tmp_path / "cache", val_fraction=0)
    return ds[FIRST]


def test_nan_voxels_are_reported_with_the_file(release, tmp_path):
    ct, suv, _ = study(10, True)
    suv[0, 0, :3] = np.nan
    save(release / FIRST / "SUV.nii.gz", suv)
    with pytest.raises(DatasetError, match=f"autopet: {FIRST}/SUV.nii.gz has 3 NaN voxels"):
        load_first(release, tmp_path)


def test_infinite_voxels_are_reported(release, tmp_path):
    ct, _, _ = study(10, True)
    ct[1, 1, 1] = np.inf
    save(release / FIRST / "CTres.nii.gz", ct)
    with pytest.raises(DatasetError, match=f"{FIRST}/CTres.nii.gz has 1 infinite voxels"):
        load_first(release, tmp_path)


def test_truncated_file_is_reported(release, tmp_path):
    path = release / FIRST / "CTres.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"autopet: cannot read {FIRST}/CTres.nii.gz"):
        load_first(release, tmp_path)


def test_not_a_nifti_file_is_reported(release, tmp_path):
    (release / FIRST / "CTres.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    with pytest.raises(DatasetError, match=f"cannot read {FIRST}/CTres.nii.gz"):
        load_first(release, tmp_path)


def test_shape_mismatch_names_both_files(release, tmp_path):
    save(release / FIRST / "SEG.nii.gz", np.zeros((8, 9, 7), np.uint8))
    with pytest.raises(DatasetError) as error:
        load_first(release, tmp_path)
    message = str(error.value)
    assert f"{FIRST}/SEG.nii.gz" in message and f"{FIRST}/SUV.nii.gz" in message
    assert "shape mismatch" in message


def test_affine_mismatch_names_both_files(release, tmp_path):
    ct, _, _ = study(10, True)
    save(release / FIRST / "CTres.nii.gz", ct, AFFINE * [[1], [1], [1.1], [1]])
    with pytest.raises(DatasetError, match=f"affine mismatch between {FIRST}/CTres.nii.gz and"):
        load_first(release, tmp_path)


def test_missing_file_is_named(release, tmp_path):
    (release / FIRST / "SEG.nii.gz").unlink()
    with pytest.raises(DatasetError, match=f"autopet: missing file {FIRST}/SEG.nii.gz"):
        load_first(release, tmp_path)


def test_no_voxel_above_the_suv_threshold(release, tmp_path):
    save(release / FIRST / "SUV.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(DatasetError, match="has no voxel with SUV > 0.2"):
        load_first(release, tmp_path)


def test_a_data_set_without_negatives_names_the_root(release, tmp_path):
    for seg in release.glob("*/*/SEG.nii.gz"):
        save(seg, np.ones(SHAPE, np.uint8))
    with pytest.raises(DatasetError, match=f"autopet: {release}: the data set has no negative"):
        load_dataset("autopet", root=release, cache_dir=tmp_path)


def test_an_empty_root_says_what_layout_was_expected(tmp_path):
    root = tmp_path / "downloads"
    (root / "manifest-1654187277763").mkdir(parents=True)  # neither layout, one level off
    with pytest.raises(DatasetError) as error:
        load_dataset("autopet", root=root, cache_dir=tmp_path)
    message = str(error.value)
    assert message == (
        f"autopet: no studies under {root}: expected PETCT_<id>/<study>/SUV.nii.gz in it or "
        "in its FDG-PET-CT-Lesions/ (release), or imagesTr/<case>_0000.nii.gz (nnU-Net)"
    )


def test_the_download_folder_and_its_release_folder_are_the_same_root(release, tmp_path):
    """The download unpacks to <folder>/FDG-PET-CT-Lesions/PETCT_*: either is the root."""
    download = release.parent
    assert (download / "FDG-PET-CT-Lesions").is_dir() and not list(download.glob("PETCT_*"))
    outer = load_dataset("autopet", root=download, cache_dir=tmp_path / "a", val_fraction=0.4)
    inner = load_dataset("autopet", root=release, cache_dir=tmp_path / "b", val_fraction=0.4)
    assert outer.ids() == inner.ids() and len(outer) == 6
    assert [outer.split(i) for i in outer] == [inner.split(i) for i in inner]
    assert [outer.label(i) for i in outer] == [1, 0, 1, 0, 1, 0]
    for sample in (FIRST, "PETCT_0aaa/02-02-2002-NA-PET-2"):
        a, b = outer[sample], inner[sample]
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.affine, b.affine)


def test_the_dicom_download_is_named_as_such(tmp_path):
    series = tmp_path / "FDG-PET-CT-Lesions" / "PETCT_0aaa" / "01-01-2000-NA-PET-1" / "3.000-PET"
    series.mkdir(parents=True)
    (series / "1-001.dcm").write_bytes(b"")
    with pytest.raises(DatasetError, match="PETCT_0aaa/01-01-2000-NA-PET-1 holds DICOM series"):
        load_dataset("autopet", root=tmp_path, cache_dir=tmp_path / "c")


def release_listing(root):
    """A release of AutoPET's size: 1014 studies (501 positive) of 900 patients, some with
    several studies (the real mix is not published: this one is made up). The files are
    stand-ins: the index checks that CTres and SUV exist and reads the label from SEG."""
    compositions = {(1, 0): 312, (2, 0): 75, (3, 0): 10, (1, 1): 9, (0, 1): 484, (0, 2): 10}
    patient = 0
    for (positives, negatives), n in compositions.items():
        for _ in range(n):
            for k, label in enumerate([1] * positives + [0] * negatives):
                folder = root / f"PETCT_{patient:04x}" / f"0{k + 1}-01-2000-NA-PET-{k}"
                folder.mkdir(parents=True)
                (folder / "CTres.nii.gz").touch()
                (folder / "SUV.nii.gz").touch()
                (folder / "SEG.nii.gz").write_text(str(label))
            patient += 1
    return root


def test_the_default_split_is_table_3s_on_a_release_of_autopets_size(tmp_path, monkeypatch):
    """Table 3: 57 positive + 55 negative validation studies (the paper counts 512
    negatives, the release 513: its training split has one negative more than the table)."""
    monkeypatch.setattr(  # a stand-in SEG holds its label ("0" or "1") as text
        AutoPET, "_read_seg", lambda self, path: (np.full(1, path.read_text() == "1"), None)
    )
    ds = load_dataset("autopet", root=release_listing(tmp_path / "r"), cache_dir=tmp_path / "c")
    counts = ds.counts()
    assert counts["all"]["patients"] == 900 and len(ds) == 1014
    assert (counts["val"]["positive"], counts["val"]["negative"]) == (57, 55)
    assert (counts["train"]["positive"], counts["train"]["negative"]) == (444, 458)
    for patient in {ds.patient(i) for i in ds}:  # patient level
        assert len({ds.split(i) for i in ds if ds.patient(i) == patient}) == 1


def test_an_edited_seg_changes_the_label_and_mask_served(release, tmp_path):
    sample = "PETCT_0ddd/05-05-2005-NA-PET-5"
    ds = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert ds.label(sample) == 1 and ds[sample].mask.sum() == 8
    before = ds.truth_fingerprint(sample)
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:4, 3:6, 2:4] = 2  # a SEG with label 2 reads as SEG > 0 (A.4)
    save(release / sample / "SEG.nii.gz", seg)
    again = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert np.array_equal(again[sample].mask, expected(seg) > 0) and again[sample].mask.sum() == 12
    assert again.truth_fingerprint(sample) != before
    save(release / sample / "SEG.nii.gz", np.zeros(SHAPE, np.uint8))  # now a negative
    third = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert third.label(sample) == 0 and third[sample].mask.sum() == 0


def test_a_damaged_labels_memo_is_rebuilt_with_a_warning(release, tmp_path, caplog):
    first = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    memo = first.cache_path / "labels.json"
    memo.write_text('{"PETCT_0bbb/03-03-2003-NA-PET-3": [1, ')
    again = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert [again.label(i) for i in again] == [first.label(i) for i in first]
    assert "damaged cache file" in caplog.text and "labels.json" in caplog.text
    memo.write_text('{"PETCT_0bbb/03-03-2003-NA-PET-3": 7}')  # JSON, not a memo entry
    assert load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0).label(FIRST)


def test_a_flipped_label_in_the_labels_memo_is_not_served(release, tmp_path, caplog):
    from test_dataset_trust import flip_digit

    first = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    flip_digit(first.cache_path / "labels.json", FIRST)  # [1, size, mtime] -> [0, ...]
    again = load_dataset("autopet", root=release, cache_dir=tmp_path, val_fraction=0)
    assert [again.label(i) for i in again] == [first.label(i) for i in first]
    assert "labels.json does not match the sha256 it was sealed with" in caplog.text
