"""The run plan: each method's stated work equals the slices it really pushes through the
classifier (counted by hooks on a tiny model), and the budget leaves out what it should."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from benchmark.config import PRESETS, RunConfig, Train3DConfig, TrainConfig, resolve
from benchmark.run.plan import (
    ALWAYS_IN_ALL,
    format_plan,
    layer_channels,
    named_outright,
    plan,
    plan_run,
    within_budget,
)
from benchmark.run.prices import (
    BACKWARD_FORWARDS,
    CUT_FORWARDS,
    READS_PER_FORWARD_PIXEL,
    Calibration,
    calibrate,
    counted_prices,
    seconds,
    shared_passes,
    split_seconds,
)
from benchmark.training.estimate import TrainingEstimate
from methods import Method, Passes, create_method, expand_specs, list_methods, register_method
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
    work = shared_passes(methods, SHAPE, dict(enumerate(CHANNELS, 1)))
    assert (work.forward, work.backward) == (LC * (M + 2), LC * (M + 2))
    assert (counts["forward"], counts["backward"], counts["cut"]) == (
        work.forward,
        work.backward,
        work.cut,
    )


def test_an_axial_scorecam_beside_a_3axis_cam_runs_on_its_own_axis(tiny_model, monkeypatch):
    specs = ["scorecam@1", "layercam_3axis@1"]
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(3))
    with counted(tiny_model, monkeypatch) as counts:
        dict(compute_heatmaps(specs, volume, tiny_model, TINY, batch_size=16))
    methods = [create_method(s, config=TINY) for s in specs]
    work = shared_passes(methods, SHAPE, dict(enumerate(CHANNELS, 1)))
    expected = (D * (1 + CHANNELS[0]) + D + H + W, D + H + W)
    assert (counts["forward"], counts["backward"]) == (work.forward, work.backward) == expected


def test_scorecam_layers_add_up(tiny_model):
    methods = [create_method(f"scorecam@{k}", config=TINY) for k in (1, 2, 3, 4)]
    work = shared_passes(methods, SHAPE, dict(enumerate(CHANNELS, 1)))
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
    frame = plan([*BASELINES, "gradcam@1"], [SHAPE], tiny_model, TINY, 16, PRICES)
    kept, left_out = within_budget(frame, 0.0)
    assert kept == list(BASELINES) and list(left_out) == ["gradcam@1"]


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
    assert list(frame["family"]) == ["tonno", "layercam", "heatmaps", "total"]
    tonno = frame.iloc[0]
    expected = sum(seconds(create_method("tonno", config=TINY).passes(s), PRICES) for s in shapes)
    assert tonno["hours"] == pytest.approx(expected / 3600)
    assert tonno["forward"] == L * (M + 2)
    layercam = frame.iloc[1]
    assert layercam["forward"] == pytest.approx(np.mean([D, 7]))  # one shared pass, mean D
    assert layercam["specs"] == ("layercam@1", "layercam@2")
    assert frame.iloc[-1]["hours"] == pytest.approx(frame["hours"][:2].sum())  # no sharing
    assert tonno["summary_kb"] > 0 and tonno["heatmap_mb"] == pytest.approx(
        210 * 4 / 2**20
    )  # float32, as kept


def test_budget_leaves_an_expensive_family_out_of_all_but_runs_it_when_named(tiny_model):
    specs = ["layercam@1", "tomographic_scorecam@1", "tomographic_scorecam@2"]
    frame = plan(specs, [SHAPE] * 100, tiny_model, TINY, 16, PRICES)
    work = dict(zip(frame["family"], frame["work"], strict=True))
    budget = math.sqrt(work["layercam"] * work["tomographic_scorecam"])
    kept, left_out = within_budget(frame, budget)
    assert kept == ["layercam@1"]
    assert set(left_out) == {"tomographic_scorecam@1", "tomographic_scorecam@2"}
    reason = left_out["tomographic_scorecam@1"]
    assert reason.startswith("tomographic_scorecam: ") and f"> budget {budget:,.0f}" in reason
    kept, left_out = within_budget(frame, budget, named_specs=["tomographic_scorecam@2"])
    assert kept == ["layercam@1", "tomographic_scorecam@2"]
    assert set(left_out) == {"tomographic_scorecam@1"}
    table = format_plan(frame, PRICES, left_out)
    assert "| tomographic_scorecam" in table and reason in table
    training = {"3d classifier resnet10_3d": TrainingEstimate(0.6, 150, 0.5, 36)}
    table = format_plan(frame, PRICES, left_out, training)
    assert (
        "training 3d classifier resnet10_3d: 0.60 s / step x 150 steps + 0.50 s x 36"
        " validated volumes = 0.03 h a classifier, before the methods\n" in table + "\n"
    )
    early = {"2d classifier r": TrainingEstimate(0.6, 600, 0.5, 36, cap=4000)}
    assert (
        "x 600 steps + 0.50 s x 36 validated volumes = 0.10 h a classifier, before the methods"
        " (600 steps: twice the fewest early stopping takes; at most 4000 steps, 0.67 h of"
        " steps," in format_plan(frame, PRICES, left_out, early)
    )


def test_a_plugin_of_unknown_cost_is_shown_unknown_and_kept(tiny_model):
    @register_method("plan_test_plugin")
    class Plugin(Method):
        def __call__(self, volume, model):
            return volume[0]

    try:
        frame = plan(["plan_test_plugin", "tonno"], [SHAPE], tiny_model, TINY, 16, PRICES)
        assert math.isnan(frame.iloc[0]["hours"])
        kept, left_out = within_budget(frame, 0.0)
        assert kept == ["plan_test_plugin", "tonno"] and not left_out  # tonno: always
        assert "unknown" in format_plan(frame).splitlines()[2]
    finally:
        METHODS._entries.pop("plan_test_plugin", None)


def test_calibration_measures_positive_prices(tiny_model):
    prices = calibrate(tiny_model, 2, 32, 8, torch.device("cpu"), shape=(8, 8, 8), repeats=1)
    assert min(prices.forward_s, prices.backward_s, prices.cut_s, prices.read_s) > 0
    assert prices.peak_memory_mb is None or prices.peak_memory_mb > 0


def test_every_preset_has_a_budget():
    assert all(config.budget_passes > 0 for config in PRESETS[RunConfig].values())


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


def test_the_budget_counts_work_and_never_leaves_the_papers_methods_out():
    families = [  # family, specs, counted work per volume (forward-equivalents)
        ("tonno", ("tonno",), 5000.0),
        ("averaged_layercam", ("averaged_layercam@1", "averaged_layercam@2"), 4000.0),
        ("tomographic_layercam", ("tomographic_layercam@4",), 4200.0),
        ("layercam", ("layercam@1",), 76.0),
        ("scorecam", ("scorecam@1", "scorecam@2"), 30_000.0),
        ("my_plugin", ("my_plugin",), math.nan),  # unknown cost
        ("heatmaps", ("tonno", "layercam@1"), 1e9),  # stage rows are not families
        ("total", ("tonno", "layercam@1"), 1e9),
    ]
    frame = pd.DataFrame(families, columns=["family", "specs", "work"])
    paper = ["tonno", "averaged_layercam@1", "averaged_layercam@2", "tomographic_layercam@4"]
    kept, left_out = within_budget(frame, 1.0)  # a tiny budget
    assert kept == [*paper, "my_plugin"]
    assert left_out == {
        "layercam@1": "layercam: 76 passes / volume > budget 1",
        "scorecam@1": "scorecam: 30,000 passes / volume > budget 1",
        "scorecam@2": "scorecam: 30,000 passes / volume > budget 1",
    }
    kept, left_out = within_budget(frame, 10_000, named_specs=["scorecam@2"])
    assert kept == [*paper[:3], paper[3], "layercam@1", "scorecam@2", "my_plugin"]
    assert list(left_out) == ["scorecam@1"]
    assert set(ALWAYS_IN_ALL) <= set(list_methods())  # the rule names real families


def test_what_all_keeps_does_not_depend_on_the_measured_prices(tiny_model):
    busy = dataclasses.replace(  # a CPU ten times slower, as a loaded machine measures
        PRICES, **{f: 10 * getattr(PRICES, f) for f in ("forward_s", "backward_s", "cut_s")}
    )
    specs = [s for s in expand_specs(["all"]) if create_method(s).classifier == "2d"]
    channels = dict(enumerate(CHANNELS, 1))
    frames = [
        plan(specs, [SHAPE], tiny_model, TINY, 16, c, channels=channels)
        for c in (PRICES, busy, None)
    ]
    work = frames[0].set_index("family")["work"]
    budget = math.sqrt(work["layercam"] * work["scorecam"])
    choices = [within_budget(frame, budget) for frame in frames]
    assert choices[0] == choices[1] == choices[2]
    assert "scorecam@1" in choices[0][1] and "tonno" in choices[0][0]
    hours = [frame.iloc[-1]["hours"] for frame in frames]
    assert hours[1] > 5 * hours[0] and math.isnan(hours[2])  # shown, measured; not used


def preset_plan(preset: str, shapes, volume_model: bool):
    """The plan of ``all`` at a preset's settings and budget, with its classifiers' stage
    widths (random weights: only their shapes count)."""
    from benchmark.training.strategy import batches_for

    model = batches_for(resolve(TrainConfig, preset)).build_model(1, initial=False)
    volume = None
    if volume_model:
        volume = batches_for(resolve(Train3DConfig, preset)).build_model(1, initial=False)
    budget = resolve(RunConfig, preset).budget_passes
    tomography = resolve(TomographyConfig, preset)
    frame = plan(
        expand_specs(["all"]),
        shapes,
        model,
        tomography,
        64,
        None,
        in_chans=1,
        volume_model=volume,
    )
    return within_budget(frame, budget)


def left_out_families(left_out) -> set[str]:
    return {spec.partition("@")[0] for spec in left_out}


def test_the_quick_budget_leaves_out_scorecam_and_the_iterative_families():
    kept, left_out = preset_plan("quick", [(32, 64, 64)], volume_model=True)  # synthetic
    scorecam = {"scorecam", "scorecam_3axis", "averaged_scorecam", "tomographic_scorecam"}
    iterative = {"iterative_gradcam", "iterative_gradcampp", "iterative_layercam"}
    assert left_out_families(left_out) == scorecam | iterative | {"cam3d_scorecam"}
    assert {"tonno", "averaged_gradcam@1", "tomographic_layercam@4", "layercam_3axis@2"} <= set(
        kept
    )


def test_the_paper_budget_keeps_what_the_paper_reports():
    shapes = [(54, 222, 179), (326, 400, 400)]  # an MS volume, a large AutoPET-like one
    kept, left_out = preset_plan("paper", shapes, volume_model=False)  # 3D: unknown, kept
    assert left_out_families(left_out) == {"averaged_scorecam", "tomographic_scorecam"}
    assert {"scorecam_3axis@4", "tonno", "tomographic_layercam@1"} <= set(kept)


def test_a_pass_shared_by_two_families_is_counted_once(tiny_model):
    specs, shapes = ["layercam@1", "gradcam@1"], [SHAPE] * 3
    training = {"2d classifier test": TrainingEstimate(s_per_step=0.6, iterations=150)}
    frame = plan(specs, shapes, tiny_model, TINY, 16, PRICES, seeds=2, training=training)
    with_report = TrainingEstimate(0.6, 150, s_per_validated=0.5, validated=20)
    reported = plan(specs, shapes, tiny_model, TINY, 16, PRICES, training={"2d": with_report})
    # 150 steps, 20 validated volumes, and the report on the 3 evaluation volumes
    assert reported.iloc[-2]["hours"] == pytest.approx((0.6 * 150 + 0.5 * (20 + 3)) / 3600)
    rows = frame.set_index("family")
    # per volume: D axial slices cut once, one forward + backward each for both CAMs; each
    # CAM reads its map back at every voxel
    shared_s = D * PRICES.cut_s + D * PRICES.backward_s + 2 * D * H * W * PRICES.read_s
    assert rows.loc["heatmaps", "s_per_volume"] == pytest.approx(shared_s)
    assert rows.loc["heatmaps", "hours"] == pytest.approx(3 * 2 * shared_s / 3600)
    assert rows.loc["training", "hours"] == pytest.approx(2 * 0.6 * 150 / 3600)  # 2 seeds
    total = (3 * 2 * shared_s + 2 * 0.6 * 150) / 3600  # 3 volumes, 2 seeds, training
    assert rows.loc["total", "hours"] == pytest.approx(total)
    alone = rows.loc[["layercam", "gradcam"], "hours"].sum()  # each family with its own pass
    assert rows.loc["heatmaps", "hours"] < 0.6 * alone
    table = format_plan(frame, PRICES, {}, training)
    assert "| heatmaps" in table and "| training" in table and "| total" in table


def test_the_total_leaves_out_what_the_budget_leaves_out(tiny_model):
    frame = plan(["layercam@1", "scorecam@2"], [SHAPE], tiny_model, TINY, 16, PRICES)
    budget = frame.set_index("family").loc["layercam", "work"] * 2  # scorecam@2: 9 x more
    frame = plan(
        ["layercam@1", "scorecam@2"], [SHAPE], tiny_model, TINY, 16, PRICES, budget_passes=budget
    )
    rows = frame.set_index("family")
    assert rows.loc["total", "specs"] == ("layercam@1",)
    assert rows.loc["total", "hours"] == pytest.approx(rows.loc["layercam", "hours"])


def test_counted_prices_are_forward_equivalents():
    prices = counted_prices(32, volume_voxels=4 * 32 * 32)
    passes = Passes(forward=10, backward=4, cut=10, backprojected=6 * 32 * 32, volume_forward=1)
    assert seconds(passes, prices) == pytest.approx(
        10 + 4 * BACKWARD_FORWARDS + 10 * CUT_FORWARDS + 6 / READS_PER_FORWARD_PIXEL + 4 * 2.0
    )


def test_a_shared_groups_seconds_split_by_counted_work_and_sum_to_the_total(tiny_model):
    methods = [create_method(s, config=TINY) for s in ("layercam@1", "gradcam@1", "scorecam@1")]
    channels = dict(enumerate(CHANNELS, 1))
    split = split_seconds(12.0, methods, SHAPE, channels, counted_prices(TINY.slice_size))
    # each as run alone, in forward-equivalents: D slices cut, D forward (+ backward), and
    # one read per voxel at 1 / (6 x 32^2) forwards
    reads = D * H * W / (READS_PER_FORWARD_PIXEL * 32**2)
    gradient = D * (1 + BACKWARD_FORWARDS) + D * CUT_FORWARDS + reads
    scorecam = D * (1 + CHANNELS[0]) + D * CUT_FORWARDS + reads
    whole = 2 * gradient + scorecam
    assert split == pytest.approx(
        {
            "layercam@1": 12 * gradient / whole,
            "gradcam@1": 12 * gradient / whole,
            "scorecam@1": 12 * scorecam / whole,
        }
    )
    assert sum(split.values()) == pytest.approx(12.0)


def test_timings_split_a_groups_measured_seconds_among_its_specs(tiny_model, monkeypatch):
    import benchmark.run.job as runner

    ticks = iter([0.0, 12.0, 12.0, 20.0, 20.0])  # start; the slice-wise group; tonno

    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    saved = {}
    job = types.SimpleNamespace(
        tomography=TINY,
        batch_size=16,
        options={},
        channels=dict(enumerate(CHANNELS, 1)),
        save=lambda spec, volume, array, seconds, grids: saved.update({spec: seconds}),
    )
    bar = types.SimpleNamespace(set_postfix_str=lambda *a, **k: None, update=lambda: None)
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(2))
    specs = ["layercam@1", "tonno", "gradcam@1", "scorecam@1"]
    runner._store_heatmaps(job, types.SimpleNamespace(id="v"), volume, tiny_model, {}, bar, specs)
    methods = [create_method(s, config=TINY) for s in ("layercam@1", "gradcam@1", "scorecam@1")]
    prices = counted_prices(TINY.slice_size)
    expected = split_seconds(12.0, methods, SHAPE, job.channels, prices)
    assert saved == pytest.approx({**expected, "tonno": 8.0})
    assert sum(saved.values()) == pytest.approx(20.0)  # the measured time, all of it


REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["run", "--plan", "--dataset", "synthetic", "--device", "cpu", "--preset", "quick"]
TINY_RUN += ["--dataset-option", "n_train=8", "--dataset-option", "n_val=4"]
TINY_RUN += ["--dataset-option", "shape=[8,16,16]", "--set", "batch_size=8"]
TINY_RUN += ["train.slices_per_volume=4", "train.slice_size=16", "tomography.slice_size=16"]
TINY_RUN += ["train3d.input_size=[8,8,8]", "train3d.batch_volumes=2"]  # fast estimates


def budget_column(out: str) -> dict[str, tuple[str, str]]:
    """{family: (specs, budget)} of the table ``run --plan`` prints."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("family", "") and set(cells[0]) != {"-"}:
            rows[cells[0]] = (cells[1], cells[-1])
    return rows


@pytest.mark.slow  # two plans of a few seconds each on an idle 2-core CPU, 20 s busy
def test_run_plan_keeps_the_same_methods_idle_and_with_both_cores_busy(tmp_path):
    env = {**os.environ, "TONNO_CACHE": str(tmp_path / "cache")}
    where = ["--out", str(tmp_path / "run"), "--leaderboards", str(tmp_path / "boards")]

    def planned() -> str:
        argv = [sys.executable, "-m", "benchmark", *TINY_RUN, *where]
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    idle = planned()
    spin = [sys.executable, "-c", "while True: pass"]
    busy = [subprocess.Popen(spin) for _ in range(2)]  # both cores
    try:
        loaded = planned()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert budget_column(idle) == budget_column(loaded)
    statuses = {status for _, status in budget_column(idle).values()}
    assert "" in statuses and any(s.startswith("left out") for s in statuses)
    assert budget_column(idle)["tonno"] == ("1", "")
