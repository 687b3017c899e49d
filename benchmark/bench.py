"""``python -m benchmark bench``: throughput measured side by side in one run.

Speed goals are ratios of timings taken in the same process on the same device, so they
hold on any machine; nothing here is a pass/fail test.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.config import Train3DConfig
from methods import tomography
from methods.config import TomographyConfig

log = logging.getLogger(__name__)


def random_classifier(model_name: str, in_chans: int, device: torch.device) -> torch.nn.Module:
    """A timm classifier with random weights and one logit, channels-last, in eval mode."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=1, in_chans=in_chans)
    return model.to(device, memory_format=torch.channels_last).eval()


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up, in seconds."""
    fn()
    return min(_clock(fn, device) for _ in range(repeats))


@dataclass(frozen=True)
class TomographyBench:
    """Figures of ``bench tomography`` (times in seconds)."""

    device: str
    shape: tuple[int, int, int, int]
    config: TomographyConfig
    extraction_s: float
    backprojection_s: float
    classifier_s: float
    reconstruct_s: float
    peak_memory_mb: float | None

    @property
    def n_slices_total(self) -> int:
        return self.config.n_angles * (self.config.n_slices + 2)

    def rows(self) -> list[tuple[str, str]]:
        voxels = self.shape[1] * self.shape[2] * self.shape[3]
        c = self.config
        rows = [
            ("device", self.device),
            ("volume [C,D,H,W]", "x".join(map(str, self.shape))),
            (
                "L angles, M slices, slice px, chunk",
                f"{c.n_angles}, {c.n_slices}, {c.slice_size}, {c.chunk}",
            ),
            ("slices cut", f"{self.n_slices_total:,}"),
            ("extraction", f"{self.n_slices_total / self.extraction_s:,.0f} slices/s"),
            (
                "backprojection",
                f"{voxels * c.n_angles / self.backprojection_s / 1e6:,.1f} M voxel-directions/s",
            ),
            ("classifier alone (pre-cut slices)", f"{self.classifier_s:.2f} s"),
            ("reconstruct (cut + classify + filter + backproject)", f"{self.reconstruct_s:.2f} s"),
            ("overhead ratio reconstruct / classifier", f"{self.overhead_ratio:.3f}"),
        ]
        if self.peak_memory_mb is not None:
            rows.append(("peak GPU memory of reconstruct", f"{self.peak_memory_mb:,.0f} MiB"))
        return rows

    @property
    def overhead_ratio(self) -> float:
        return self.reconstruct_s / self.classifier_s


def bench_tomography(
    config: TomographyConfig,
    shape: tuple[int, int, int, int],
    device: torch.device,
    model_name: str = "resnet10t",
    repeats: int = 1,
) -> TomographyBench:
    """Time the tomography core and ToNNO's overhead over its classifier alone.

    The classifier alone runs on one chunk of pre-cut slices, as many times as
    ``reconstruct`` has chunks, so both see the same number of slices and batch size.
    """

    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(shape, generator=generator).to(device)
    model = random_classifier(model_name, shape[0], device)

    def classify(slices: torch.Tensor) -> torch.Tensor:
        return model(slices)[:, 0]

    normals = tomography.fibonacci_sphere(config.n_angles)
    u, v = tomography.orthonormal_frames(normals, generator)
    offsets = tomography.slice_offsets(config.n_slices)
    chunks = [slice(i, i + config.chunk) for i in range(0, config.n_angles, config.chunk)]

    def extract_all() -> None:
        for part in chunks:
            tomography.extract_slices(
                volume, normals[part], offsets, config.slice_size, u[part], v[part]
            )

    q = torch.randn(config.n_angles, config.n_slices, generator=generator).to(device)

    def backproject_all() -> None:
        for part in chunks:
            tomography.backproject(q[part], normals[part], shape[1:])

    batch = (
        tomography.extract_slices(
            volume, normals[chunks[0]], offsets, config.slice_size, u[chunks[0]], v[chunks[0]]
        )
        .flatten(0, 1)
        .contiguous(memory_format=torch.channels_last)
    )
    full_batches, rest = divmod(config.n_angles, config.chunk)
    last = batch[: rest * (config.n_slices + 2)]

    def classify_all() -> None:
        with tomography.autocast(device):
            for _ in range(full_batches):
                classify(batch)
            if rest:
                classify(last)

    def reconstruct() -> None:
        tomography.reconstruct(
            volume,
            classify,
            config.n_angles,
            config.n_slices,
            config.slice_size,
            chunk=config.chunk,
            seed=config.seed,
            frames="slice",  # as ToNNO
        )

    with torch.inference_mode():
        log.info("timing extraction, backprojection, classifier, reconstruct on %s", device)
        extraction = timed(extract_all, device, repeats)
        backprojection = timed(backproject_all, device, repeats)
        classifier = timed(classify_all, device, repeats)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reconstruction = timed(reconstruct, device, repeats)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return TomographyBench(
        device=_describe(device),
        shape=shape,
        config=config,
        extraction_s=extraction,
        backprojection_s=backprojection,
        classifier_s=classifier,
        reconstruct_s=reconstruction,
        peak_memory_mb=peak,
    )


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _pytorch_grad_cam_volume(
    cam_class: type,
    model: torch.nn.Module,
    layer: torch.nn.Module,
    volume: torch.Tensor,
    size: int,
    batch_size: int,
) -> torch.Tensor:
    """The paper's slice-wise baseline written with pytorch-grad-cam, as a user would:
    axial slices resized to the input size, its (min-max scaled) maps resized back."""
    import torch.nn.functional as F
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    slices = F.interpolate(
        volume.movedim(1, 0), size=(size, size), mode="bilinear", align_corners=True
    )
    maps = []
    with cam_class(model=model, target_layers=[layer]) as cam:
        for batch in slices.split(batch_size):
            targets = [ClassifierOutputTarget(0)] * len(batch)
            maps.append(torch.from_numpy(cam(input_tensor=batch, targets=targets)))
    stack = torch.cat(maps)[:, None].to(volume.device)
    return F.interpolate(stack, size=volume.shape[2:], mode="bilinear", align_corners=True)[:, 0]


def _peak_memory_mb(code: str, device: torch.device) -> float:
    """Peak memory of a fresh Python process running ``code``: GPU memory allocated by torch
    on CUDA, the process's resident high-water mark (VmHWM) on the CPU, in MiB."""
    import subprocess
    import sys

    if device.type == "cuda":
        code += "\nprint(torch.cuda.max_memory_allocated() / 2**20)"
    else:
        code += (
            "\nprint(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)"
        )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def bench_methods(
    config: TomographyConfig,
    shape: tuple[int, int, int, int],
    device: torch.device,
    model_name: str = "resnet10t",
    batch_size: int = 64,
    repeats: int = 1,
    memory: bool = True,
    volume_classifier: Train3DConfig | None = None,
) -> list[tuple[str, str]]:
    """Slice-wise CAM throughput of ours vs pytorch-grad-cam on the same model and volume,
    per-volume times of ToNNO, Tomographic LayerCAM and the 3D CAMs (the model and input
    size of ``volume_classifier``, default: its paper preset), and peak memory against
    ``chunk``."""
    import pytorch_grad_cam

    from methods import create_method
    from methods.heatmaps import compute_heatmaps
    from methods.stages import stage_modules

    volume = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    model = random_classifier(model_name, shape[0], device)
    stages = stage_modules(model)
    size = config.slice_size
    rows: list[tuple[str, str]] = [
        ("device", _describe(device)),
        ("volume [C,D,H,W]", "x".join(map(str, shape))),
        ("classifier", f"{model_name} (random weights), {size} px, batch {batch_size}"),
    ]
    family_ours = family_theirs = 0.0
    for name, cam_class in (
        ("layercam", pytorch_grad_cam.LayerCAM),
        ("gradcam", pytorch_grad_cam.GradCAM),
    ):
        for layer in (1, 2, 3, 4):
            method = create_method(f"{name}@{layer}", config=config, batch_size=batch_size)
            ours = timed(lambda m=method: m(volume, model), device, repeats)
            theirs = timed(
                lambda layer=layer, cls=cam_class: _pytorch_grad_cam_volume(
                    cls, model, stages[layer], volume, size, batch_size
                ),
                device,
                repeats,
            )
            family_ours, family_theirs = family_ours + ours, family_theirs + theirs
            rows.append(
                (
                    f"{name}@{layer}: ours / pytorch-grad-cam",
                    f"{ours:.2f} s / {theirs:.2f} s = {theirs / ours:.1f}x",
                )
            )
    specs = [f"{name}@{k}" for name in ("layercam", "gradcam") for k in (1, 2, 3, 4)]
    shared = timed(
        lambda: dict(compute_heatmaps(specs, volume, model, config, batch_size)), device, repeats
    )
    rows.append(
        (
            "8 specs above one by one: ours / pytorch-grad-cam",
            f"{family_ours:.2f} s / {family_theirs:.2f} s = {family_theirs / family_ours:.1f}x",
        )
    )
    rows.append(
        (
            "8 specs above shared (compute_heatmaps) vs pytorch-grad-cam",
            f"{shared:.2f} s: {family_theirs / shared:.1f}x",
        )
    )
    for spec in ("tonno", "tomographic_layercam@2"):
        method = create_method(spec, config=config, batch_size=batch_size)
        rows.append(
            (
                f"{spec} per volume",
                f"{timed(lambda m=method: m(volume, model), device, repeats):.2f} s",
            )
        )
    tonno = create_method("tonno", config=config, batch_size=batch_size)
    full = timed(lambda: tonno(volume, model), device, repeats)
    half = timed(lambda: tonno(volume, _Bfloat16(model)), device, repeats)
    rows.append(
        (
            "tonno per volume, classifier in float32 / under bf16 autocast (as training)",
            f"{full:.2f} s / {half:.2f} s = {full / half:.2f}x",
        )
    )
    rows += bench_volume_cams(shape, volume_classifier or Train3DConfig(), device, repeats)
    if memory:
        rows += _chunk_memory_rows(config, shape, device, model_name)
    return rows


