"""``bench figure4``: the paper's Figure 4 measured, Averaged against Tomographic against
Iterative CAM."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from benchmark.bench.iterative import ball_mask
from methods import tomography
from methods.config import TomographyConfig

log = logging.getLogger(__name__)


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
    inside = ball_mask(shape).view(shape).to(device)
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
