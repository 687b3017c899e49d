"""``mosmed``: layouts, labels, scaling, mask closing/opening (vs skimage), split, errors."""

from __future__ import annotations

import inspect

import nibabel as nib
import numpy as np
import pytest
from skimage.draw import ellipsoid
from skimage.morphology import ball, closing, opening

from datasets import DatasetError, load_dataset
from datasets.mosmed import MosMed, close_open

SHAPE = (10, 12, 7)  # (x, y, z) as stored: 7 axial slices
AFFINE = np.diag([0.7, 0.7, 8.0, 1.0])


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)


def ct(k: int) -> np.ndarray:
    return np.random.default_rng(k).uniform(-1024, 400, SHAPE).astype(np.float32)


def lesion_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:7, 3:9, 2:5] = 1
    mask[4, 5, 2:5] = 0  # a hole the closing fills
    mask[8, 10, 5] = 1  # a speck the opening removes
    return mask


def make(root, flat=False, ext=".nii.gz", n=(4, 4), masked=(5, 6)):
    base = root if flat else root / "studies"
    for k in range(1, sum(n) + 1):
        folder = "CT-0" if k <= n[0] else "CT-1"
        save(base / folder / f"study_{k:04d}{ext}", ct(k))
    for k in masked:
        save(root / "masks" / f"study_{k:04d}_mask.nii.gz", lesion_mask())
    save(base / "CT-2" / "study_0099.nii.gz", ct(99))  # CT-2 to CT-4 are not used
    return root


OPTIONS = {"closing_radius": 1, "opening_radius": 1, "radius_unit": "voxel"}


def test_labels_scaling_orientation_and_split(tmp_path):
    ds = load_dataset("mosmed", root=make(tmp_path / "mosmed"), cache_dir=tmp_path / "c", **OPTIONS)
    assert ds.ids() == [f"study_{k:04d}" for k in range(1, 9)] and ds.channels == ("ct",)
    assert [ds.label(i) for i in ds.ids()] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ds.ids("val")[-2:] == ["study_0005", "study_0006"]  # the masked studies
    assert ds.counts()["val"] == {"positive": 2, "negative": 2, "annotated": 2, "patients": 4}
    assert ds.counts()["train"] == {"positive": 2, "negative": 2, "annotated": 0, "patients": 4}
    v = ds["study_0003"]
    dhw = np.transpose(ct(3), (2, 1, 0))[:, ::-1, ::-1]  # (z, y reversed, x reversed)
    assert v.image.shape == (1, 7, 12, 10) and np.allclose(v.image[0], dhw / 1000, atol=1e-6)
    assert v.mask is None and not ds.has_annotation("study_0003")
    assert v.spacing == pytest.approx((8.0, 0.7, 0.7))
    assert np.allclose(v.affine @ [0, 0, 0, 1], AFFINE @ [9, 11, 0, 1])


def test_flat_layout_and_uncompressed_files(tmp_path):
    root = make(tmp_path / "m", flat=True, ext=".nii")
    ds = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c", val_negatives=1, **OPTIONS)
    assert len(ds) == 8 and ds.counts()["val"]["negative"] == 1
    assert ds["study_0005"].mask is not None


def test_defaults_are_the_papers_radii():
    parameters = inspect.signature(MosMed).parameters
    assert parameters["closing_radius"].default == 20
    assert parameters["opening_radius"].default == 10


def test_mask_is_closed_then_opened_like_skimage(tmp_path):
    ds = load_dataset("mosmed", root=make(tmp_path / "m"), cache_dir=tmp_path / "c", **OPTIONS)
    raw = np.transpose(lesion_mask(), (2, 1, 0))[:, ::-1, ::-1] > 0
    padded = np.pad(raw, 2)
    reference = opening(closing(padded, ball(1)), ball(1))[2:-2, 2:-2, 2:-2]
    mask = ds["study_0005"].mask
    assert mask.dtype == bool and np.array_equal(mask, reference)
    assert mask[2, 5, 4] and not mask[5, 1, 1]  # the hole is filled, the speck is gone


def tight(footprint: np.ndarray) -> np.ndarray:
    """``footprint`` cropped to its bounding box (skimage pads it, not always evenly)."""
    where = np.argwhere(footprint)
    lo, hi = where.min(0), where.max(0) + 1
    return footprint[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 0.7)])