VOLUME_GRADIENT_CAMS = ("cam3d_gradcam", "cam3d_gradcampp", "cam3d_layercam")


def bench_volume_cams(
    shape: tuple[int, int, int, int],
    config: Train3DConfig,
    device: torch.device,
    repeats: int = 1,
) -> list[tuple[str, str]]:
    """Seconds per volume of the 3D CAMs on the volume classifier of ``config``
    (:mod:`benchmark.training.classifier3d`, random weights, at its input size): each gradient CAM
    at stage 4, the twelve gradient specs sharing one pass, and ScoreCAM at stage 1 (one
    forward pass per channel, and one)."""
    from benchmark.training.classifier3d import create_volume_classifier
    from methods import create_method
    from methods.heatmaps import compute_heatmaps

    volume = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    model = create_volume_classifier(config.model, shape[0], config.input_size)
    model = model.to(device).eval()
    rows = [("volume classifier", f"{config.model} (random weights), input {config.input_size}")]
    for spec in (*(f"{name}@4" for name in VOLUME_GRADIENT_CAMS), "cam3d_scorecam@1"):
        method = create_method(spec)
        seconds = timed(lambda m=method: m(volume, model), device, repeats)
        rows.append((f"{spec} per volume", f"{seconds:.3f} s"))
    specs = [f"{name}@{k}" for name in VOLUME_GRADIENT_CAMS for k in (1, 2, 3, 4)]
    shared = timed(lambda: dict(compute_heatmaps(specs, volume, model)), device, repeats)
    rows.append((f"{len(specs)} gradient 3D CAM specs shared per volume", f"{shared:.3f} s"))
    return rows


