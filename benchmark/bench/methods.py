"""``bench methods``: slice-wise CAMs against pytorch-grad-cam, per-volume times (3D CAMs
too), peak memory against the chunk."""

from __future__ import annotations

import torch

from benchmark.bench.timing import Bfloat16, describe, random_classifier, timed
from benchmark.config import Train3DConfig
from methods.config import TomographyConfig


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
        ("device", describe(device)),
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
    half = timed(lambda: tonno(volume, Bfloat16(model)), device, repeats)
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
    model = create_volume_classifier(
        config.model, shape[0], config.input_size, max_pool=config.max_pool
    )
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