@pytest.mark.parametrize("seed", [0, 1])
def test_close_open_matches_skimage_on_random_masks(seed, spacing):
    rng = np.random.default_rng(seed)
    mask = rng.random((12, 14, 16)) < 0.3
    mask[0] = rng.random((14, 16)) < 0.8  # objects touching the border are not shrunk
    radii = (3.0, 2.0)
    footprints = [tight(ellipsoid(r, r, r, spacing=spacing)) for r in radii]
    if spacing == (1.0, 1.0, 1.0):
        assert all(np.array_equal(f, ball(r)) for f, r in zip(footprints, radii, strict=True))
    pad = 6  # >= the largest radius in voxels (3 mm / 0.7 mm)
    reference = opening(closing(np.pad(mask, pad), footprints[0]), footprints[1])
    got = close_open(mask, *radii, spacing)
    assert np.array_equal(got, reference[pad:-pad, pad:-pad, pad:-pad])


def test_mm_radius_keeps_lesions_that_a_voxel_ball_would_erase(tmp_path):
    """With 8 mm slices a 2-voxel opening needs 5 slices of lesion; a 2 mm one does not."""
    root = make(tmp_path / "m")
    common = {"closing_radius": 2, "opening_radius": 2}
    mm = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c", **common)
    vox = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c", radius_unit="voxel", **common)
    assert mm["study_0005"].mask.sum() > 0 and vox["study_0005"].mask.sum() == 0


def test_second_pass_reads_the_cache(tmp_path, monkeypatch):
    root = make(tmp_path / "m")
    load_dataset("mosmed", root=root, cache_dir=tmp_path / "c", **OPTIONS)["study_0005"]
    monkeypatch.setattr("datasets.mosmed.read_nifti", None)  # any read would fail
    again = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c", **OPTIONS)["study_0005"]
    assert isinstance(again.image, np.memmap) and isinstance(again.mask, np.memmap)


def test_nan_voxels_name_the_file(tmp_path):
    root = make(tmp_path / "m")
    bad = ct(7)
    bad[0, 0, :2] = np.nan
    save(root / "studies" / "CT-1" / "study_0007.nii.gz", bad)
    ds = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c")
    with pytest.raises(
        DatasetError, match="mosmed: studies/CT-1/study_0007.nii.gz has 2 NaN voxels"
    ):
        ds["study_0007"]


def test_mask_shape_mismatch_names_both_files(tmp_path):
    root = make(tmp_path / "m")
    save(root / "masks" / "study_0006_mask.nii.gz", np.zeros((10, 12, 6), np.uint8))
    ds = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c")
    with pytest.raises(
        DatasetError,
        match=r"shape mismatch between masks/study_0006_mask.nii.gz and "
        r"studies/CT-1/study_0006.nii.gz: \(6, 12, 10\) vs \(7, 12, 10\)",
    ):
        ds["study_0006"]


def test_mask_affine_mismatch_names_both_files(tmp_path):
    root = make(tmp_path / "m")
    shifted = AFFINE.copy()
    shifted[2, 3] = 4.0
    save(root / "masks" / "study_0006_mask.nii.gz", lesion_mask(), shifted)
    ds = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="affine mismatch between masks/study_0006_mask"):
        ds["study_0006"]


def test_no_negatives_names_the_root(tmp_path):
    root = make(tmp_path / "m", n=(0, 4))
    with pytest.raises(DatasetError, match=f"mosmed: {root}: the data set has no negative"):
        load_dataset("mosmed", root=root, cache_dir=tmp_path / "c")


def test_too_many_val_negatives(tmp_path):
    with pytest.raises(DatasetError, match="val_negatives=9 but only 4"):
        load_dataset("mosmed", root=make(tmp_path / "m"), cache_dir=tmp_path, val_negatives=9)


def test_the_default_split_is_table_3s_on_a_release_of_mosmeds_size(tmp_path):
    """Table 3: 50 + 50 validation studies (the 50 masked CT-1 studies and as many CT-0),
    634 + 204 training studies, from the release's 684 CT-1 and 254 CT-0 studies. The
    index only lists the files: empty stand-ins do."""
    root = tmp_path / "mosmed"
    for k in range(1, 255 + 684):
        folder = root / "studies" / ("CT-0" if k <= 254 else "CT-1")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"study_{k:04d}.nii.gz").touch()
    (root / "masks").mkdir()
    for k in range(255, 305):  # the release's masked studies
        (root / "masks" / f"study_{k:04d}_mask.nii.gz").touch()
    counts = load_dataset("mosmed", root=root, cache_dir=tmp_path / "c").counts()
    assert (counts["val"]["positive"], counts["val"]["negative"]) == (50, 50)
    assert (counts["train"]["positive"], counts["train"]["negative"]) == (634, 204)
    assert counts["val"]["annotated"] == 50 and counts["train"]["annotated"] == 0
