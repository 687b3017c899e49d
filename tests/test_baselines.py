"""The baselines ``intensity`` and ``centre``: the chosen channel, a closed-form Gaussian,
the prior fitted to training lesions, and end to end: leaderboard rows, and cache entries
that follow the training masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from test_datasets_autopet import expected, study
from test_datasets_autopet import release as release  # the fixture: a tiny AutoPET release
from test_run_trust import AFFINE, CONFIG, records, run_args, write_folder

from benchmark.cli import main
from datasets import load_dataset
from datasets.base import Record, VolumeDataset
from datasets.volume import Volume
from methods import create_method, method_class
from methods.baselines import DEFAULT_SIGMA, MIN_SIGMA
from methods.registry import method_name

VOLUME = torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("options", "channel"),
    [({}, 0), ({"channel": 2}, 2), ({"channel": "b", "channels": ("a", "b", "c")}, 1)],
)
def test_intensity_is_the_chosen_channel_exactly(options, channel):
    heatmap = create_method("intensity", **options)(VOLUME, None)
    assert heatmap.dtype == torch.float32 and torch.equal(heatmap, VOLUME[channel])
    heatmap += 1  # a copy: the volume is untouched
    assert not torch.equal(heatmap, VOLUME[channel])


def test_autopet_intensity_is_suv(release, tmp_path):
    dataset = load_dataset("autopet", root=release, cache_dir=tmp_path / "cache", val_fraction=0)
    options = method_class("intensity").fit_options(dataset)
    assert options == {"channel": "suv", "channels": ["ct", "suv"]}
    volume = dataset["PETCT_0aaa/01-01-2000-NA-PET-CT Ganzkoerper-1"]
    heatmap = create_method("intensity", **options)(torch.from_numpy(np.array(volume.image)), None)
    np.testing.assert_allclose(heatmap.numpy(), expected(study(0, True)[1]) / 10, atol=1e-6)


def test_a_bad_channel_names_the_channels():
    with pytest.raises(ValueError, match="intensity: no channel 'pet' among ct, suv"):
        create_method("intensity", channel="pet", channels=("ct", "suv"))
    with pytest.raises(ValueError, match=r"intensity: no channel 2 \(0-based\) among ct, suv"):
        create_method("intensity", channel=2, channels=("ct", "suv"))
    with pytest.raises(ValueError, match="intensity: channel 3 of a volume with 3 channels"):
        create_method("intensity", channel=3)(VOLUME, None)


def gaussian_prior(shape, mean, sigma) -> np.ndarray:
    """exp(-sum_a (x_a - mean_a)^2 / (2 sigma_a^2)) on the [-1, 1]^3 voxel grid, float64."""
    axes = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return np.exp(
        -sum((x - m) ** 2 / (2 * s**2) for x, m, s in zip(axes, mean, sigma, strict=True))
    )


@pytest.mark.parametrize("shape", [(9, 12, 15), (5, 7, 3)])
def test_centre_is_the_closed_form_gaussian_on_each_volume_grid(shape):
    mean, sigma = (0.2, -0.3, 0.1), (0.3, 0.5, 0.7)
    method = create_method("centre", mean=mean, sigma=sigma)
    for seed in (0, 1):  # content-blind: any volume of the shape, no model
        volume = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed))
        heatmap = method(volume, None)
        assert heatmap.dtype == torch.float32 and heatmap.shape == shape
        np.testing.assert_allclose(heatmap, gaussian_prior(shape, mean, sigma), atol=1e-6)
    default = create_method("centre")(volume, None)
    np.testing.assert_allclose(
        default, gaussian_prior(shape, (0, 0, 0), [DEFAULT_SIGMA] * 3), atol=1e-6
    )


def test_centre_checks_its_options():
    with pytest.raises(ValueError, match="centre: sigma must be 3 positive"):
        create_method("centre", sigma=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="centre: mean must be 3 finite"):
        create_method("centre", mean=(0.0, 0.0))


class Lesions(VolumeDataset):
    """Volumes of given shapes, annotations and splits (the image is zeros)."""

    needs_root, cached = False, False

    def __init__(self, samples, annotation="mask"):
        self.samples, self.annotation = samples, annotation
        super().__init__()

    def _scan(self):
        return [
            Record(f"v{i}", label, f"v{i}", truth is not None, split)
            for i, (split, label, shape, truth) in enumerate(self.samples)
        ]

    def _load(self, record):
        split, label, shape, truth = self.samples[int(record.id[1:])]
        mask = truth if self.annotation == "mask" else None
        boxes = truth if self.annotation == "boxes" else None
        return Volume(
            record.id, np.zeros((1, *shape), np.float32), label, mask, boxes, np.eye(4), (1, 1, 1)
        )


def blob(shape, seed, fraction):
    return np.random.default_rng(seed).random(shape) < fraction


def weighted_prior(masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std, per-voxel mean) of lesion voxel coordinates, every volume weighing 1."""
    coords, weights = [], []
    for mask in masks:
        points = np.argwhere(mask) * 2.0 / (np.array(mask.shape) - 1) - 1
        coords.append(points)
        weights.append(np.full(len(points), 1 / len(points)))
    coords, weights = np.concatenate(coords), np.concatenate(weights)
    mean = np.average(coords, axis=0, weights=weights)
    std = np.sqrt(np.average((coords - mean) ** 2, axis=0, weights=weights))
    return mean, std, coords.mean(0)


