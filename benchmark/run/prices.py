"""Prices of a run's work: counted classifier passes in forward-equivalents, and measured
seconds (:func:`calibrate`), per volume (:func:`seconds`), with shared passes counted once
(:func:`shared_passes`) and split among the specs they serve (:func:`split_seconds`).

How the plan uses them, and why counted work alone decides what ``all`` keeps:
:mod:`benchmark.run.plan`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from benchmark.distributed import mean_seconds
from benchmark.training.classifier3d import native_size
from methods import Method, Passes

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

# Counted work's fixed prices (:func:`counted_prices`), in forward-equivalents, measured
# once with calibrate() (measured: docs/decisions.md#counted-prices).
BACKWARD_FORWARDS = 0.65
CUT_FORWARDS = 0.05
READS_PER_FORWARD_PIXEL = 6.0
VOLUME_VOXEL_FORWARDS = 2.0


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


def shared_passes(
    methods: Sequence[Method], shape: tuple[int, int, int], channels: Mapping[int, int]
) -> Passes | None:
    """The work of ``methods`` (of one classifier) run together on one volume of
    ``shape``, as :func:`methods.heatmaps.compute_heatmaps` runs them: methods of one
    ``pass_group`` (gradient CAMs of one geometry, all layers and families) share one
    forward + backward pass (of slices or volumes) and the slices it cuts (counted once:
    the largest), and each backprojects its own maps; other methods add up. A family's
    work, or a run's. None when any method's cost is unknown."""
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


def volume_input_voxels(
    volume_model: torch.nn.Module | None, shape: tuple[int, int, int]
) -> int | None:
    """Voxels the volume classifier sees of a volume of ``shape``: its ``input_size`` (it
    resizes every volume to it; a 0 keeps that axis's size), else the volume's own; None
    without a volume classifier."""
    if volume_model is None:
        return None
    return math.prod(native_size(getattr(volume_model, "input_size", shape), shape))


def counted_prices(slice_size: int, volume_voxels: int | None = None) -> Calibration:
    """The fixed prices of counted work, for :func:`seconds`: forward-equivalents (one
    slice through the 2D classifier = 1) instead of seconds, the same on every machine.
    Cuts and forward passes scale alike with the slice's pixels, reads do not: a read is
    1 / (READS_PER_FORWARD_PIXEL x ``slice_size``^2) forwards. A whole volume through the
    volume classifier is VOLUME_VOXEL_FORWARDS x ``volume_voxels`` (its input,
    :func:`volume_input_voxels`) / the slice's pixels forwards; None: unknown."""
    pixels = slice_size**2
    volume = None if volume_voxels is None else VOLUME_VOXEL_FORWARDS * volume_voxels / pixels
    return Calibration(
        device="counted",
        in_chans=0,
        slice_size=slice_size,
        batch_size=0,
        forward_s=1.0,
        backward_s=1.0 + BACKWARD_FORWARDS,
        cut_s=CUT_FORWARDS,
        read_s=1.0 / (READS_PER_FORWARD_PIXEL * pixels),
        peak_memory_mb=None,
        volume_forward_s=volume,
        volume_backward_s=None if volume is None else volume * (1.0 + BACKWARD_FORWARDS),
    )


def split_seconds(
    total: float,
    methods: Sequence[Method],
    shape: tuple[int, int, int],
    channels: Mapping[int, int],
    prices: Calibration,
) -> dict[str, float]:
    """{spec: seconds}: the ``total`` seconds of ``methods`` computed together (one group
    of :func:`methods.heatmaps.compute_groups`, sharing slices and passes) split among
    them by their share of counted work, each method's work as run alone at ``prices``
    (:func:`counted_prices`): two LayerCAM layers of one pass get half each, a ScoreCAM
    beside them most. Equal shares when a cost is unknown. The parts sum to ``total``."""
    weights = []
    for method in methods:
        work = shared_passes([method], shape, channels)
        weights.append(math.nan if work is None else seconds(work, prices))
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        weights = [1.0] * len(methods)
    return {m.spec: total * w / sum(weights) for m, w in zip(methods, weights, strict=True)}


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
