"""``bench scale``: ToNNO and Tomographic LayerCAM@2 as the volume and L grow, log-log slopes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from benchmark.bench.timing import random_classifier
from methods.config import TomographyConfig

log = logging.getLogger(__name__)


SCALE_SPECS = ("tonno", "tomographic_layercam@2")


@dataclass(frozen=True)
class ScalePoint:
    """One method on one cube: wall time, peak memory and bytes kept per volume."""

    spec: str
    sweep: str  # "size" (voxels grow at fixed L) or "angles" (L grows at a fixed size)
    size: int  # cube edge, voxels
    n_angles: int  # L of the method (n_angles for ToNNO, n_angles_cam for the CAM)
    seconds: float
    peak_mb: float | None  # above the memory in use before the call
    summary_bytes: int  # np.savez of the A.7 summary (default tau' grid)
    heatmap_bytes: int  # np.save of the float32 heatmap (as the cache keeps it)

    @property
    def voxels(self) -> int:
        return self.size**3


def _resident_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        status = handle.read()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def _reset_peak(device: torch.device) -> float | None:
    """Start a peak-memory window; returns the baseline (MiB), None if not measurable.

    CUDA: torch's peak statistics. CPU (Linux): writing 5 to /proc/self/clear_refs resets
    the resident high-water mark (VmHWM) to the current resident size."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _resident_mb("VmRSS")
    except OSError:
        return None


def _peak_since(device: torch.device, baseline: float | None) -> float | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - baseline
    return _resident_mb("VmHWM") - baseline


def _phantom(size: int, channels: int) -> torch.Tensor:
    """[C, s, s, s] smooth content inside the unit ball: a soft ball and a bright blob."""
    axis = torch.linspace(-1.0, 1.0, size)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r2 = z**2 + y**2 + x**2
    blob = torch.exp(-((z - 0.2) ** 2 + (y + 0.1) ** 2 + (x - 0.3) ** 2) / (2 * 0.1**2))
    return ((1 - r2 / 0.7**2).clamp(min=0) + blob).expand(channels, -1, -1, -1).contiguous()


def _kept_bytes(heatmap: torch.Tensor) -> tuple[int, int]:
    """(A.7 summary, float32 heatmap) sizes of ``np.savez``, against the phantom's blob."""
    import io

    import numpy as np

    from benchmark.protocol.evaluation import summarize, tail_quantiles, threshold_grid

    values = heatmap.float().cpu().numpy()
    size = values.shape[0]
    axis = np.linspace(-1.0, 1.0, size)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    mask = (z - 0.2) ** 2 + (y + 0.1) ** 2 + (x - 0.3) ** 2 < 0.15**2
    grid = threshold_grid([tail_quantiles(values)])
    sizes = []
    for arrays in (summarize(values, mask, grid).to_dict(), {"heatmap": values.astype(np.float32)}):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        sizes.append(buffer.getbuffer().nbytes)
    return sizes[0], sizes[1]


def _scale_point(
    spec: str,
    sweep: str,
    config: TomographyConfig,
    size: int,
    model: torch.nn.Module,
    channels: int,
    batch_size: int,
    device: torch.device,
    repeats: int = 1,
) -> ScalePoint:
    """One point: the best wall time of ``repeats`` calls, the peak memory of the first."""
    from methods import create_method

    method = create_method(spec, config=config, batch_size=batch_size)
    volume = _phantom(size, channels).to(device)
    elapsed, peak = float("inf"), None
    for attempt in range(repeats):
        baseline = _reset_peak(device)
        start = time.perf_counter()
        heatmap = method(volume, model)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = min(elapsed, time.perf_counter() - start)
        peak = _peak_since(device, baseline) if attempt == 0 else peak
    summary, full = _kept_bytes(heatmap)
    n_angles = config.n_angles if spec == "tonno" else config.n_angles_cam
    return ScalePoint(spec, sweep, size, n_angles, elapsed, peak, summary, full)


