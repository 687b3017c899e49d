"""``bench train``: the ways to run a training step it compares, and the learning report."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train_trust import EARLY, BlobSet

import benchmark.training.estimate as estimates
import benchmark.training.train as training
from benchmark.bench.training import (
    StepVariant,
    auc_ceiling,
    bench_learning,
    bench_training_step,
    lesion_slice_share,
    slice_loss_floor,
    validation_ceiling,
)


class Masks:
    """Positives with their masks (None: not annotated) and maskless negatives, in every
    split: what the lesion counts of ``bench train --learn`` read."""

    def __init__(self, positives: dict, negatives: list):
        self.masks, self.negatives = positives, negatives

    def ids(self, split=None):
        return [*self.masks, *self.negatives]

    def label(self, i):
        return int(i in self.masks)

    def __getitem__(self, i):
        return SimpleNamespace(mask=self.masks.get(i))


def test_each_step_variant_runs_the_step_it_names(monkeypatch):
    seen = []
    real = training.train_step

    def recording(model, optimizer, scheduler, inputs, labels, *args, **kwargs):
        conv = next(
            m
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.in_channels > 1
        )
        channels_last = conv.weight.stride(1) == 1  # channels innermost
        seen.append((kwargs["precision"], len(inputs), channels_last))
        return real(model, optimizer, scheduler, inputs, labels, *args, **kwargs)

    monkeypatch.setattr(estimates, "train_step", recording)
    variants = (
        StepVariant("float32"),
        StepVariant("bf16", "bfloat16"),
        StepVariant("channels_last", channels_last=True),
        StepVariant("bf16, 2x", "bfloat16", batch_factor=2),
    )
    config = dataclasses.replace(EARLY, batch_volumes=2, slices_per_volume=4)
    timings = bench_training_step(config, BlobSet(3.0), torch.device("cpu"), variants, repeats=2)
    assert [t.variant for t in timings] == list(variants)
    assert [t.slices for t in timings] == [8, 8, 8, 16]
    assert all(t.seconds > 0 and t.compile_seconds is None for t in timings)
    # a warm-up and 2 timed steps each, in turn: the inputs each variant names
    expected = [
        ("float32", 8, False),
        ("bfloat16", 8, False),
        ("float32", 8, True),
        ("bfloat16", 16, False),
    ]
    assert seen == expected + expected * 2


@pytest.mark.slow
def test_the_learning_report_finds_the_step_an_easy_set_is_learned_at_and_not_a_blank_one():
    config = dataclasses.replace(EARLY, iterations=40)
    easy, blank = BlobSet(3.0, n_val=16), BlobSet(0.0, n_val=16)
    (learned,) = bench_learning(config, easy, torch.device("cpu"), seeds=[0], target=0.9)
    (chance,) = bench_learning(config, blank, torch.device("cpu"), seeds=[0], target=0.9)
    assert learned.target_step is not None and learned.target_step % config.val_every == 0
    assert learned.target_step <= learned.step and learned.target_minutes <= learned.minutes
    assert learned.report["auc"] >= 0.9 and not learned.report["at_chance"]
    assert chance.target_step is None and chance.target_minutes is None
    assert chance.step == config.iterations  # at chance: trained to the cap


def test_the_share_of_slices_that_cut_a_lesion_is_the_share_of_offsets_inside_a_ball():
    """A ball of radius 0.5 at the centre: a slice at offset s cuts it iff |s| < 0.5, in
    every direction, whatever its in-plane shift and zoom: 16 of 32 offsets."""
    n = 33
    axis = torch.linspace(-1, 1, n)
    radius = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None] ** 2).sqrt()
    ball = (radius < 0.5).numpy()

    config = dataclasses.replace(EARLY, slices_per_volume=32, slice_size=48)
    positives = Masks({"a": ball, "b": ball}, negatives=["c"])
    share = lesion_slice_share(config, positives, volumes=2, draws=8)
    offsets = torch.linspace(-1, 1, 32)
    assert share == pytest.approx(float((offsets.abs() < 0.5).float().mean()), abs=1 / 32)


def test_a_lesion_between_the_validation_slices_caps_the_auc_a_perfect_classifier_reaches():
    """Validation offsets s_m = 2m/(M-1) - 1: 16 per axis leave |s| < 1/15 uncut, so a ball
    of radius 0.06 at the centre is missed on all three axes, while 15 cut it at s = 0;
    a ball of radius 0.5 is cut either way. A missed positive ties with the negatives."""
    n = 65
    axis = torch.linspace(-1, 1, n)
    radius = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None] ** 2).sqrt()
    masks = {"small": (radius < 0.06).numpy(), "large": (radius < 0.5).numpy(), "none": None}
    balls = Masks(masks, negatives=["negative"])
    sixteen = dataclasses.replace(EARLY, val_slices=16, slice_size=48)
    assert validation_ceiling(sixteen, balls) == (1, 2)  # the unannotated one not counted
    assert validation_ceiling(dataclasses.replace(sixteen, val_slices=15), balls) == (2, 2)
    assert auc_ceiling(1, 2) == 0.75 and auc_ceiling(2, 2) == 1.0
    assert auc_ceiling(15, 16) == pytest.approx(0.96875)


def test_the_training_estimate_counts_the_volumes_every_validation_scores():
    config = dataclasses.replace(EARLY, iterations=10, batch_volumes=2, slices_per_volume=4)
    data = BlobSet(3.0, n_val=6)  # 32 training volumes, 4 + 4 held out
    estimate = estimates.training_estimate(config, data, "cpu")
    # the holdout at steps 4, 8 and 10 (the last), the evaluation split once at the end
    assert (estimate.iterations, estimate.validated) == (10, 3 * 8 + 6)
    assert estimate.s_per_step > 0 and estimate.s_per_validated > 0
    assert estimate.seconds == pytest.approx(
        10 * estimate.s_per_step + 30 * estimate.s_per_validated
    )
    without = estimates.training_estimate(dataclasses.replace(config, holdout=0.0), data, "cpu")
    assert without.validated == 3 * 6  # the evaluation split at each


def test_early_stopping_is_priced_at_twice_its_fewest_steps_below_the_cap():
    data = BlobSet(3.0, n_val=6)
    config = dataclasses.replace(EARLY, iterations=200, batch_volumes=2, slices_per_volume=4)
    # a window of 1 then patience 3 validations, every 4 steps: 16 steps at the fewest
    estimate = estimates.training_estimate(config, data, "cpu")
    assert (estimate.iterations, estimate.cap) == (32, 200)
    assert estimate.validated == 8 * 8 + 6  # holdout at steps 4, 8, ..., 32; then the split
    fixed = estimates.training_estimate(dataclasses.replace(config, patience=0), data, "cpu")
    assert (fixed.iterations, fixed.cap) == (200, None)  # no early stopping: the count


@pytest.mark.parametrize("share", [0.0, 0.065, 0.275, 0.5])
def test_the_slice_loss_floor_is_the_best_loss_any_classifier_reaches(share):
    """Oracle: minimise A.6's expected loss over what a classifier says on slices without
    a lesion (a perfect detector says 1 on the rest; they cost nothing)."""
    from scipy.optimize import minimize_scalar

    def expected(p):  # a positive's lesion-free slices say 1, a negative's all say 0
        return ((1 - share) * -np.log(p) + -np.log(1 - p)) / 2

    best = minimize_scalar(expected, bounds=(1e-9, 1 - 1e-9), method="bounded").fun
    assert slice_loss_floor(share) == pytest.approx(best, abs=1e-6)
    assert slice_loss_floor(0.0) == pytest.approx(np.log(2))
    assert slice_loss_floor(1.0) == 0.0  # every positive slice cuts a lesion: no noise


def test_the_learning_report_says_what_the_labels_and_the_validation_slices_allow(capsys):
    from benchmark.cli import main

    options = ["n_train=4", "n_val=4", "shape=[24,28,26]"]
    args = ["bench", "train", "--learn", "--dataset", "brain", "--device", "cpu"]
    args += [x for option in options for x in ("--dataset-option", option)]
    args += ["--set", "train.iterations=1", "train.holdout=0", "train.patience=0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    share, per_step = re.search(r"cut a lesion: ([\d.]+) \(([\d.]+) a step, of 32\)", out).groups()
    assert float(per_step) == pytest.approx(32 * float(share), abs=0.05)  # 1 positive of B = 2
    cut, positives, ceiling = re.search(
        r"validation slice cuts \(16 per axis\): (\d) of (\d); a perfect slice classifier's"
        r" AUC: at most ([\d.]+)",
        out,
    ).groups()
    assert int(positives) == 2 and float(ceiling) == pytest.approx(auc_ceiling(int(cut), 2))
