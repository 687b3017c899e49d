"""``synthetic``: deterministic, balanced, lesions only in positives, fast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from datasets import DatasetError, load_dataset


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", n_train=8, n_val=4, seed=0)


def test_defaults_and_balanced_splits(ds):
    default = load_dataset("synthetic")
    assert default.shape == (32, 64, 64) and len(default.ids("train")) == 48
    assert len(default.ids("val")) == 24 and default.channels == ("image",)
    assert ds.counts()["train"] == {"positive": 4, "negative": 4, "annotated": 8, "patients": 8}
    assert ds.counts()["val"]["positive"] == 2 and ds.counts()["val"]["negative"] == 2


def test_volumes_are_deterministic_by_seed(ds):
    again = load_dataset("synthetic", n_train=8, n_val=4, seed=0)
    other = load_dataset("synthetic", n_train=8, n_val=4, seed=1)
    v = ds["synthetic_0001"]
    assert np.array_equal(v.image, again["synthetic_0001"].image)
    assert not np.array_equal(v.image, other["synthetic_0001"].image)
    assert v.image.dtype == np.float32 and v.image.shape == (1, 32, 64, 64)


def test_positives_carry_1_to_3_lesions_with_matching_masks_and_boxes(ds):
    for sample_id in ds.ids():
        v = ds[sample_id]
        assert v.label == ds.label(sample_id) and ds.has_annotation(sample_id)
        if v.label == 0:
            assert not v.mask.any() and v.boxes == []
            continue
        assert 1 <= len(v.boxes) <= 3
        covered = np.zeros_like(v.mask)
        for d0, d1, h0, h1, w0, w1 in v.boxes:
            assert 0 <= d0 < d1 <= 32 and 0 <= h0 < h1 <= 64 and 0 <= w0 < w1 <= 64
            covered[d0:d1, h0:h1, w0:w1] = True
            assert v.mask[d0:d1, h0:h1, w0:w1].any()
        assert not (v.mask & ~covered).any()  # every lesion voxel lies in a box
        # lesions lie inside the unit ball of the [-1, 1]^3 volume
        coords = [np.linspace(-1, 1, n) for n in v.mask.shape]
        z, y, x = np.meshgrid(*coords, indexing="ij")
        assert (z**2 + y**2 + x**2)[v.mask].max() < 1.0
        # and are brighter than the tissue around them (smooth edge, visible contrast)
        ring = ndimage.binary_dilation(v.mask, iterations=2) & ~v.mask
        assert v.image[0][v.mask].mean() > v.image[0][ring].mean() + 0.2


def test_distractors_make_brightness_useless(ds):
    """Negatives reach the intensities of positives: bright tubes are in both classes."""
    top = {0: [], 1: []}
    for sample_id in ds.ids():
        v = ds[sample_id]
        top[v.label].append(np.percentile(v.image, 99.9))
    assert min(top[0]) > 0.8 * np.median(top[1])


def test_options_channels_shape_difficulty():
    ds = load_dataset("synthetic", n_train=2, n_val=2, channels=3, shape=(16, 24, 20))
    v = ds["synthetic_0001"]
    assert ds.channels == ("ch0", "ch1", "ch2") and v.image.shape == (3, 16, 24, 20)
    assert v.mask.shape == (16, 24, 20) and v.spacing == (1.5, 1.0, 1.2)
    hard = load_dataset("synthetic", n_train=8, n_val=4, difficulty=1.0)
    easy = load_dataset("synthetic", n_train=8, n_val=4, difficulty=0.0)
    size = [np.mean([d[i].mask.sum() for i in d.ids() if d.label(i)]) for d in (hard, easy)]
    assert size[0] < 0.5 * size[1]


def test_affine_centres_the_volume(ds):
    v = ds[0]
    centre = v.affine @ np.array([15.5, 31.5, 31.5, 1.0])
    assert np.allclose(centre[:3], 0) and np.allclose(np.abs(v.affine[:3, :3]).sum(0), v.spacing)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"root": "/data"}, "takes no root"),
        ({"difficulty": 2}, "difficulty"),
        ({"shape": (4, 64, 64)}, "shape"),
        ({"n_train": 1}, "n_train"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset("synthetic", **options)