def bench_scale(
    config: TomographyConfig,
    sizes: tuple[int, ...],
    angles: tuple[int, ...],
    angle_size: int,
    device: torch.device,
    model_name: str = "resnet10t",
    batch_size: int = 64,
    channels: int = 1,
    specs: tuple[str, ...] = SCALE_SPECS,
    repeats: int = 1,
) -> list[ScalePoint]:
    """ToNNO and Tomographic LayerCAM@2 side by side on cubes of edge ``sizes`` at
    ``config``'s L, then at edge ``angle_size`` for each L in ``angles`` (both methods'
    L set to it). One warm-up call on the smallest cube first; the best of ``repeats``
    timed calls per point."""
    import dataclasses

    model = random_classifier(model_name, channels, device)
    for spec in specs:  # warm-up: first-call costs (allocator, kernels) out of the figures
        _scale_point(spec, "warm-up", config, min(sizes), model, channels, batch_size, device)
    points = []
    for size in sizes:
        for spec in specs:
            log.info("scale: %s at %d^3", spec, size)
            points.append(
                _scale_point(
                    spec, "size", config, size, model, channels, batch_size, device, repeats
                )
            )
    for n_angles in angles:
        swept = dataclasses.replace(config, n_angles=n_angles, n_angles_cam=n_angles)
        for spec in specs:
            log.info("scale: %s at L=%d", spec, n_angles)
            points.append(
                _scale_point(
                    spec, "angles", swept, angle_size, model, channels, batch_size, device, repeats
                )
            )
    return points


SCALE_QUANTITIES = (  # (sweep, x axis, quantity)
    ("size", "voxels", "seconds"),
    ("size", "voxels", "peak_mb"),
    ("size", "voxels", "summary_bytes"),
    ("size", "voxels", "heatmap_bytes"),
    ("angles", "n_angles", "seconds"),
    ("angles", "n_angles", "peak_mb"),
)


def scale_slopes(points: list[ScalePoint]) -> list[tuple[str, str, str, float | None]]:
    """(spec, x, quantity, log-log slope) per sweep: the exponent b of quantity ~ x^b, fitted
    by least squares on logs (numpy.polyfit); None with fewer than two positive points."""
    import numpy as np

    rows = []
    for spec in dict.fromkeys(p.spec for p in points):
        for sweep, x_name, quantity in SCALE_QUANTITIES:
            pairs = [
                (getattr(p, x_name), getattr(p, quantity))
                for p in points
                if p.spec == spec and p.sweep == sweep
            ]
            pairs = [(x, y) for x, y in pairs if y is not None and y > 0]
            slope = None
            if len({x for x, _ in pairs}) >= 2:
                xs, ys = np.log([x for x, _ in pairs]), np.log([y for _, y in pairs])
                slope = float(np.polyfit(xs, ys, 1)[0])
            rows.append((spec, x_name, quantity, slope))
    return rows


def plot_scale(points: list[ScalePoint], path: str) -> None:
    """Log-log figure of the scale figures: time, peak memory and bytes kept per volume
    against voxels, and time against L; written as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("size", "voxels", ("seconds",), "seconds per volume"),
        ("size", "voxels", ("peak_mb",), "peak memory (MiB)"),
        ("size", "voxels", ("summary_bytes", "heatmap_bytes"), "bytes kept per volume"),
        ("angles", "n_angles", ("seconds",), "seconds per volume"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for axis, (sweep, x_name, quantities, label) in zip(axes, panels, strict=True):
        for spec in dict.fromkeys(p.spec for p in points):
            chosen = [p for p in points if p.spec == spec and p.sweep == sweep]
            for quantity in quantities:
                pairs = [(getattr(p, x_name), getattr(p, quantity)) for p in chosen]
                pairs = [(x, y) for x, y in pairs if y is not None and y > 0]
                if pairs:
                    name = spec if len(quantities) == 1 else f"{spec} {quantity.split('_')[0]}"
                    axis.loglog(*zip(*pairs, strict=True), marker="o", label=name)
        axis.set_xlabel("voxels" if x_name == "voxels" else "L (directions)")
        axis.set_ylabel(label)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
