"""``folder``: NIfTI files + CSV: channels, masks, splits, z-normalisation, errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from datasets import DatasetError, load_dataset

SHAPE = (8, 8, 6)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)


def channel(k: int, c: int) -> np.ndarray:
    return np.random.default_rng(10 * k + c).normal(100 * (c + 1), 10 + c, SHAPE).astype(np.float32)


def make(root, rows=None, header="id,label,image,mask,split,patient"):
    """Six studies of three patients, two channels (t1, flair), masks for positives."""
    lines = [header]
    for k in range(6):
        for c in range(2):
            save(root / "images" / f"s{k}_{c}.nii.gz", channel(k, c))
        mask = ""
        if k % 2:
            m = np.zeros(SHAPE, np.uint8)
            m[2:4, 3:5, 1:3] = 1
            save(root / "labels" / f"s{k}.nii.gz", m)
            mask = f"labels/s{k}.nii.gz"
        split = "val" if k == 5 else ""
        lines.append(
            f"s{k},{k % 2},images/s{k}_0.nii.gz;images/s{k}_1.nii.gz,{mask},{split},p{k // 2}"
        )
    lines += rows or []
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_channels_masks_and_fixed_split(tmp_path):
    ds = load_dataset(
        "folder", root=make(tmp_path / "ms"), cache_dir=tmp_path / "c", val_fraction=0
    )
    assert ds.ids() == [f"s{k}" for k in range(6)] and ds.channels == ("ch0", "ch1")
    assert [ds.label(i) for i in ds.ids()] == [0, 1, 0, 1, 0, 1]
    assert ds.ids("val") == ["s4", "s5"]  # s5 is fixed to val and takes its patient p2 along
    assert [ds.has_annotation(i) for i in ds.ids()] == [False, True] * 3
    v = ds["s3"]
    assert v.image.shape == (2, 6, 8, 8) and v.image.dtype == np.float32
    for c in range(2):
        assert np.allclose(v.image[c], np.transpose(channel(3, c), (2, 1, 0))[:, ::-1, ::-1])
    assert v.mask.shape == (6, 8, 8) and v.mask.sum() == 8 and v.spacing == (3.0, 1.0, 1.0)
    assert ds["s0"].mask is None


def test_zscore_option_and_channel_names(tmp_path):
    root = make(tmp_path / "ms")
    ds = load_dataset(
        "folder",
        root=root / "dataset.csv",
        zscore=True,
        channels=["t1", "flair"],
        cache_dir=tmp_path,
    )
    image = ds["s2"].image
    assert ds.channels == ("t1", "flair")
    assert np.allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-4)
    raw = load_dataset("folder", root=root, cache_dir=tmp_path)["s2"].image
    expected = (raw[1] - raw[1].mean()) / raw[1].std()
    assert np.allclose(image[1], expected, atol=1e-4)


def test_seeded_patient_level_split(tmp_path):
    root = make(tmp_path / "ms")
    text = (root / "dataset.csv").read_text().replace(",val,", ",,")
    (root / "dataset.csv").write_text(text)
    ds = load_dataset("folder", root=root, cache_dir=tmp_path, val_fraction=0.34, seed=1)
    val_patients = {ds.patient(i) for i in ds.ids("val")}
    assert len(val_patients) == 1 and len(ds.ids("val")) == 2


@pytest.mark.parametrize(
    "row, message",
    [
        (
            "s9,2,images/s0_0.nii.gz;images/s0_1.nii.gz,,,p9",
            r"dataset.csv line 8 \(id 's9'\): label '2' is not 0 or 1",
        ),
        ("s9,yes,images/s0_0.nii.gz;images/s0_1.nii.gz,,,p9", "label 'yes' is not 0 or 1"),
        ("s9,1,images/nope.nii.gz;images/s0_1.nii.gz,,,p9", "missing file images/nope.nii.gz"),
        ("s9,1,images/s0_0.nii.gz,,,p9", "1 image channels, expected 2"),
        ("s9,1,images/s0_0.nii.gz;images/s0_1.nii.gz,,test,p9", "split 'test' is not train or val"),
        ("s1,1,images/s0_0.nii.gz;images/s0_1.nii.gz,,,p9", "sample id 's1' appears twice"),
    ],
)
def test_bad_csv_rows(tmp_path, row, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset("folder", root=make(tmp_path / "ms", rows=[row]), cache_dir=tmp_path)


def test_missing_column_and_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="dataset.csv lacks the column"):
        load_dataset(
            "folder", root=make(tmp_path / "a", header="name,label,image,mask,split,patient")
        )
    with pytest.raises(DatasetError, match="folder: missing file"):
        load_dataset("folder", root=tmp_path, csv="other.csv")


def test_nan_and_mismatches_name_the_files(tmp_path):
    root = make(tmp_path / "ms")
    bad = channel(1, 1)
    bad[0, 0, 0] = np.nan
    save(root / "images" / "s1_1.nii.gz", bad)
    save(root / "images" / "s2_1.nii.gz", np.zeros((8, 8, 5), np.float32))
    save(root / "labels" / "s3.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([1.0, 1.0, 2.0, 1.0]))
    ds = load_dataset("folder", root=root, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="folder: images/s1_1.nii.gz has 1 NaN voxels"):
        ds["s1"]
    with pytest.raises(
        DatasetError, match="shape mismatch between images/s2_1.nii.gz and images/s2_0"
    ):
        ds["s2"]
    with pytest.raises(
        DatasetError, match="affine mismatch between labels/s3.nii.gz and images/s3_0"
    ):
        ds["s3"]


def test_only_positives_is_an_error_naming_the_csv_root(tmp_path):
    root = make(tmp_path / "ms")
    text = (root / "dataset.csv").read_text().replace(",0,images", ",1,images")
    (root / "dataset.csv").write_text(text)
    with pytest.raises(DatasetError, match=f"folder: {root}: the data set has no negative samples"):
        load_dataset("folder", root=root, cache_dir=tmp_path)