def test_the_prior_is_fitted_to_the_training_lesions_each_volume_once():
    small = np.zeros((8, 10, 12), bool)
    small[1:3, 6:9, 2:4] = True
    big = blob((6, 9, 7), 1, 0.4)
    samples = [
        ("train", 1, (8, 10, 12), small),
        ("train", 1, (6, 9, 7), big),  # another shape: its own normalised grid
        ("train", 0, (6, 6, 6), np.zeros((6, 6, 6), bool)),
        ("train", 1, (6, 6, 6), np.zeros((6, 6, 6), bool)),  # a positive with an empty mask
        ("val", 1, (6, 6, 6), blob((6, 6, 6), 2, 0.5)),  # validation lesions: never used
        ("val", 0, (6, 6, 6), np.zeros((6, 6, 6), bool)),
    ]
    fitted = method_class("centre").fit_options(Lesions(samples))
    mean, std, per_voxel = weighted_prior([small, big])
    np.testing.assert_allclose(fitted["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(fitted["sigma"], std, atol=1e-6)
    assert np.abs(per_voxel - mean).max() > 0.1  # the weighting matters here


def test_boxes_count_as_their_filled_union():
    boxes = [[(1, 4, 2, 6, 0, 3), (2, 5, 4, 8, 1, 2)], [(0, 2, 0, 1, 5, 7)]]  # overlapping
    samples = [("train", 1, (6, 9, 7), b) for b in boxes]
    samples += [
        ("train", 0, (6, 9, 7), []),
        ("val", 1, (6, 6, 6), boxes[1]),
        ("val", 0, (6, 6, 6), []),
    ]
    fitted = method_class("centre").fit_options(Lesions(samples, "boxes"))
    masks = [np.zeros((6, 9, 7), bool) for _ in boxes]
    for mask, listed in zip(masks, boxes, strict=True):
        for d0, d1, h0, h1, w0, w1 in listed:
            mask[d0:d1, h0:h1, w0:w1] = True
    mean, std, _ = weighted_prior(masks)
    np.testing.assert_allclose(fitted["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(fitted["sigma"], std, atol=1e-6)


def test_one_voxel_gives_the_floor_and_no_lesion_the_default():
    point = np.zeros((5, 5, 9), bool)
    point[1, 2, 6] = True
    negative = ("train", 0, (5, 5, 9), np.zeros((5, 5, 9), bool))
    val = [("val", 1, (5, 5, 9), point), ("val", 0, (5, 5, 9), np.zeros((5, 5, 9), bool))]
    fitted = method_class("centre").fit_options(
        Lesions([("train", 1, (5, 5, 9), point), negative, *val])
    )
    assert fitted == {"mean": [-0.5, 0.0, 0.5], "sigma": [MIN_SIGMA] * 3}
    unannotated = [("train", 1, (5, 5, 9), None), negative, *val]
    assert method_class("centre").fit_options(Lesions(unannotated)) == {}


def test_baselines_have_display_names_and_come_last():
    specs = ["centre", "intensity", "my_plugin", "tomographic_layercam@2", "tonno", "layercam@1"]
    ordered = sorted(specs, key=lambda spec: method_name(spec).order)
    assert ordered == [
        "layercam@1",
        "tonno",
        "tomographic_layercam@2",
        "my_plugin",
        "intensity",
        "centre",
    ]
    assert [method_name(s).display for s in ordered[-2:]] == ["Intensity", "Centre prior"]


@pytest.mark.usefixtures("one_thread")
def test_baselines_get_rows_and_their_entries_follow_the_training_masks(tmp_path, monkeypatch):
    """A run of both on a ``folder`` copy of the synthetic set; then a training mask moves:
    the ``centre`` entries are computed again (a new prior), the ``intensity`` ones are not."""
    root = write_folder(tmp_path / "data", n_train=6, n_val=16)
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    args = run_args(root, tmp_path / "run", config, "--methods", "intensity,centre")
    assert main(args) == 0
    results = pd.read_csv(tmp_path / "run" / "results.csv").set_index("method")
    assert list(results.index) == ["intensity", "centre"]
    page = (tmp_path / "run" / "leaderboards" / "folder.md").read_text()
    assert "| Intensity " in page and "| Centre prior " in page
    assert results.loc["intensity", "dice"] > 0.5  # lesions are bright: thresholding finds them
    first = records(tmp_path / "cache")

    mask = root / "masks" / "case01.nii.gz"  # a training positive's lesion moves
    moved = np.roll(np.asarray(nib.load(mask).dataobj), 4, axis=0)
    nib.save(nib.Nifti1Image(moved, AFFINE), mask)
    assert main(args) == 0
    new = records(tmp_path / "cache") - first
    assert {p.parent.name for p in new} == {"centre"} and len(new) == 16
    again = pd.read_csv(tmp_path / "run" / "results.csv").set_index("method")
    pd.testing.assert_series_equal(again.loc["intensity"], results.loc["intensity"])
