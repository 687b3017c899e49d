"""A run's plan: classifier work, measured cost and a budget, before anything runs.

Every method states its work per volume in slices (:meth:`methods.Method.passes`); a short
measured run on the chosen model and device (:func:`calibrate`) prices a slice; the plan
(:func:`plan`) multiplies them out per method family over the validation volumes, and
:func:`within_budget` leaves the families that alone exceed the budget out of ``all`` and
wildcards. At the paper's settings (3.6: L = 2000 for ToNNO, 1000 for the stacked CAMs,
M = 100, 224 px) Tomographic ScoreCAM at stage 4 is 1000 x 102 slices x 513 forward passes
per volume: the plan says so before the run starts.

Cost model per volume: cut x t_cut + (forward - backward) x t_forward + backward x
t_forward+backward + backprojected x t_read, each t measured by :func:`calibrate` (t_read
is the map backprojection's, an upper bound for ToNNO's scalar one, ~3x cheaper on a CPU);
the 3D CAMs add the same two terms for whole volumes through the volume classifier, priced
when the plan is given one (else their cost is unknown).

Budgets (``RunConfig.budget_hours``, per family): ``quick`` 0.75 h, which on a 2-core CPU
leaves every ScoreCAM family out of the synthetic run and keeps all else; ``paper`` 48 h,
which on a GPU keeps every family the paper reports and leaves out Averaged / Tomographic
ScoreCAM (hundreds of GPU-hours per data set). ``--set budget_hours=...`` changes it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import resource
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from benchmark.config import RunConfig
from benchmark.distributed import mean_seconds
from methods import Method, Passes, create_method
from methods.config import TomographyConfig
from methods.registry import parse_spec

if TYPE_CHECKING:
    from benchmark.train import TrainingEstimate

log = logging.getLogger(__name__)

SUMMARY_MAX_VOXELS = 2**21  # summaries are measured on at most this many voxels (see below)
GEOMETRY_BYTES_PER_READ = 20  # backprojection buffers per voxel-direction of a chunk (float32)
HOUR = 3600.0


@dataclass(frozen=True)
class Calibration:
    """Measured prices of one slice on one model and device (seconds, MiB)."""

    device: str
    in_chans: int
    slice_size: int
    batch_size: int
    forward_s: float  # per slice, classifier forward only (ToNNO, ScoreCAM, EigenCAM)
    backward_s: float  # per slice, forward + backward to stage 1 (gradient CAMs)
    cut_s: float  # per slice cut from a volume (eq. 4, extract_slices)
    read_s: float  # per voxel x direction of the map backprojection (eqs. 12-13)
    peak_memory_mb: float | None  # of one forward + backward batch; None: not measurable
    # the volume classifier's (3D CAMs), per volume; None: no volume classifier was measured
    volume_forward_s: float | None = None
    volume_backward_s: float | None = None  # forward + backward to stage 1
    volume_peak_mb: float | None = None  # of one forward + backward volume


def _rss_peak_mb() -> float:
    """The process's resident high-water mark (ru_maxrss, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gradient_step(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
    """What a gradient CAM does per batch: forward, and backward down to stage 1 (the
    deepest backward of any layer); the input's gradient for models without stages."""
    from methods.cam import activations_and_gradients
    from methods.stages import stage_modules

    try:
        layer = stage_modules(model)[1]
    except Exception:  # any model: backward to the input
        layer = None
    if layer is not None:
        return lambda batch: activations_and_gradients(model, [layer], batch)

    def to_input(batch: torch.Tensor) -> object:
        batch = batch.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(model(batch)[:, 0].sum(), batch)

    return to_input


