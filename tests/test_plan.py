"""The run plan: each method's stated work equals the slices it really pushes through the
classifier (counted by hooks on a tiny model), and the budget leaves out what it should."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from benchmark.config import PRESETS, RunConfig
from benchmark.plan import (
    Calibration,
    calibrate,
    family_passes,
    format_plan,
    layer_channels,
    named_outright,
    plan,
    plan_run,
    seconds,
    within_budget,
)
from benchmark.train import TrainingEstimate
from methods import Method, Passes, create_method, list_methods, register_method
from methods.config import TomographyConfig
from methods.heatmaps import compute_heatmaps
from methods.registry import METHODS

TINY = TomographyConfig(n_angles=4, n_angles_cam=3, n_slices=4, slice_size=32, chunk=2)
SHAPE = (5, 6, 7)
CHANNELS = (4, 8, 8, 8)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=1, in_chans=2, channels=CHANNELS)
    return model.eval()


@contextmanager
def counted(model, monkeypatch):
    """{forward, backward, cut}: slices through ``model`` (a forward hook on the whole
    model), slices whose logit gradient flows back (a tensor hook on its output), and
    slices cut from the volume (a wrapper around extract_slices)."""
    from methods import tomography

    counts = {"forward": 0, "backward": 0, "cut": 0}

    def on_backward(grad):
        counts["backward"] += len(grad)

    def on_forward(module, args, output):
        counts["forward"] += len(args[0])
        if output.requires_grad:
            output.register_hook(on_backward)

    extract = tomography.extract_slices

    def counting_extract(*args, **kwargs):
        slices = extract(*args, **kwargs)
        counts["cut"] += slices.shape[0] * slices.shape[1]
        return slices

    monkeypatch.setattr(tomography, "extract_slices", counting_extract)
    handle = model.register_forward_hook(on_forward)
    try:
        yield counts
    finally:
        handle.remove()


D, H, W = SHAPE
L, LC, M = TINY.n_angles, TINY.n_angles_cam, TINY.n_slices
CLOSED_FORMS = {  # spec: (forward, backward), written from the paper's definitions
    "tonno": (L * (M + 2), 0),  # eq. (9) needs m = -1..M
    "layercam@1": (D, D),  # axial slices, one forward + backward each
    "layercam_3axis@1": (D + H + W, D + H + W),
    "averaged_layercam@1": (LC * M, LC * M),  # eq. (12) needs no padding slice
    "tomographic_layercam@1": (LC * (M + 2), LC * (M + 2)),
    "scorecam@1": (D * (1 + CHANNELS[0]), 0),  # one pass + one per channel's mask
    "scorecam@2": (D * (1 + CHANNELS[1]), 0),
    "pgc_eigencam@1": (D, 0),
    "pgc_hirescam@1": (D, D),
}


@pytest.mark.parametrize("spec", sorted(CLOSED_FORMS))
def test_stated_passes_are_what_the_method_does(spec, tiny_model, monkeypatch):
    method = create_method(spec, config=TINY, batch_size=16)
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    with counted(tiny_model, monkeypatch) as counts:
        method(volume, tiny_model)
    assert (counts["forward"], counts["backward"]) == CLOSED_FORMS[spec]
    stated = method.passes(SHAPE, CHANNELS[method.layer - 1] if method.layer else None)
    assert (stated.forward, stated.backward, stated.cut) == (
        counts["forward"],
        counts["backward"],
        counts["cut"],
    )


def test_a_gradient_family_shares_one_pass_for_its_four_layers(tiny_model, monkeypatch):
    specs = [f"tomographic_layercam@{k}" for k in (1, 2, 3, 4)]
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(1))
    with counted(tiny_model, monkeypatch) as counts:
        dict(compute_heatmaps(specs, volume, tiny_model, TINY, batch_size=16))
    methods = [create_method(s, config=TINY) for s in specs]
    work = family_passes(methods, SHAPE, dict(enumerate(CHANNELS, 1)))
    assert (work.forward, work.backward) == (LC * (M + 2), LC * (M + 2))
    assert (counts["forward"], counts["backward"], counts["cut"]) == (
        work.forward,
        work.backward,
        work.cut,
    )


def test_scorecam_layers_add_up(tiny_model):
    methods = [create_method(f"scorecam@{k}", config=TINY) for k in (1, 2, 3, 4)]
    work = family_passes(methods, SHAPE, dict(enumerate(CHANNELS, 1)))
    assert work.forward == D * (4 + sum(CHANNELS)) and work.backward == 0


BASELINES = ("intensity", "centre")  # no classifier pass


@pytest.mark.parametrize("spec", sorted(set(list_methods(specs=True)) - set(BASELINES)))
def test_every_registered_spec_states_a_positive_cost(spec):
    method = create_method(spec)
    passes = method.passes((30, 40, 50), channels=64)
    assert isinstance(passes, Passes)
    if method.classifier == "3d":  # whole volumes through the volume classifier
        assert passes.forward == passes.backward == passes.cut == 0
        forward, backward = passes.volume_forward, passes.volume_backward
    else:
        assert passes.volume_forward == passes.volume_backward == 0
        forward, backward = passes.forward, passes.backward
    assert forward > 0 and 0 <= backward <= forward


def test_baselines_cost_nothing_and_the_budget_never_leaves_them_out(tiny_model):
    frame = plan([*BASELINES, "tonno"], [SHAPE], tiny_model, TINY, 16, PRICES)
    baselines = frame[frame.family.isin(BASELINES)]
    assert (baselines.forward == 0).all() and (baselines.hours == 0).all()
    heatmap_mb = math.prod(SHAPE) * 4 / 2**20  # their peak: one float32 heatmap
    assert baselines.peak_mb.to_list() == pytest.approx([heatmap_mb] * 2)
    assert frame.iloc[-1]["hours"] == frame[frame.family == "tonno"].hours.item()
    kept, left_out = within_budget(frame, budget_hours=0.0)
    assert kept == list(BASELINES) and list(left_out) == ["tonno"]


def test_paper_settings_tomographic_scorecam_at_layer_4():
    passes = create_method("tomographic_scorecam@4").passes((100, 200, 200), channels=512)
    assert passes.forward == 1000 * 102 * 513  # ~102,000 slices x (1 + 512) passes


def test_layer_channels_reads_the_stages(tiny_model):
    assert layer_channels(tiny_model, 2, 32) == dict(enumerate(CHANNELS, 1))


PRICES = Calibration(
    device="test",
    in_chans=2,
    slice_size=32,
    batch_size=16,
    forward_s=1e-3,
    backward_s=3e-3,
    cut_s=1e-5,
    read_s=1e-9,
    peak_memory_mb=10.0,
)


def test_seconds_are_the_priced_sum():
    passes = Passes(forward=100, backward=40, cut=50, backprojected=10**6)
    assert seconds(passes, PRICES) == pytest.approx(60e-3 + 120e-3 + 50e-5 + 1e-3)


def test_plan_rows_and_hours(tiny_model):
    shapes = [SHAPE, (7, 6, 5)]
    frame = plan(["tonno", "layercam@1", "layercam@2"], shapes, tiny_model, TINY, 16, PRICES)
    assert list(frame["family"]) == ["tonno", "layercam", "total"]
    tonno = frame.iloc[0]
    expected = sum(seconds(create_method("tonno", config=TINY).passes(s), PRICES) for s in shapes)
    assert tonno["hours"] == pytest.approx(expected / 3600)
    assert tonno["forward"] == L * (M + 2)
    layercam = frame.iloc[1]
    assert layercam["forward"] == pytest.approx(np.mean([D, 7]))  # one shared pass, mean D
    assert layercam["specs"] == ("layercam@1", "layercam@2")
    assert frame.iloc[2]["hours"] == pytest.approx(frame["hours"][:2].sum())
    assert tonno["summary_kb"] > 0 and tonno["heatmap_mb"] == pytest.approx(
        210 * 4 / 2**20
    )  # float32, as kept


def test_budget_leaves_an_expensive_family_out_of_all_but_runs_it_when_named(tiny_model):
    specs = ["layercam@1", "tomographic_scorecam@1", "tomographic_scorecam@2"]
    frame = plan(specs, [SHAPE] * 100, tiny_model, TINY, 16, PRICES)
    hours = dict(zip(frame["family"], frame["hours"], strict=True))
    budget = math.sqrt(hours["layercam"] * hours["tomographic_scorecam"])
    kept, left_out = within_budget(frame, budget)
    assert kept == ["layercam@1"]
    assert set(left_out) == {"tomographic_scorecam@1", "tomographic_scorecam@2"}
    reason = left_out["tomographic_scorecam@1"]
    assert reason.startswith("tomographic_scorecam: ") and f"> budget {budget:g} h" in reason
    kept, left_out = within_budget(frame, budget, named_specs=["tomographic_scorecam@2"])
    assert kept == ["layercam@1", "tomographic_scorecam@2"]
    assert set(left_out) == {"tomographic_scorecam@1"}
    table = format_plan(frame, PRICES, left_out)
    assert "| tomographic_scorecam" in table and reason in table
    training = {"3d classifier resnet10_3d": TrainingEstimate(s_per_step=0.6, iterations=150)}
    table = format_plan(frame, PRICES, left_out, training)
    assert "training 3d classifier resnet10_3d: 0.60 s / step x 150 steps (cap) = 0.03 h" in table


def test_a_plugin_of_unknown_cost_is_shown_unknown_and_kept(tiny_model):
    @register_method("plan_test_plugin")
    class Plugin(Method):
        def __call__(self, volume, model):
            return volume[0]

    try:
        frame = plan(["plan_test_plugin", "tonno"], [SHAPE], tiny_model, TINY, 16, PRICES)
        assert math.isnan(frame.iloc[0]["hours"])
        kept, left_out = within_budget(frame, budget_hours=0.0)
        assert kept == ["plan_test_plugin"] and set(left_out) == {"tonno"}
        assert "unknown" in format_plan(frame).splitlines()[2]
    finally:
        METHODS._entries.pop("plan_test_plugin", None)


def test_calibration_measures_positive_prices(tiny_model):
    prices = calibrate(tiny_model, 2, 32, 8, torch.device("cpu"), shape=(8, 8, 8), repeats=1)
    assert min(prices.forward_s, prices.backward_s, prices.cut_s, prices.read_s) > 0
    assert prices.peak_memory_mb is None or prices.peak_memory_mb > 0


def test_every_preset_has_a_budget():
    assert all(config.budget_hours > 0 for config in PRESETS[RunConfig].values())


def test_named_outright_are_names_and_specs_not_all_or_wildcards():
    assert named_outright(["all", "tomographic_scorecam@2", "*cam@1"]) == ["tomographic_scorecam@2"]
    assert named_outright(["scorecam"]) == [f"scorecam@{k}" for k in (1, 2, 3, 4)]
    assert named_outright(["all,tonno"]) == ["tonno"] and named_outright(["all"]) == []


def test_plan_run_keeps_named_specs_and_prices_the_rest(tiny_model):
    frame, prices, kept, left_out = plan_run(
        ["layercam@1", "tonno"], [SHAPE], tiny_model, TINY, 8, torch.device("cpu"), 0.0, 2
    )
    assert kept == ["layercam@1", "tonno"] and not left_out  # named outright
    assert prices.slice_size == TINY.slice_size and frame.iloc[-1]["family"] == "total"
