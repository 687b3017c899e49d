"""``brain``: a FLAIR-like phantom; deterministic, balanced, small white-matter lesions
that brightness alone does not find."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from benchmark.cli import main
from datasets import DatasetError, list_datasets, load_dataset
from datasets.brain import BACKGROUND, CSF, GREY, SKULL, VENTRICLE, WHITE

FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the protocol


@pytest.fixture(scope="module")
def ds():
    return load_dataset("brain", n_train=8, n_val=8, seed=0)


@pytest.fixture(scope="module")
def samples(ds):
    """(volume, phantom) of every sample: the phantom carries the tissue map."""
    return [(ds[i], ds.phantom(ds.record(i))) for i in ds.ids()]


def white_median(volume, phantom) -> float:
    return float(np.median(volume.image[0][(phantom.tissue == WHITE) & ~volume.mask]))


def test_defaults_splits_and_alternating_labels():
    default = load_dataset("brain")
    assert default.shape == (58, 72, 62) and default.spacing == (2.5, 2.5, 2.5)
    assert default.ids("train") == [f"brain_{i:04d}" for i in range(48)]
    assert default.ids("val") == [f"brain_{i:04d}" for i in range(48, 80)]
    assert [default.label(i) for i in default.ids()[:6]] == [0, 1, 0, 1, 0, 1]
    assert default.counts()["train"] == {
        "positive": 24,
        "negative": 24,
        "annotated": 48,
        "patients": 48,
    }
    assert default.counts()["val"]["positive"] == 16 and default.channels == ("image",)


def test_volumes_are_deterministic_by_seed(ds):
    again = load_dataset("brain", n_train=8, n_val=8, seed=0)
    other = load_dataset("brain", n_train=8, n_val=8, seed=1)
    v = ds["brain_0003"]
    assert np.array_equal(v.image, again["brain_0003"].image)
    assert np.array_equal(v.mask, again["brain_0003"].mask)
    assert not np.array_equal(v.image, other["brain_0003"].image)
    assert v.image.dtype == np.float32 and v.image.shape == (1, 58, 72, 62)


def test_positives_carry_1_to_4_small_white_matter_lesions(samples):
    for v, phantom in samples:
        if v.label == 0:
            assert not v.mask.any() and v.boxes == [] and phantom.lesions == []
            continue
        components, n = ndimage.label(v.mask, FULL)
        assert 1 <= n <= 4 and n == len(v.boxes) == len(phantom.lesions)
        # one box per component: its half-open bounding box
        found = sorted(
            (s[0].start, s[0].stop, s[1].start, s[1].stop, s[2].start, s[2].stop)
            for s in ndimage.find_objects(components)
        )
        assert found == sorted(v.boxes)
        # 3-9 mm lesions; one voxel is 3.1 mm, voxelising adds a few % to the largest
        voxels = ndimage.sum(v.mask, components, range(1, n + 1))
        diameters = (6 * voxels * np.prod(v.spacing) / np.pi) ** (1 / 3)
        assert diameters.min() >= 3.0 and diameters.max() <= 9.5
        # every lesion voxel lies in the (lesion-free) white matter of the tissue map
        assert (phantom.tissue[v.mask] == WHITE).all()


def test_anatomy_has_flair_contrast(samples):
    """CSF and skull dark, cortex brighter than white matter, ventricles of varied size."""
    ventricles = []
    for v, phantom in samples:
        image, tissue = v.image[0], phantom.tissue
        wm = white_median(v, phantom)
        assert 0.8 < wm < 1.3  # tissue near 1, no normalisation
        assert np.median(image[tissue == GREY]) > wm
        for dark in (CSF, SKULL, VENTRICLE):  # thin sulci and skull: partial volume
            assert np.median(image[tissue == dark]) < 0.6 * wm
        assert np.median(image[tissue == BACKGROUND]) < 0.1
        ventricles.append((tissue == VENTRICLE).sum())
    assert max(ventricles) > 2 * min(ventricles)  # atrophy varies between subjects


def test_brightness_alone_does_not_find_the_lesions(samples):
    negatives = [(v, p) for v, p in samples if v.label == 0]
    positives = [(v, p) for v, p in samples if v.label == 1]
    lesion = np.concatenate([v.image[0][v.mask] for v, _ in positives])
    relative = np.concatenate([v.image[0][v.mask] / white_median(v, p) for v, p in positives])
    assert np.median(relative) > 1.15  # lesions are brighter than white matter ...
    tops = []
    for v, p in negatives:  # ... but every negative has voxels as bright
        top = np.percentile(v.image[0][p.tissue != BACKGROUND], 99.9)
        tops.append(top)
        assert top / white_median(v, p) >= np.median(relative)
    assert np.median(tops) >= np.median(lesion)
    shares = []  # of a positive's N brightest voxels (N = its mask's size), lesion voxels
    for v, _ in positives:
        top = np.argsort(v.image[0], axis=None)[-int(v.mask.sum()) :]
        shares.append(v.mask.reshape(-1)[top].mean())
    assert max(shares) < 0.5 and np.median(shares) < 0.1
    # nor does a volume's brightest voxel tell its label (near chance)
    labels = [v.label for v, _ in samples]
    assert roc_auc_score(labels, [v.image.max() for v, _ in samples]) < 0.8


def test_lesion_contrast_scales_the_lesions_only():
    kw = dict(n_train=2, n_val=2, seed=3)
    low, mid, high = (load_dataset("brain", lesion_contrast=c, **kw) for c in (0.5, 1.0, 2.0))
    assert np.array_equal(low["brain_0000"].image, high["brain_0000"].image)  # a negative
    a, b, c = (d["brain_0001"] for d in (low, mid, high))
    assert np.array_equal(a.mask, c.mask) and a.boxes == c.boxes
    # same anatomy and noise: the images differ only near the lesions (their blurred
    # profile spreads a few voxels beyond the mask)
    far = ~ndimage.binary_dilation(a.mask, FULL, iterations=8)
    assert np.array_equal(a.image[0][far], c.image[0][far])
    outside = ~ndimage.binary_dilation(a.mask, FULL, iterations=3)
    assert np.abs(c.image[0] - a.image[0])[outside].max() < 0.02
    # the lesion's excess is linear in the contrast: 0.5 -> 1 adds half of 1 -> 2
    step1 = (b.image[0] - a.image[0])[a.mask].mean()
    step2 = (c.image[0] - b.image[0])[a.mask].mean()
    assert step1 > 0.02 and step2 == pytest.approx(2 * step1, rel=0.15)


def test_lesion_size_scales_the_lesions_diameters():
    kw = dict(n_train=2, n_val=8, seed=3)
    small, large = (load_dataset("brain", lesion_size=s, **kw) for s in (1.0, 2.5))
    assert large.options()["lesion_size"] == 2.5 and small.options()["lesion_size"] == 1.0
    assert np.array_equal(small["brain_0002"].image, large["brain_0002"].image)  # a negative
    for i in small.ids("val")[1::2]:
        a, b = (d.phantom(d.record(i)) for d in (small, large))
        # the first lesion's diameter is drawn first: the same draw, 2.5 x the size
        assert b.lesions[0]["diameter"] == pytest.approx(2.5 * a.lesions[0]["diameter"])
        diameters = [x["diameter"] for x in b.lesions]
        assert 7.5 <= min(diameters) <= max(diameters) <= 22.5
        # 2.5 ** 3 = 15.6 x the volume, less where the mask leaves the white matter
        assert b.mask.sum() > 4 * a.mask.sum()


def test_the_lesion_signal_is_each_lesion_above_its_lesion_free_twin():
    kw = dict(n_train=2, n_val=2, seed=3)
    single, double = (load_dataset("brain", lesion_contrast=c, **kw) for c in (1.0, 2.0))
    peaks, background = single.lesion_signal("brain_0001")
    assert len(peaks) == len(single["brain_0001"].boxes)  # one component per lesion
    # the twin differs only in the lesions' contrast: their lift doubles with it, against
    # the same background
    twice, same = double.lesion_signal("brain_0001")
    assert same == background and 2.5 < background < 8.0  # the max of a few 1e4 voxels, in sigmas
    assert twice == pytest.approx([2 * p for p in peaks], rel=0.1)
    assert min(peaks) > 0.5
    # a negative: no lesion, its own image the background
    assert single.lesion_signal("brain_0000")[0] == []


@pytest.mark.parametrize(
    "options, message",
    [
        ({"shape": (8, 72, 62)}, "shape must be 3 sizes >= 16"),
        ({"n_train": 1}, "need n_train >= 2"),
        ({"lesion_contrast": 0.0}, r"lesion_contrast must be in \(0, 10\]"),
        ({"lesion_size": 6.0}, r"lesion_size must be in \(0, 5\]"),
    ],
)
def test_options_are_checked(options, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset("brain", **options)


def test_other_shapes_sample_the_same_field_of_view():
    ds = load_dataset("brain", shape=(29, 36, 31), n_train=2, n_val=0)
    v = ds["brain_0001"]
    assert v.image.shape == (1, 29, 36, 31) and v.spacing == (5.0, 5.0, 5.0)
    centre = v.affine @ np.array([14.0, 17.5, 15.0, 1.0])
    assert np.allclose(centre[:3], 0) and np.allclose(np.abs(v.affine[:3, :3]).sum(0), 5.0)


def test_registered_and_inspected(capsys):
    assert "brain" in list_datasets() and list_datasets("br*") == ["brain"]
    assert main(["inspect", "--dataset", "brain"]) == 0
    out = capsys.readouterr().out
    assert "dataset brain: generated in code" in out
    assert "|  58 |  72 |  62 |" in out.replace("| train   ", "")