def _chunk_memory_rows(
    config: TomographyConfig,
    shape: tuple[int, int, int, int],
    device: torch.device,
    model_name: str,
) -> list[tuple[str, str]]:
    """Peak memory of ToNNO for two L at one chunk and two chunks at one L."""
    rows = []
    for n_angles, chunk in (
        (config.chunk * 2, config.chunk),
        (config.chunk * 8, config.chunk),
        (config.chunk * 8, config.chunk // 4),
    ):
        code = (
            "import torch, timm\n"
            "from methods.tomography import reconstruct\n"
            f"device = torch.device('{device.type}')\n"
            f"model = timm.create_model('{model_name}', num_classes=1, in_chans={shape[0]})"
            ".to(device).eval()\n"
            f"volume = torch.rand({tuple(shape)}, device=device)\n"
            "with torch.inference_mode():\n"
            f"    reconstruct(volume, lambda s: model(s)[:, 0], {n_angles}, {config.n_slices},"
            f" {config.slice_size}, chunk={chunk}, frames='slice')\n"
        )
        what = "peak GPU memory" if device.type == "cuda" else "peak process memory"
        peak = _peak_memory_mb(code, device)
        rows.append((f"ToNNO {what}, L={n_angles}, chunk={chunk}", f"{peak:,.0f} MiB"))
    return rows


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


# Figure 4 (3.5): each slice's "CAM" is the slice average-pooled to a coarse grid.
# (slice pixels, cells across it): the paper's 224 px at ResNet stages 1-4, and the quick
# preset's 64 px at the same stages (kernels of 32, 16, 8 and 4 pixels in both)
FIGURE4_GRIDS = {"paper": (224, (7, 14, 28, 56)), "quick": (64, (2, 4, 8, 16))}
FIGURE4_METHODS = {"averaged": tomography.UNFILTERED, "tomographic": tomography.FILTERED}


def figure4_phantoms(shape: tuple[int, int, int], synthetic: int = 1) -> dict[str, torch.Tensor]:
    """{name: [D,H,W]} on [-1, 1]^3: a smooth ball (1 - |x|^2/0.6^2)+, an off-centre smooth
    ellipsoid (axes 0.5, 0.3, 0.4 at (0.2, -0.15, 0.1)) and the first ``synthetic``
    positive validation images of the synthetic set (channel 0) at ``shape``."""
    from datasets import load_dataset

    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def smooth(centre: tuple[float, ...], radii: tuple[float, ...]) -> torch.Tensor:
        scaled = (points - torch.tensor(centre, dtype=torch.float64)) / torch.tensor(radii)
        return (1.0 - scaled.square().sum(-1)).clamp(min=0.0).float()

    phantoms = {
        "smooth ball": smooth((0.0, 0.0, 0.0), (0.6, 0.6, 0.6)),
        "off-centre ellipsoid": smooth((0.2, -0.15, 0.1), (0.5, 0.3, 0.4)),
    }
    if synthetic:
        dataset = load_dataset("synthetic", shape=shape)
        positives = [i for i in dataset.ids("val") if dataset.label(i) == 1][:synthetic]
        phantoms.update({i: torch.from_numpy(dataset[i].image[0]) for i in positives})
    return phantoms


@dataclass(frozen=True)
class Figure4Row:
    """Relative L2 errors inside the unit ball of one phantom's reconstructions from its
    slices pooled to ``cells`` of ``slice_size`` pixels."""

    phantom: str
    slice_size: int
    cells: int
    averaged: float
    tomographic: float
    iterative: float


def bench_figure4(
    config: TomographyConfig,
    phantoms: dict[str, torch.Tensor],
    device: torch.device,
    grids: tuple[tuple[int, tuple[int, ...]], ...] = tuple(FIGURE4_GRIDS.values()),
) -> list[Figure4Row]:
    """The paper's Figure 4, measured: for each (slice pixels, cells) of ``grids``, every
    phantom's slices pooled to cells x cells are the "CAM" maps of Averaged CAM (eq. 12),
    Tomographic CAM (eq. 13) and Iterative CAM (the default
    :class:`methods.tomography.Iterative`), all from one pass (``config``'s n_angles_cam,
    n_slices, chunk, seed); error ||G - V|| / ||V|| over the voxels with |x| <= 1."""
    names = list(phantoms)
    volume = torch.stack([phantoms[n] for n in names]).to(device)
    shape = tuple(volume.shape[1:])
    axes = [torch.linspace(-1.0, 1.0, n) for n in shape]
    radius = torch.stack(torch.meshgrid(*axes, indexing="ij")).square().sum(0).sqrt()
    inside = (radius <= 1.0).to(device)
    iterative = tomography.Iterative()
    modes = {**FIGURE4_METHODS, "iterative": iterative}
    rows = []
    for size, cells in grids:
        log.info("figure 4: %d px pooled to %s cells", size, cells)

        def pooled(slices: torch.Tensor, cells: tuple[int, ...] = cells) -> dict:
            return {
                (k, c): torch.nn.functional.adaptive_avg_pool2d(slices[:, k], c)
                for k in range(len(names))
                for c in cells
            }

        results = tomography.reconstruct_many(
            volume,
            pooled,
            config.n_angles_cam,
            config.n_slices,
            size,
            modes=list(modes.values()),
            chunk=config.chunk,
            seed=config.seed,
            mixed_precision=False,
        )
        for c in cells:
            for k, name in enumerate(names):
                truth = volume[k][inside]
                errors = {
                    method: float((results[((k, c), mode)][inside] - truth).norm() / truth.norm())
                    for method, mode in modes.items()
                }
                rows.append(Figure4Row(name, size, c, **errors))
    return rows


# --- bench train: what speeds a training step, and how long the quick preset takes to learn


@dataclass(frozen=True)
class StepVariant:
    """A way to run the 2D classifier's training step, timed side by side (``bench train``)."""

    name: str
    precision: str = "float32"  # TrainConfig.precision
    channels_last: bool = False
    batch_factor: int = 1  # volumes (hence slices) per step, times this
    compile: bool = False  # torch.compile the model (its compile time is reported apart)


STEP_VARIANTS = (
    StepVariant("float32"),
    StepVariant("bf16 autocast", "bfloat16"),
    StepVariant("channels_last", channels_last=True),
    StepVariant("bf16 + channels_last", "bfloat16", channels_last=True),
    StepVariant("bf16, 2x slices a step", "bfloat16", batch_factor=2),
    StepVariant("bf16 + torch.compile", "bfloat16", compile=True),
)


class _Bfloat16(torch.nn.Module):
    """``model`` under bf16 autocast on its device (the methods autocast on CUDA only)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


class _ChannelsLast(torch.nn.Module):
    """``model`` fed channels-last inputs (its weights converted too)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class StepTiming:
    variant: StepVariant
    seconds: float  # median of the timed steps (draw, cut, forward, backward, Adam)
    slices: int  # per step
    compile_seconds: float | None = None  # the first (compiling) step, with torch.compile


def bench_training_step(
    config, dataset, device: torch.device, variants=STEP_VARIANTS, repeats: int = 5
) -> list[StepTiming]:
    """Seconds per training step of the 2D classifier of ``config`` on ``dataset`` for each
    of ``variants`` (:func:`benchmark.training.train.step_function`), timed in turn (round robin,
    ``repeats`` rounds after a warm-up step each) so that a change of the machine's load
    touches every variant alike."""
    import dataclasses

    from benchmark.training.train import step_function

    steps, compile_seconds = {}, {}
    for variant in variants:
        varied = dataclasses.replace(
            config,
            batch_volumes=config.batch_volumes * variant.batch_factor,
            precision=variant.precision,
        )

        def wrap(model: torch.nn.Module, variant: StepVariant = variant) -> torch.nn.Module:
            model = _ChannelsLast(model) if variant.channels_last else model
            return torch.compile(model) if variant.compile else model

        steps[variant] = step_function(varied, dataset, device, wrap)
        seconds = _clock(steps[variant], device)  # warm-up (and compilation)
        compile_seconds[variant] = seconds if variant.compile else None
    times: dict[StepVariant, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):
        for variant in variants:
            times[variant].append(_clock(steps[variant], device))
    return [
        StepTiming(
            v,
            sorted(times[v])[len(times[v]) // 2],
            config.batch_volumes * v.batch_factor * config.slices_per_volume,
            compile_seconds[v],
        )
        for v in variants
    ]


def _clock(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, in seconds (CUDA synchronised around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@dataclass(frozen=True)
class LearningRun:
    """How one training of ``bench train --learn`` went (minutes: of training alone)."""

    seed: int
    target_step: int | None  # first validation whose evaluation AUC reached the target
    target_minutes: float | None
    step: int  # where training ended (early stop or cap)
    best_step: int | None  # whose weights were kept
    minutes: float
    report: dict  # benchmark.training.scoring.classifier_report of the kept weights


def bench_learning(
    config, dataset, device: torch.device, seeds, target: float = 0.95
) -> list[LearningRun]:
    """Train the classifier of ``config`` on ``dataset`` once per seed, as ``run`` does,
    scoring the evaluation split at every validation (for this report only: training
    never sees it) to find the step and the minutes of training at which its AUC first
    reaches ``target``; then the report of the weights training kept."""
    import dataclasses
    import tempfile

    from benchmark.training.checkpoint import load_classifier, read_checkpoint
    from benchmark.training.scoring import classifier_report, roc_auc
    from benchmark.training.slices import volume_logits
    from benchmark.training.train import train

    ids = list(dataset.ids("val"))
    labels = torch.tensor([dataset.label(i) for i in ids])
    runs = []
    for seed in seeds:
        seeded = dataclasses.replace(config, seed=seed)
        clock = {"spent": 0.0, "since": time.perf_counter(), "hit": None}

        def monitor(step: int, model: torch.nn.Module, clock=clock, seeded=seeded) -> None:
            clock["spent"] += time.perf_counter() - clock["since"]
            logits = volume_logits(model, dataset, ids, seeded.val_slices, seeded.slice_size, 256)
            auc = roc_auc(labels, logits)
            log.info("step %d: evaluation AUC %.4f after %.1f min", step, auc, clock["spent"] / 60)
            if clock["hit"] is None and auc >= target:
                clock["hit"] = (step, clock["spent"] / 60)
            clock["since"] = time.perf_counter()

        with tempfile.TemporaryDirectory() as folder:
            path = train(dataset, seeded, folder, device=device, progress=False, monitor=monitor)
            state = read_checkpoint(path)
            model = load_classifier(path, device)
            report = classifier_report(model, dataset, ids, seeded, 256)
        hit = clock["hit"] or (None, None)
        runs.append(
            LearningRun(
                seed,
                hit[0],
                hit[1],
                state["step"],
                (state.get("best") or {}).get("step"),
                clock["spent"] / 60,
                report,
            )
        )
    return runs


def lesion_slice_share(config, dataset, volumes: int = 12, draws: int = 4) -> float | None:
    """The share of a positive volume's training slices (A.6's draws for ``config``) that cut
    a lesion, over the first ``volumes`` annotated positives of the train split: every
    other slice of a positive is labelled positive by A.6's loss all the same. None
    without masks."""
    from benchmark.training.slices import cut_slices, draw_slice_params

    generator = torch.Generator().manual_seed(config.seed)
    positives = [i for i in dataset.ids("train") if dataset.label(i) == 1]
    masks = [m for m in (dataset[i].mask for i in positives[: 4 * volumes]) if m is not None]
    if not masks:
        return None
    hits = []
    for mask in masks[:volumes]:
        volume = torch.as_tensor(mask, dtype=torch.float32)[None]
        for _ in range(draws):
            params = draw_slice_params(config.slices_per_volume, generator, intensity=0.0)
            slices = cut_slices(volume, params, config.slice_size)
            hits.append(slices.flatten(1).amax(1) > 0.5)
    return float(torch.cat(hits).float().mean())


def slice_loss_floor(share: float) -> float:
    """The smallest mean A.6 loss (nats; balanced classes) that any classifier reaches when
    a share ``share`` of a positive volume's slices cut its lesion: a perfect lesion
    detector says 1 on those, and on every other slice, of either class, the chance that
    its volume is positive, q = (1 - share) / (2 - share). At chance the loss is ln 2; the
    gap is all the signal A.6's labels give a classifier."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    q = (1.0 - share) / (2.0 - share)
    if q == 0.0:
        return 0.0
    entropy = -(q * math.log(q) + (1.0 - q) * math.log(1.0 - q))
    return (1.0 - share / 2.0) * entropy


# --- bench plan: run --plan's estimate beside the same run's measured time ---


@dataclass(frozen=True)
class PlanStage:
    """One row of ``bench plan``: a stage's estimated and measured seconds."""

    stage: str
    estimated: float
    measured: float


def bench_plan(run_args: Sequence[str], folder: Path) -> tuple[str, list[PlanStage]]:
    """(the plan's text, its stages beside the measured ones): ``python -m benchmark run``
    with ``run_args`` and ``--plan``, then the same run, each in a fresh process, with a
    fresh cache and run folder under ``folder``.

    Estimated: the plan's ``heatmaps``, ``training`` and ``total`` rows (``plan.csv``).
    Measured: the heatmaps, the sum of the run's ``timings.csv``; the total, the run's
    wall clock, start-up to page; training and the rest (start-up, volume checks, the
    classifier's report, protocol, pages), their difference.
    """
    import os
    import subprocess
    import sys

    import pandas as pd

    from benchmark.run.plan import HOUR, PLAN_CSV

    env = {**os.environ, "TONNO_CACHE": str(folder / "cache")}
    out = ["--out", str(folder / "run"), "--leaderboards", str(folder / "leaderboards")]
    argv = [sys.executable, "-m", "benchmark", "run", *run_args, *out]

    def run(*extra: str) -> str:
        done = subprocess.run([*argv, *extra], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ValueError(f"bench plan: the run failed (exit {done.returncode}): {last}")
        return done.stdout

    text = run("--plan")
    rows = pd.read_csv(folder / "run" / PLAN_CSV).set_index("family")["hours"] * HOUR
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    heatmaps = float(pd.read_csv(folder / "run" / "timings.csv").seconds.sum())
    return text, [
        PlanStage("heatmaps", rows["heatmaps"], heatmaps),
        PlanStage("training (measured: and the rest)", rows.get("training", 0.0), wall - heatmaps),
        PlanStage("total", rows["total"], wall),
    ]
