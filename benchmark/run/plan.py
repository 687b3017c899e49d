"""A run's plan: counted classifier work, measured cost, and what ``all`` keeps.

Every method states its work per volume in slices (:meth:`methods.Method.passes`). Two
price lists turn that work into one number per volume (:func:`~.prices.seconds`):

- counted work (:func:`~.prices.counted_prices`): fixed prices in forward-equivalents, one slice
  through the 2D classifier = 1, a backward pass BACKWARD_FORWARDS more, never measured
  at run time. It alone decides what ``all`` and wildcards keep (:func:`within_budget`:
  a family whose work per validation volume exceeds ``RunConfig.budget_passes`` is left
  out, but for ALWAYS_IN_ALL), so the same command keeps the same methods on any
  machine, idle or busy;
- measured seconds (:func:`~.prices.calibrate`, a short run on the chosen model and device):
  what ``run --plan`` shows, never used to choose.

Budgets: ``quick`` 10,000 forward-equivalents per volume, which on the synthetic set
(32 x 64 x 64) keeps every gradient family (Tomographic CAM and ToNNO the most, ~4,200)
and leaves out the iterative families (~70,000: a solve per layer) and every ScoreCAM
family (31,000 to 1.6 M); ``paper`` 20 M, which keeps every family the paper reports
(3-axis ScoreCAM ~1.1 M on a 326 x 400 x 400 volume) and the iterative ones (~5 M), and
leaves out Averaged / Tomographic ScoreCAM (~96 M: L = 1000 x M = 100 slices x 964
forward passes for the four stages of a ResNet-10-T).

Cost model per volume: cut x p_cut + (forward - backward) x p_forward + backward x
p_forward+backward + backprojected x p_read, each p a price (seconds measured by
:func:`~.prices.calibrate`, t_read the map backprojection's, an upper bound for ToNNO's scalar one;
or a fixed counted price); the 3D CAMs add the same two terms for whole volumes through
the volume classifier (unknown when the plan has none). The plan (:func:`plan`) prices
each family alone, then the run's stages as they will run: the kept specs together, their
shared passes counted once (:func:`~.prices.shared_passes`), on every validation volume, times the
classifiers (``--seeds``), and their training
(:func:`benchmark.training.estimate.training_estimate`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from benchmark.protocol.evaluation import GRID_LEVELS
from benchmark.run.prices import (
    BACKWARD_FORWARDS,
    Calibration,
    calibrate,
    counted_prices,
    seconds,
    shared_passes,
    volume_input_voxels,
)
from methods import Method, Passes, create_method
from methods.config import TomographyConfig
from methods.registry import parse_spec

if TYPE_CHECKING:
    from benchmark.training.estimate import TrainingEstimate

log = logging.getLogger(__name__)

SUMMARY_MAX_VOXELS = 2**21  # summaries are measured on at most this many voxels (see below)
GEOMETRY_BYTES_PER_READ = 20  # backprojection buffers per voxel-direction of a chunk (float32)
HOUR = 3600.0

# The paper's methods (its Table 2): ``all`` never leaves them out, whatever the budget.
ALWAYS_IN_ALL = ("tonno", "averaged_layercam", "tomographic_layercam")
# The plan's rows after the families: the run's stages and their sum.
STAGE_ROWS = ("heatmaps", "training", "total")
PLAN_CSV = "plan.csv"  # run --plan writes the plan there, in the run folder


def layer_channels(
    model: torch.nn.Module, in_chans: int, size: int | tuple[int, ...]
) -> dict[int, int]:
    """{stage: channels} of ``model``'s stages 1-4, from hooks on a one-input forward of
    ``size`` pixels (a slice of size x size, or a volume of size (D, H, W)) in eval mode
    (then restored); {} for a model without ResNet-like stages: ScoreCAM's cost is then
    unknown."""
    from methods.cam import captured_output
    from methods.stages import stage_modules

    try:
        stages = stage_modules(model)
    except Exception:
        return {}
    device = next(model.parameters()).device
    spatial = (size, size) if isinstance(size, int) else tuple(size)
    probe = torch.zeros(1, in_chans, *spatial, device=device)
    out: dict[int, int] = {}
    training = model.training
    model.eval()  # a batch norm in training mode refuses one input
    try:
        with torch.no_grad():
            for k, stage in stages.items():
                with captured_output(stage) as outputs:
                    model(probe)
                out[k] = int(outputs[0].shape[1])
    finally:
        model.train(training)
    return out


def family_of(spec: str) -> str:
    """``"tomographic_layercam@2" -> "tomographic_layercam"``."""
    return spec.partition("@")[0]


def summary_bytes(shape: tuple[int, int, int], levels: int = GRID_LEVELS, seed: int = 0) -> int:
    """Bytes of ``np.savez`` of one A.7 summary (``summarize(heatmap, mask, grid).to_dict()``)
    of a smooth random heatmap of ``shape`` against a ball mask, on a tau' grid of
    ``levels`` tail fractions (:func:`~benchmark.protocol.evaluation.tail_fractions`).

    A summary holds component tables, so its size follows the number of components, not
    of voxels; shapes above SUMMARY_MAX_VOXELS are measured at that many voxels (same
    aspect) so that the plan stays fast on 15 M-voxel volumes.
    """
    from scipy import ndimage

    from benchmark.protocol.evaluation import summarize, tail_quantiles, threshold_grid

    scale = min(1.0, (SUMMARY_MAX_VOXELS / math.prod(shape)) ** (1 / 3))
    small = tuple(max(4, round(n * scale)) for n in shape)
    rng = np.random.default_rng(seed)
    heatmap = ndimage.gaussian_filter(rng.standard_normal(small), [n / 16 for n in small])
    grid = threshold_grid([tail_quantiles(heatmap, levels)])
    axes = np.meshgrid(*(np.linspace(-1, 1, n) for n in small), indexing="ij")
    mask = sum((a - 0.2) ** 2 for a in axes) < 0.3**2
    buffer = io.BytesIO()
    np.savez(buffer, **summarize(heatmap, mask, grid).to_dict())
    return buffer.getbuffer().nbytes


def _geometry_mb(method: Method, shape: tuple[int, int, int], in_chans: int) -> float:
    """Modelled memory of slicing and backprojection beside the classifier: a chunk's
    slices (float32) and the backprojection buffers of a chunk of directions."""
    c, voxels = method.config, math.prod(shape)
    if type(method).__name__ == "ToNNO" or getattr(method, "filtered", None) is not None:
        n_angles = min(c.chunk, c.n_angles)
        slices = n_angles * (c.n_slices + 2)
    else:  # slice-wise: one axis at a time, all of its slices at once
        n_angles, slices = 1, max(shape)
    pixels = slices * in_chans * c.slice_size**2 * 4
    return (pixels + n_angles * voxels * GEOMETRY_BYTES_PER_READ) / 2**20


def plan(
    specs: Iterable[str],
    shapes: Sequence[tuple[int, int, int]],
    model: torch.nn.Module,
    tomography: TomographyConfig | None,
    batch_size: int,
    calibration: Calibration | None,
    *,
    in_chans: int | None = None,
    channels: Mapping[int, int] | None = None,
    volume_model: torch.nn.Module | None = None,
    budget_passes: float = math.inf,
    named_specs: Iterable[str] = (),
    seeds: int = 1,
    training: Mapping[str, TrainingEstimate] | None = None,
) -> pd.DataFrame:
    """One row per method family (specs without their @layer), then the run's stages:
    ``heatmaps``, ``training`` (with ``training``) and ``total``.

    Columns: ``family``, ``specs`` (tuple), ``forward`` and ``backward`` (slices through the
    classifier per volume, mean over ``shapes``, the validation volumes' (D, H, W)),
    ``volume_forward`` and ``volume_backward`` (the same for whole volumes through
    ``volume_model``, the volume classifier of the 3D CAMs), ``work`` (counted work per
    volume, :func:`~.prices.counted_prices`: what the budget reads), ``s_per_volume`` and ``hours``
    (every volume, times ``seeds`` classifiers) at ``calibration``'s measured prices (NaN
    without), ``peak_mb`` (one batch, measured, plus slicing and backprojection buffers,
    modelled; without classifier passes, as the baselines: a float32 heatmap),
    ``summary_kb`` (kept per volume and spec: the A.7 summary) and ``heatmap_mb`` (a
    float32 heatmap, kept only on request); in the stage rows, for all their specs.

    A family row is that family run alone. The ``heatmaps`` row is what the run computes:
    the specs :func:`within_budget` keeps (``budget_passes``, ``named_specs``) run together,
    their shared passes counted once (:func:`~.prices.shared_passes`, per classifier), on every
    volume for each of ``seeds`` classifiers. ``training`` is each classifier the run
    trains ({name: :func:`~benchmark.training.estimate.training_estimate`}, its expected steps,
    :func:`~benchmark.training.estimate.expected_steps`, and validations) and its report on the
    ``shapes``' volumes (as many validated volumes), times ``seeds``. ``total`` = heatmaps
    + training; start-up, the protocol and the pages are not counted. Unknown costs (a
    plugin that states none, a 3D CAM without a priced volume classifier) are NaN.
    ``in_chans``: the classifier's input channels when there is no ``calibration`` (which
    holds them).
    """
    specs = list(dict.fromkeys(specs))
    shapes = [tuple(int(n) for n in s) for s in shapes]
    if not shapes:
        raise ValueError("plan: no validation volumes to estimate")
    for spec in specs:
        parse_spec(spec)
    tomography = tomography or TomographyConfig()
    in_chans = calibration.in_chans if calibration is not None else in_chans
    if channels is None:
        channels = layer_channels(model, in_chans, tomography.slice_size)
    volume_channels = {}
    if volume_model is not None:  # it resizes any volume to its input size
        volume_channels = layer_channels(volume_model, in_chans, shapes[0])
    counted = [
        counted_prices(tomography.slice_size, volume_input_voxels(volume_model, s)) for s in shapes
    ]
    mean_shape = tuple(int(round(float(np.mean([s[i] for s in shapes])))) for i in range(3))
    kept_kb = summary_bytes(mean_shape) / 1024
    heatmap_mb = float(np.mean([math.prod(s) for s in shapes])) * 4 / 2**20
    methods = {s: create_method(s, config=tomography, batch_size=batch_size) for s in specs}

    def work(members: Sequence[Method]) -> list[Passes] | None:
        """Per volume, the passes of ``members`` run together, one call per classifier."""
        kinds: dict[str, list[Method]] = {}
        for method in members:
            kinds.setdefault(method.classifier, []).append(method)
        out = []
        for shape in shapes:
            total = Passes(0)
            for kind, group in kinds.items():
                passes = shared_passes(group, shape, volume_channels if kind == "3d" else channels)
                if passes is None:
                    return None
                total = total + passes
            out.append(total)
        return out

    def row(name: str, members: Sequence[str], passes: list[Passes] | None, peak: float) -> dict:
        stage = name in STAGE_ROWS  # sizes for all its specs, not per spec
        passes = passes or []  # unknown: NaN
        priced = [math.nan] if calibration is None else [seconds(p, calibration) for p in passes]
        return {
            "family": name,
            "specs": tuple(members),
            **{
                field: float(np.mean([getattr(p, field) for p in passes])) if passes else math.nan
                for field in ("forward", "backward", "volume_forward", "volume_backward")
            },
            "work": (
                float(np.mean([seconds(p, c) for p, c in zip(passes, counted, strict=True)]))
                if passes
                else math.nan
            ),
            "s_per_volume": float(np.mean(priced)) if passes else math.nan,
            "hours": float(np.sum(priced)) * seeds / HOUR if passes else math.nan,
            "peak_mb": peak,
            "summary_kb": kept_kb * (len(members) if stage else 1),
            "heatmap_mb": heatmap_mb * (len(members) if stage else 1),
        }

    families: dict[str, list[str]] = {}
    for spec in specs:
        families.setdefault(family_of(spec), []).append(spec)
    heatmap_peak = math.prod(mean_shape) * 4 / 2**20
    rows = []
    for family, members in families.items():
        first, passes = methods[members[0]], work([methods[s] for s in members])
        if calibration is None:
            peak = math.nan
        elif first.classifier == "3d":  # one volume at a time, and its upsampled heatmap
            peak = (calibration.volume_peak_mb or 0.0) if volume_model is not None else math.nan
            peak += heatmap_peak
        elif passes is not None and not any(p.forward for p in passes):  # no classifier
            peak = heatmap_peak  # the heatmap alone
        else:
            peak = calibration.peak_memory_mb or 0.0
            peak += _geometry_mb(first, mean_shape, calibration.in_chans)
        rows.append(row(family, members, passes, peak if passes is not None else math.nan))
    frame = pd.DataFrame(rows)
    kept, _ = within_budget(frame, budget_passes, named_specs)
    holding = frame[[any(s in kept for s in f) for f in frame.specs]]
    stages = [row("heatmaps", kept, work([methods[s] for s in kept]), holding.peak_mb.max())]
    if training is not None:  # and each classifier's report on the evaluation split
        seconds_each = [e.seconds + e.s_per_validated * len(shapes) for e in training.values()]
        hours = sum(seconds_each) * seeds / HOUR
        stages.append({"family": "training", "specs": (), "hours": hours})
    total = {**stages[0], "family": "total"}
    total["hours"] = sum(stage["hours"] for stage in stages)
    return pd.concat([frame, pd.DataFrame([*stages, total])], ignore_index=True)


def within_budget(
    plan_frame: pd.DataFrame, budget_passes: float, named_specs: Iterable[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """(kept specs, {left-out spec: reason}): a family whose counted ``work`` per volume
    exceeds ``budget_passes`` leaves ``all`` and wildcards; the families of ALWAYS_IN_ALL
    never do, nor a spec in ``named_specs``, nor a family of unknown cost.

    Each family is judged alone against the whole budget, not greedily in order: its
    work does not depend on which families come before it or on the order a user wrote
    them, a plugin cannot push a built-in out, and families share passes when run
    together, so a running sum would overstate the cost of the later ones. The plan's
    stage rows say what the kept families cost together.
    """
    named = set(named_specs)
    kept: list[str] = []
    left_out: dict[str, str] = {}
    for row in plan_frame[~plan_frame["family"].isin(STAGE_ROWS)].itertuples():
        over = row.family not in ALWAYS_IN_ALL and row.work > budget_passes  # NaN: kept
        for spec in row.specs:
            if over and spec not in named:
                left_out[spec] = (
                    f"{row.family}: {row.work:,.0f} passes / volume > budget {budget_passes:,.0f}"
                )
            else:
                kept.append(spec)
    return kept, left_out


def _number(value: float, digits: int = 0) -> str:
    return "unknown" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def format_plan(
    plan_frame: pd.DataFrame,
    calibration: Calibration | None = None,
    left_out: Mapping[str, str] | None = None,
    training: Mapping[str, TrainingEstimate] | None = None,
) -> str:
    """The plan as a GitHub table (``run --plan``), with the prices it used, the
    families the budget leaves out and, per classifier the run must train first (e.g.
    ``{"3d classifier resnet10_3d": estimate}``), its
    :func:`benchmark.training.estimate.training_estimate`."""
    from tabulate import tabulate

    left_out = left_out or {}
    rows = []
    for row in plan_frame.itertuples():
        out = [s for s in row.specs if s in left_out]
        status = f"left out ({len(out)})" if out and row.family not in STAGE_ROWS else ""
        cells = [
            _number(row.forward),
            _number(row.backward),
            _number(row.volume_forward),
            _number(row.volume_backward),
            _number(row.work),
            _number(row.s_per_volume, 2),
            _number(row.hours, 2),
            _number(row.peak_mb),
            _number(row.summary_kb, 1),
            _number(row.heatmap_mb, 1),
        ]
        if row.family == "training":  # its hours alone
            cells = ["" if i != 6 else cell for i, cell in enumerate(cells)]
        specs = len(row.specs) if row.family != "training" else ""
        rows.append((row.family, specs, *cells, status))
    headers = (
        "family",
        "specs",
        "forward / vol",
        "backward / vol",
        "3D forward / vol",
        "3D backward / vol",
        "work / vol",
        "s / vol",
        "hours",
        "peak MiB",
        "kept KiB / vol / spec",
        "float32 heatmap MiB",
        "budget",
    )
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if calibration is not None:
        c = calibration
        text = (
            f"prices on {c.device} ({c.slice_size} px, batch {c.batch_size}): "
            f"{c.forward_s * 1e3:.3f} ms forward, {c.backward_s * 1e3:.3f} ms forward+backward,"
            f" {c.cut_s * 1e6:.1f} us cut per slice; {c.read_s * 1e9:.2f} ns per"
            f" voxel-direction read\n" + text
        )
        if c.volume_forward_s is not None and c.volume_backward_s is not None:
            text = (
                f"volume classifier (3D CAMs): {c.volume_forward_s:.3f} s forward,"
                f" {c.volume_backward_s:.3f} s forward+backward per volume\n" + text
            )
    text += (
        "\n\nwork / vol: counted work in forward-equivalents (a slice through the classifier"
        f" = 1, its backward {BACKWARD_FORWARDS:g} more), the same on every machine: the"
        " budget (--set budget_passes=N) compares it. s / vol and hours: at the prices"
        " measured above, shown, never used to choose. A family row is that family run"
        " alone; heatmaps: the kept specs run together (shared passes counted once) on every"
        " validation volume, for each classifier (--seeds); training: the lines below and"
        " each classifier's report; total: heatmaps + training (start-up, the protocol and"
        " the pages not counted)."
    )
    for name, e in (training or {}).items():
        text += (
            f"\n\ntraining {name}: {e.s_per_step:.2f} s / step x {e.iterations} steps"
            f" + {e.s_per_validated:.2f} s x {e.validated} validated volumes"
            f" = {e.seconds / HOUR:.2f} h a classifier, before the methods"
        )
        if e.cap is not None:
            text += (
                f" ({e.iterations} steps: twice the fewest early stopping takes; at most"
                f" {e.cap} steps, {e.s_per_step * e.cap / HOUR:.2f} h of steps, when the"
                " classifier keeps improving or never learns)"
            )
    reasons = sorted(set(left_out.values()))
    if reasons:
        text += "\n\nleft out of all / wildcards (name a spec to run it anyway):\n"
        text += "\n".join(f"- {r}" for r in reasons)
    return text


def named_outright(methods: Iterable[str]) -> list[str]:
    """Specs that ``--methods`` tokens name outright (``NAME`` or ``NAME@LAYER``, not ``all``
    nor a wildcard): :func:`within_budget` never leaves them out."""
    from methods import expand_specs, spec_tokens

    tokens = spec_tokens(methods)
    broad = {t for t in tokens if t == "all" or any(c in t for c in "*?[")}
    return expand_specs([t for t in tokens if t not in broad]) if len(broad) < len(tokens) else []


def plan_run(
    methods: Iterable[str],
    shapes: Sequence[tuple[int, int, int]],
    model: torch.nn.Module,
    tomography: TomographyConfig,
    batch_size: int,
    device: torch.device,
    budget_passes: float,
    in_chans: int,
    volume_model: torch.nn.Module | None = None,
    *,
    measure: bool = True,
    seeds: int = 1,
    training: Mapping[str, TrainingEstimate] | None = None,
) -> tuple[pd.DataFrame, Calibration | None, list[str], dict[str, str]]:
    """Everything ``run`` needs in one call: (plan, calibration, kept specs, {left-out
    spec: reason}) for ``--methods`` tokens ``methods`` over the validation volumes'
    ``shapes``; print ``format_plan(plan, calibration, left_out, training)``. What is kept
    is counted, not measured: ``measure`` (``run --plan``) prices the plan on ``device``
    (:func:`~.prices.calibrate`); without, the calibration is None and the times NaN. Without a
    ``volume_model`` (the volume classifier) the 3D CAMs' cost is unknown."""
    from methods import expand_specs

    methods = list(methods)
    specs = expand_specs(methods)
    calibration = None
    if measure:
        mean_shape = tuple(int(round(float(np.mean([s[i] for s in shapes])))) for i in range(3))
        calibration = calibrate(
            model,
            in_chans,
            tomography.slice_size,
            batch_size,
            device,
            shape=mean_shape,
            volume_model=volume_model,
        )
    named = named_outright(methods)
    frame = plan(
        specs,
        shapes,
        model,
        tomography,
        batch_size,
        calibration,
        in_chans=in_chans,
        volume_model=volume_model,
        budget_passes=budget_passes,
        named_specs=named,
        seeds=seeds,
        training=training,
    )
    kept, left_out = within_budget(frame, budget_passes, named)
    return frame, calibration, kept, left_out