def calibrate(
    model: torch.nn.Module,
    in_chans: int,
    slice_size: int,
    batch_size: int,
    device: torch.device,
    *,
    shape: tuple[int, int, int] = (32, 64, 64),
    repeats: int = 2,
    volume_model: torch.nn.Module | None = None,
) -> Calibration:
    """Price one slice on ``model`` at ``device``: ``repeats`` timed batches of
    ``batch_size`` slices after a warm-up, forward only and forward + backward; the time
    to cut a slice and to backproject one voxel-direction on a volume of ``shape`` (the
    data set's typical (D, H, W)); the peak memory of a forward + backward batch
    (``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the growth of the process's
    resident high-water mark, None when the batch stayed below an earlier peak). With a
    ``volume_model`` (the 3D classifier, which resizes to its own input size), the same
    for one volume of ``shape`` through it."""
    from methods import tomography

    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(batch_size, in_chans, slice_size, slice_size, generator=generator)
    batch = batch.to(device).contiguous(memory_format=torch.channels_last)
    forward_s, backward_s, peak = _price_passes(model, batch, device, repeats)
    volume = torch.rand((in_chans, *shape), generator=generator).to(device)
    volume_prices: dict[str, float | None] = {}
    if volume_model is not None:
        volume_model = volume_model.to(device).eval()
        volume_forward_s, volume_backward_s, volume_peak = _price_passes(
            volume_model, volume[None], device, repeats
        )
        volume_prices = {
            "volume_forward_s": volume_forward_s,
            "volume_backward_s": volume_backward_s,
            "volume_peak_mb": volume_peak,
        }
    normals = tomography.fibonacci_sphere(4)
    u, v = tomography.orthonormal_frames(normals, generator)
    offsets = tomography.slice_offsets(max(2, batch_size // 4))  # ~ a batch of slices
    cut_s = mean_seconds(
        lambda: tomography.extract_slices(volume, normals, offsets, slice_size, u, v),
        device,
        repeats,
    ) / (4 * len(offsets))
    maps = torch.rand(4, 1, 8, 7, 7, generator=generator).to(device)
    read_s = mean_seconds(
        lambda: tomography.backproject_maps(maps, normals, u, v, shape, slice_size),
        device,
        repeats,
    ) / (4 * math.prod(shape))
    return Calibration(
        device=str(device),
        in_chans=in_chans,
        slice_size=slice_size,
        batch_size=batch_size,
        forward_s=forward_s,
        backward_s=backward_s,
        cut_s=cut_s,
        read_s=read_s,
        peak_memory_mb=peak,
        **volume_prices,
    )


def _price_passes(
    model: torch.nn.Module, batch: torch.Tensor, device: torch.device, repeats: int
) -> tuple[float, float, float | None]:
    """(forward s, forward + backward s, peak MiB of forward + backward) per input of
    ``batch`` through ``model`` (:func:`calibrate`)."""
    from methods import tomography

    def forward() -> object:
        with torch.no_grad(), tomography.autocast(device):
            return model(batch)

    step = _gradient_step(model)
    forward_s = mean_seconds(forward, device, repeats) / len(batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _rss_peak_mb()
    backward_s = mean_seconds(lambda: step(batch), device, repeats) / len(batch)
    if device.type == "cuda":
        peak: float | None = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        grown = _rss_peak_mb() - rss_before
        peak = grown if grown > 0 else None
    return forward_s, backward_s, peak


def layer_channels(
    model: torch.nn.Module, in_chans: int, size: int | tuple[int, ...]
) -> dict[int, int]:
    """{stage: channels} of ``model``'s stages 1-4, from hooks on a one-input forward of
    ``size`` pixels (a slice of size x size, or a volume of size (D, H, W)); {} for a
    model without ResNet-like stages: ScoreCAM's cost is then unknown."""
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
    with torch.no_grad():
        for k, stage in stages.items():
            with captured_output(stage) as outputs:
                model(probe)
            out[k] = int(outputs[0].shape[1])
    return out


def family_of(spec: str) -> str:
    """``"tomographic_layercam@2" -> "tomographic_layercam"``."""
    return spec.partition("@")[0]


def family_passes(
    methods: Sequence[Method], shape: tuple[int, int, int], channels: Mapping[int, int]
) -> Passes | None:
    """The work of a family's methods run together on one volume of ``shape``, as
    :func:`methods.heatmaps.compute_heatmaps` runs them: methods of one ``pass_group``
    (gradient CAMs of one geometry, all layers) share one forward + backward pass (of
    slices or volumes) and the slices it cuts (counted once: the largest), and each
    backprojects its own maps; other methods add up. None when any method's cost is
    unknown."""
    groups: dict[object, list[Passes]] = {}
    total = Passes(0)
    for method in methods:
        try:
            passes = method.passes(shape, channels.get(method.layer))
        except ValueError:  # e.g. ScoreCAM without the channel count of its layer
            return None
        if passes is None:
            return None
        group = method.pass_group
        if group is None:
            total = total + passes
        else:
            groups.setdefault(group, []).append(passes)
    for members in groups.values():
        columns = zip(*(p.astuple() for p in members), strict=True)
        shared = Passes(*(max(column) for column in columns))
        reads = sum(p.backprojected for p in members)
        total = total + dataclasses.replace(shared, backprojected=reads)
    return total


def seconds(passes: Passes, calibration: Calibration) -> float:
    """Estimated seconds of ``passes`` at ``calibration``'s prices (module docstring);
    NaN for volumes through a volume classifier that ``calibration`` did not price."""
    c = calibration
    volumes = 0.0
    if passes.volume_forward:
        if c.volume_forward_s is None or c.volume_backward_s is None:
            return math.nan
        volumes = (passes.volume_forward - passes.volume_backward) * c.volume_forward_s
        volumes += passes.volume_backward * c.volume_backward_s
    return (
        passes.cut * c.cut_s
        + (passes.forward - passes.backward) * c.forward_s
        + passes.backward * c.backward_s
        + passes.backprojected * c.read_s
        + volumes
    )


def summary_bytes(
    shape: tuple[int, int, int], levels: int = RunConfig.grid_levels, seed: int = 0
) -> int:
    """Bytes of ``np.savez`` of one A.7 summary (``summarize(heatmap, mask, grid).to_dict()``)
    of a smooth random heatmap of ``shape`` against a ball mask, on a tau' grid of
    ``levels`` tail fractions (:func:`~benchmark.evaluation.tail_fractions`).

    A summary holds component tables, so its size follows the number of components, not
    of voxels; shapes above SUMMARY_MAX_VOXELS are measured at that many voxels (same
    aspect) so that the plan stays fast on 15 M-voxel volumes.
    """
    from scipy import ndimage

    from benchmark.evaluation import summarize, tail_quantiles, threshold_grid

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
    tomography: TomographyConfig,
    batch_size: int,
    calibration: Calibration,
    *,
    channels: Mapping[int, int] | None = None,
    volume_model: torch.nn.Module | None = None,
) -> pd.DataFrame:
    """One row per method family (specs without their @layer) and a ``total`` row.

    Columns: ``family``, ``specs`` (tuple), ``forward`` and ``backward`` (slices through the
    classifier per volume, mean over ``shapes``, the validation volumes' (D, H, W)),
    ``volume_forward`` and ``volume_backward`` (the same for whole volumes through
    ``volume_model``, the volume classifier of the 3D CAMs),
    ``s_per_volume``, ``hours`` (all its specs and volumes), ``peak_mb`` (one batch,
    measured, plus slicing and backprojection buffers, modelled; without classifier
    passes, as the baselines: a float32 heatmap), ``summary_kb`` (kept per
    volume and spec: the A.7 summary) and ``heatmap_mb`` (a float32 heatmap, kept only on
    request). Each family is estimated as run alone through ``compute_heatmaps`` (sharing
    inside the family only); a run of several families shares slices between them too, so
    the total is an upper bound. Unknown costs (a plugin that states none, a 3D CAM
    without a priced volume classifier) are NaN.
    """
    specs = list(dict.fromkeys(specs))
    shapes = [tuple(int(n) for n in s) for s in shapes]
    if not shapes:
        raise ValueError("plan: no validation volumes to estimate")
    if channels is None:
        channels = layer_channels(model, calibration.in_chans, calibration.slice_size)
    volume_channels = {}
    if volume_model is not None:  # it resizes any volume to its input size
        volume_channels = layer_channels(volume_model, calibration.in_chans, shapes[0])
    mean_shape = tuple(int(round(float(np.mean([s[i] for s in shapes])))) for i in range(3))
    kept = summary_bytes(mean_shape) / 1024
    heatmap_mb = float(np.mean([math.prod(s) for s in shapes])) * 4 / 2**20
    families: dict[str, list[str]] = {}
    for spec in specs:
        parse_spec(spec)
        families.setdefault(family_of(spec), []).append(spec)
    rows = []
    for family, members in families.items():
        methods = [create_method(s, config=tomography, batch_size=batch_size) for s in members]
        volume = methods[0].classifier == "3d"
        stage_channels = volume_channels if volume else channels
        work = [family_passes(methods, shape, stage_channels) for shape in shapes]
        known = all(w is not None for w in work)
        per_volume = [seconds(w, calibration) for w in work] if known else [math.nan]
        if volume:  # one volume at a time, and its upsampled heatmap
            peak = (calibration.volume_peak_mb or 0.0) if volume_model is not None else math.nan
            peak += math.prod(mean_shape) * 4 / 2**20
        elif known and not any(w.forward for w in work):  # no classifier: the heatmap alone
            peak = math.prod(mean_shape) * 4 / 2**20
        else:
            peak = calibration.peak_memory_mb or 0.0
            peak += _geometry_mb(methods[0], mean_shape, calibration.in_chans)
        rows.append(
            {
                "family": family,
                "specs": tuple(members),
                "forward": float(np.mean([w.forward for w in work])) if known else math.nan,
                "backward": float(np.mean([w.backward for w in work])) if known else math.nan,
                "volume_forward": (
                    float(np.mean([w.volume_forward for w in work])) if known else math.nan
                ),
                "volume_backward": (
                    float(np.mean([w.volume_backward for w in work])) if known else math.nan
                ),
                "s_per_volume": float(np.mean(per_volume)),
                "hours": float(np.sum(per_volume)) / HOUR if known else math.nan,
                "peak_mb": peak if known else math.nan,
                "summary_kb": kept,
                "heatmap_mb": heatmap_mb,
            }
        )
    frame = pd.DataFrame(rows)
    total = {
        "family": "total",
        "specs": tuple(specs),
        "forward": frame["forward"].sum(),
        "backward": frame["backward"].sum(),
        "volume_forward": frame["volume_forward"].sum(),
        "volume_backward": frame["volume_backward"].sum(),
        "s_per_volume": frame["s_per_volume"].sum(),
        "hours": frame["hours"].sum(),
        "peak_mb": frame["peak_mb"].max(),
        "summary_kb": kept * len(specs),
        "heatmap_mb": heatmap_mb * len(specs),
    }
    return pd.concat([frame, pd.DataFrame([total])], ignore_index=True)


def within_budget(
    plan_frame: pd.DataFrame, budget_hours: float, named_specs: Iterable[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """(kept specs, {left-out spec: reason}): a family whose estimated hours alone exceed
    ``budget_hours`` leaves ``all`` and wildcards; a spec in ``named_specs`` always runs,
    and so does a family of unknown cost.

    Each family is judged alone against the whole budget, not greedily in order: its
    estimate does not depend on which families come before it or on the order a user
    wrote them, a plugin cannot push a built-in out, and families share slices when run
    together, so a running sum would overstate the cost of the later ones. The plan's
    total row says whether the kept families together fit.
    """
    named = set(named_specs)
    kept: list[str] = []
    left_out: dict[str, str] = {}
    for row in plan_frame[plan_frame["family"] != "total"].itertuples():
        over = not math.isnan(row.hours) and row.hours > budget_hours
        for spec in row.specs:
            if over and spec not in named:
                left_out[spec] = (
                    f"{row.family}: {row.hours:,.1f} h estimated > budget {budget_hours:g} h"
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
    :func:`benchmark.train.training_estimate`."""
    from tabulate import tabulate

    left_out = left_out or {}
    rows = []
    for row in plan_frame.itertuples():
        out = [s for s in row.specs if s in left_out]
        status = "" if not out or row.family == "total" else f"left out ({len(out)})"
        rows.append(
            (
                row.family,
                len(row.specs),
                _number(row.forward),
                _number(row.backward),
                _number(row.volume_forward),
                _number(row.volume_backward),
                _number(row.s_per_volume, 2),
                _number(row.hours, 2),
                _number(row.peak_mb),
                _number(row.summary_kb, 1),
                _number(row.heatmap_mb, 1),
                status,
            )
        )
    headers = (
        "family",
        "specs",
        "forward / vol",
        "backward / vol",
        "3D forward / vol",
        "3D backward / vol",
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
        "\n\nEach family is estimated as run alone; families run together share slices, so"
        " the total is an upper bound."
    )
    for name, estimate in (training or {}).items():
        text += (
            f"\n\ntraining {name}: {estimate.s_per_step:.2f} s / step x {estimate.iterations}"
            f" steps (cap) = {estimate.seconds / HOUR:.2f} h, before the methods"
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
    budget_hours: float,
    in_chans: int,
    volume_model: torch.nn.Module | None = None,
) -> tuple[pd.DataFrame, Calibration, list[str], dict[str, str]]:
    """Everything ``run --plan`` needs in one call: (plan, calibration, kept specs,
    {left-out spec: reason}) for ``--methods`` tokens ``methods`` over the validation
    volumes' ``shapes``; print ``format_plan(plan, calibration, left_out)``. Without a
    ``volume_model`` (the volume classifier) the 3D CAMs' cost is unknown."""
    from methods import expand_specs

    methods = list(methods)
    specs = expand_specs(methods)
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
    frame = plan(
        specs, shapes, model, tomography, batch_size, calibration, volume_model=volume_model
    )
    kept, left_out = within_budget(frame, budget_hours, named_outright(methods))
    return frame, calibration, kept, left_out
