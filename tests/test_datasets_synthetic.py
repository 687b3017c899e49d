"""``synthetic``: deterministic, balanced, lesions only in positives, fast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from datasets import DatasetError, load_dataset
from datasets.base import check_options
from datasets.synthetic import SyntheticPet


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


# -- synthetic_pet: organs with uptake in both classes --------------------------------


def test_pet_without_organs_is_synthetic():
    """The organs only add to ``synthetic``: with none, the same volumes bit for bit."""
    plain = load_dataset("synthetic", n_train=4, n_val=2)
    bare = load_dataset("synthetic_pet", n_train=4, n_val=2, organs=0)
    default = load_dataset("synthetic_pet")
    assert default.options()["organs"] == 2 and len(default.ids("val")) == 16
    for i in range(6):
        assert np.array_equal(plain[i].image, bare[i].image)
        assert np.array_equal(plain[i].mask, bare[i].mask)


def _intensity_scores(name: str) -> tuple[float, float]:
    """A.7 on the image itself (the ``intensity`` baseline) over 24 validation volumes:
    (Dice, share of lesion among each positive's brightest voxels, median)."""
    from benchmark.protocol.assess import ground_truth
    from benchmark.protocol.evaluation import evaluate, summarize, tail_quantiles, threshold_grid

    ds = load_dataset(name, n_val=24)
    volumes = list(ds.volumes("val"))
    maps = [v.image[0] for v in volumes]
    grid = threshold_grid([tail_quantiles(m) for m in maps])
    summaries = [
        summarize(m, ground_truth(ds, v), grid) for m, v in zip(maps, volumes, strict=True)
    ]
    dice = evaluate(summaries, [v.label for v in volumes]).row()["dice"]
    brightest = [
        v.mask.ravel()[np.argsort(v.image[0].ravel())[-int(v.mask.sum()) :]].mean()
        for v in volumes
        if v.label
    ]
    return dice, float(np.median(brightest))


def test_pet_organs_mislead_a_threshold_on_the_image():
    """On ``synthetic`` thresholding the image finds the lesions; with the organs it finds
    organs: of a positive's brightest voxels (as many as its lesion voxels) few are lesion."""
    dice, share = _intensity_scores("synthetic")
    assert dice > 0.5 and share > 0.6
    dice, share = _intensity_scores("synthetic_pet")
    assert dice < 0.1 and share < 0.2


def _bright_share(volume) -> float:
    """The share of a volume's voxels outside its lesions brighter than 1.6 (tissue ~1)."""
    return float(((volume.image[0] > 1.6) & ~volume.mask).mean())


def test_pet_lesions_stand_out_where_they_lie_some_dimmer_than_an_organ():
    ds = load_dataset("synthetic_pet", n_train=16, n_val=0)
    plain = load_dataset("synthetic", n_train=16, n_val=0)
    # organs in both classes: more bright tissue in every volume than tubes give any
    assert min(map(_bright_share, ds.volumes())) > 0.002 > max(map(_bright_share, plain.volumes()))
    dimmer = []
    for v in ds.volumes():
        if not v.label:
            continue
        ring = ndimage.binary_dilation(v.mask, iterations=2) & ~v.mask
        assert v.image[0][v.mask].mean() > v.image[0][ring].mean() + 0.2
        labels, n = ndimage.label(v.mask)
        peaks = ndimage.maximum(v.image[0], labels, range(1, n + 1))
        dimmer += list(peaks < np.percentile(v.image[0][~v.mask], 99.9))
    assert 0 < np.mean(dimmer) < 1


def test_pet_bad_organs():
    with pytest.raises(DatasetError, match="synthetic_pet: organs"):
        load_dataset("synthetic_pet", organs=-1)


def test_pet_takes_synthetics_options_from_the_command_line():
    """``--dataset-option`` reaches the options ``synthetic_pet`` passes on to ``synthetic``."""
    options = check_options(SyntheticPet, {"difficulty": "0.6", "organs": "0", "n_train": "4"})
    assert options == {"difficulty": 0.6, "organs": 0, "n_train": 4}
    harder = load_dataset("synthetic_pet", n_val=2, **options)
    plain = load_dataset("synthetic", n_train=4, n_val=2, difficulty=0.6)
    assert harder.options()["difficulty"] == 0.6
    assert np.array_equal(harder[1].image, plain[1].image)
    with pytest.raises(DatasetError, match="unknown option.*organs, n_val, shape, n_train"):
        check_options(SyntheticPet, {"hue": "1"})
