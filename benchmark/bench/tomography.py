"""``bench tomography``: the tomography core's throughput and ToNNO's overhead over its
classifier."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from benchmark.bench.timing import describe, random_classifier, timed
from methods import tomography
from methods.config import TomographyConfig

log = logging.getLogger(__name__)


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
        device=describe(device),
        shape=shape,
        config=config,
        extraction_s=extraction,
        backprojection_s=backprojection,
        classifier_s=classifier,
        reconstruct_s=reconstruction,
        peak_memory_mb=peak,
    )
