"""``bench iterative``: why iterative CAM fails on a classifier's CAMs, and the variants tried.

Figure 4's maps are pooled slices, which P (:func:`methods.tomography.project_maps`) models
exactly; a classifier's CAMs are not. For a trained classifier's LayerCAM maps of Averaged
CAM's stacks (the tomography preset's L, M, slice size and frames) at stages 1-4, on the
evaluation positives, :func:`diagnose` measures

- the maps against pooled slices of the lesion mask: per direction, the least-squares fit
  maps = g P(mask) + o (its R^2, the share of directions with g > 0, o over the mean map),
  the mean map of the slices that miss the lesion over the mean peak of those that cut it,
  and the share of cells at 0 (the ReLU floor);
- the residual ||P x - maps|| / ||maps|| per direction (median) of Averaged CAM (eq. 12)
  and of the iterative solution;
- where each reconstruction puts its top voxels: the share of the lesion-sized top inside
  the lesion, and the share of the top 0.5 % within 2 voxels of the cube's faces;

for Averaged, Tomographic (eq. 13) and each :class:`Variant` of the iterative model;
:func:`draw_views` shows the first positive's reconstructions. Figures and what they say:
docs/tomography.md ("Iterative CAM on a classifier's CAMs").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from methods import tomography
from methods.config import TomographyConfig

EDGE_VOXELS = 2  # "at the cube's faces": within this many voxels of one
EDGE_TOP = 0.005  # the share of a heatmap's top voxels whose place :func:`placement` reports


@dataclass(frozen=True)
class Variant:
    """A model of the maps for the iterative solve: min ||W (P x + o) - W maps||^2, x >= 0.

    ``support``: x only inside the unit ball (the voxels every direction's slices see; 0
    elsewhere); ``offsets``: o a free offset per direction (the maps' background), else 0;
    ``differenced``: W the second difference along each stack (eq. 9, what Tomographic CAM
    backprojects), else the identity. ``iterations`` of accelerated projected gradient
    from ``start``, Averaged or Tomographic CAM (its negative part set to 0), with
    :class:`methods.tomography.Iterative`'s diagonal step D = P^T P 1 (undifferenced) or
    the step 1 / ||W P||^2 (differenced: W has signed weights).
    """

    name: str
    iterations: int = 30
    support: bool = False
    offsets: bool = False
    differenced: bool = False
    start: str = "averaged"


VARIANTS = (
    Variant("iterative"),  # the family's model (methods.tomography.Iterative())
    Variant("in the ball", support=True),
    Variant("in the ball, 5 iterations", iterations=5, support=True),
    Variant("in the ball, offsets", support=True, offsets=True),
    Variant("in the ball, second differences", support=True, differenced=True, start="tomographic"),
)


class PooledSlices:
    """P as its sparse blocks (:func:`methods.tomography.pooled_slice_matrices`): x [D*H*W]
    -> maps [L, M, a*b], and its transpose."""

    def __init__(self, normals, u, v, offsets, size, cells, shape):
        self.shape = (len(normals), len(offsets), cells[0] * cells[1])
        self.blocks = list(
            tomography.pooled_slice_matrices(normals, u, v, offsets, size, cells, shape)
        )

    def __call__(self, x: Tensor) -> Tensor:
        column = x.reshape(-1, 1)
        return torch.cat([matrix @ column for matrix, _ in self.blocks]).view(self.shape)

    def transpose(self, maps: Tensor) -> Tensor:
        rows, total, start = maps.reshape(-1, 1), None, 0
        for matrix, transpose in self.blocks:
            stop = start + matrix.shape[0]
            part = transpose @ rows[start:stop]
            total = part if total is None else total + part
            start = stop
        return total[:, 0]


def difference(maps: Tensor) -> Tensor:
    """Second difference along each stack (eq. 9 without its 1/h^2): [L, M, c] -> [L, M-2, c]."""
    return maps[:, 2:] + maps[:, :-2] - 2 * maps[:, 1:-1]


def difference_transpose(z: Tensor) -> Tensor:
    """The adjoint of :func:`difference`: [L, M-2, c] -> [L, M, c]."""
    out = z.new_zeros(z.shape[0], z.shape[1] + 2, z.shape[2])
    out[:, 2:] += z
    out[:, :-2] += z
    out[:, 1:-1] -= 2 * z
    return out


def _largest_eigenvalue(normal: Callable[[Tensor], Tensor], n: int, iterations: int = 20) -> float:
    """||A^T A||_2 by power iteration on ``normal`` = A^T A (seeded)."""
    z = torch.rand(n, generator=torch.Generator().manual_seed(0))
    value = 0.0
    for _ in range(iterations):
        z = normal(z)
        value = float(z.norm())
        z = z / value
    return value


def solve(
    project: PooledSlices, maps: Tensor, start: Tensor, variant: Variant, ball: Tensor
) -> Tensor:
    """x [D*H*W] of ``variant``'s model from ``maps`` [L, M, c], from ``start``."""
    if variant.differenced:
        target = difference(maps)

        def forward(x: Tensor) -> Tensor:
            return difference(project(x))

        def adjoint(z: Tensor) -> Tensor:
            return project.transpose(difference_transpose(z))

        norm = _largest_eigenvalue(lambda z: adjoint(forward(z)), start.numel())
        step = torch.full_like(start, 1.0 / (1.05 * norm))
    else:
        target, forward, adjoint = maps, project, project.transpose
        diagonal = adjoint(forward(torch.ones_like(start)))
        step = torch.where(diagonal > 0, 1.0 / diagonal.clamp(min=1e-30), 0.0)
    if variant.support:
        step, start = torch.where(ball, step, 0.0), torch.where(ball, start, 0.0)
    x = previous = start.clamp(min=0.0)
    t = 1.0
    for _ in range(variant.iterations):  # FISTA, projected on x >= 0
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x + ((t - 1.0) / t_next) * (x - previous)
        misfit = target - forward(y)
        if variant.offsets:  # the best offset per direction for y, in closed form
            misfit = misfit - misfit.mean(dim=(1, 2), keepdim=True)
        previous, x, t = x, (y + step * adjoint(misfit)).clamp(min=0.0), t_next
    return x


def map_model(maps: Tensor, pooled_mask: Tensor) -> dict[str, float]:
    """How the maps [L, M, c] differ from pooled slices of the lesion mask [L, M, c]: the
    per-direction least-squares fit maps = g pooled_mask + o over the directions whose slices
    cut the lesion (median R^2, share of g > 0, median o / mean map), and the mean map of
    the slices that miss the lesion over the mean peak of the slices that cut it; the share
    of map cells at 0 (the CAM's ReLU floor)."""
    r2, positive, offset = [], [], []
    for y, m in zip(maps.flatten(1).double(), pooled_mask.flatten(1).double(), strict=True):
        if float(m.std()) == 0.0:
            continue
        design = torch.stack([m, torch.ones_like(m)], dim=1)
        coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
        fitted = design @ coef
        total = float((y - y.mean()).square().sum())
        r2.append(1.0 - float((y - fitted).square().sum()) / total if total > 0 else 1.0)
        positive.append(float(coef[0] > 0))
        offset.append(float(coef[1]) / float(y.abs().mean()) if bool(y.any()) else math.nan)
    cuts = pooled_mask.flatten(2).amax(-1) > 0  # [L, M]: slices that cut the lesion
    peak = maps.flatten(2).amax(-1)
    return {
        "fit R^2 (median over directions)": float(np.median(r2)) if r2 else math.nan,
        "directions with gain > 0": float(np.mean(positive)) if positive else math.nan,
        "offset / mean map (median)": float(np.median(offset)) if offset else math.nan,
        "map off the lesion / peak on it": float(maps[~cuts].mean() / peak[cuts].mean())
        if bool(cuts.any()) and bool((~cuts).any())
        else math.nan,
        "map cells at 0 (ReLU floor)": float((maps == 0).double().mean()),
    }


def residual(project: PooledSlices, x: Tensor, maps: Tensor) -> float:
    """Median over directions of ||P x - maps|| / ||maps||."""
    ratio = (project(x) - maps).flatten(1).norm(dim=1) / maps.flatten(1).norm(dim=1)
    return float(ratio.median())


def edge_mask(shape: tuple[int, int, int]) -> Tensor:
    """Voxels [D*H*W] within EDGE_VOXELS of one of the cube's faces."""
    index = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    depth = torch.stack([torch.minimum(i, n - 1 - i) for i, n in zip(index, shape, strict=True)])
    return (depth.amin(0) <= EDGE_VOXELS).flatten()


def ball_mask(shape: tuple[int, int, int]) -> Tensor:
    """Voxels [D*H*W] inside the unit ball of [-1, 1]^3 (the tomography core's grid)."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    return (points.square().sum(0) <= 1.0).flatten()


def placement(x: Tensor, lesion: Tensor, edge: Tensor) -> dict[str, float]:
    """Share of the top voxels of ``x`` [D*H*W], as many as the lesion's, inside the lesion
    (bool [D*H*W]); share of its top EDGE_TOP within EDGE_VOXELS of a face."""
    n_lesion = max(1, int(lesion.sum()))
    n_edge = max(1, int(EDGE_TOP * x.numel()))
    return {
        "top in the lesion": float(lesion[x.topk(n_lesion).indices].float().mean()),
        "top 0.5 % at the faces": float(edge[x.topk(n_edge).indices].float().mean()),
    }


@dataclass
class Geometry:
    """Averaged CAM's stacks (the quick preset's L, M, slice size, seed): one frame per
    direction, offsets m = -1..M (Tomographic CAM's) of which m = 0..M-1 are P's."""

    normals: Tensor
    u: Tensor
    v: Tensor
    padded: Tensor
    inner: Tensor
    size: int

    @classmethod
    def of(cls, config: TomographyConfig) -> Geometry:
        normals = tomography.fibonacci_sphere(config.n_angles_cam)
        u, v = tomography.orthonormal_frames(normals, torch.Generator().manual_seed(config.seed))
        padded = tomography.slice_offsets(config.n_slices, padded=True)
        inner = tomography.slice_offsets(config.n_slices, padded=False)
        return cls(normals, u, v, padded, inner, config.slice_size)


def stack_maps(
    model: nn.Module, volume: Tensor, geometry: Geometry, layers: dict[int, nn.Module], chunk: int
) -> dict[int, Tensor]:
    """LayerCAM maps [L, M+2, a, b] of every stack, per stage."""
    from methods.cam import LayerCAM, multi_cam

    maps_of = multi_cam(model, {k: (LayerCAM(), layer) for k, layer in layers.items()}, 64)
    g, parts = geometry, {k: [] for k in layers}
    for start in range(0, len(g.normals), chunk):
        part = slice(start, start + chunk)
        slices = tomography.extract_slices(
            volume, g.normals[part], g.padded, g.size, g.u[part], g.v[part]
        )
        outputs = maps_of(slices.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        for k, maps in outputs.items():
            parts[k].append(maps.float().reshape(*slices.shape[:2], *maps.shape[1:]))
    return {k: torch.cat(p) for k, p in parts.items()}


def reconstructions(
    stacks: Tensor, geometry: Geometry, shape: tuple[int, int, int], variants=VARIANTS
) -> tuple[dict[str, Tensor], PooledSlices]:
    """{name: heatmap [D*H*W]} of Averaged (eq. 12), Tomographic (eq. 13) and each variant
    from one stage's stacks [L, M+2, a, b]; and P."""
    g, n_angles = geometry, len(geometry.normals)
    inner = stacks[:, 1:-1]
    averaged = tomography.backproject_maps(inner[:, None], g.normals, g.u, g.v, shape, g.size)
    filtered = tomography.second_difference(stacks.movedim(1, -1)).movedim(-1, 1)
    tomographic = tomography.backproject_maps(filtered[:, None], g.normals, g.u, g.v, shape, g.size)
    averaged = averaged[0].flatten() / n_angles
    found = {
        "averaged": averaged,
        "tomographic": tomographic[0].flatten() * (-1.0 / (2.0 * math.pi * n_angles)),
    }
    project = PooledSlices(g.normals, g.u, g.v, g.inner, g.size, tuple(stacks.shape[-2:]), shape)
    maps, ball = inner.flatten(2), ball_mask(shape)
    for variant in variants:
        found[variant.name] = solve(project, maps, found[variant.start], variant, ball)
    return found, project


def diagnose(
    model: nn.Module,
    dataset,
    ids: list[str],
    config: TomographyConfig,
    stages: tuple[int, ...] = (1, 2, 3, 4),
    heatmaps: Path | None = None,
    views: dict[int, dict[str, np.ndarray]] | None = None,
) -> Iterator[dict]:
    """One row per volume and stage: the measures above (positives only) and, with
    ``heatmaps``, every reconstruction written to ``heatmaps/<name>@<stage>/<id>.npy``;
    ``views`` gets, per stage, the first positive's image, lesion and reconstructions as
    maxima over the depth axis (:func:`draw_views`)."""
    from methods.stages import stage_modules

    geometry = Geometry.of(config)
    modules = stage_modules(model)
    layers = {k: modules[k] for k in stages}
    for sample_id in ids:
        record = dataset[sample_id]
        volume = torch.from_numpy(np.asarray(record.image, dtype=np.float32))
        shape = tuple(volume.shape[1:])
        stacks = stack_maps(model, volume, geometry, layers, config.chunk)
        edge = edge_mask(shape)
        for stage, stack in stacks.items():
            found, project = reconstructions(stack, geometry, shape)
            if heatmaps is not None:
                for name, x in found.items():
                    folder = heatmaps / f"{name.replace(' ', '_').replace(',', '')}@{stage}"
                    folder.mkdir(parents=True, exist_ok=True)
                    np.save(folder / f"{sample_id}.npy", x.view(shape).numpy())
            if record.label != 1 or record.mask is None or not record.mask.any():
                continue
            lesion = torch.from_numpy(np.asarray(record.mask)).flatten()
            maps = stack[:, 1:-1].flatten(2)
            row = {"id": sample_id, "stage": stage, **map_model(maps, project(lesion.float()))}
            row["residual: averaged"] = residual(project, found["averaged"], maps)
            row["residual: iterative"] = residual(project, found["iterative"], maps)
            for name, x in found.items():
                for measure, value in placement(x, lesion, edge).items():
                    row[f"{measure}: {name}"] = value
            if views is not None and views.get(stage, {}).get("id", sample_id) == sample_id:
                views[stage] = {
                    "id": sample_id,
                    "image": volume[0].amax(0).numpy(),
                    "lesion": np.asarray(record.mask).max(0),
                    **{name: x.view(shape).amax(0).numpy() for name, x in found.items()},
                }
            yield row


def draw_views(views: dict[int, dict[str, np.ndarray]], path: Path) -> None:
    """A PNG of :func:`diagnose`'s ``views``: a row per stage, the image with the lesion
    outlined, then each reconstruction (maxima over depth, each scaled to its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stages = sorted(views)
    names = [k for k in views[stages[0]] if k not in ("id", "image", "lesion")]
    size = (1.6 * (len(names) + 1), 1.8 * len(stages))
    figure = Figure(figsize=size, dpi=80, layout="constrained")
    axes = figure.subplots(len(stages), len(names) + 1, squeeze=False)
    for row, stage in zip(axes, stages, strict=True):
        view = views[stage]
        for ax, name in zip(row, ["image", *names], strict=True):
            ax.imshow(view[name], cmap="gray" if name == "image" else "magma", vmin=0)
            ax.contour(view["lesion"], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}" if name != "image" else f"{view['id']}", fontsize=6)
        row[0].set_ylabel(f"stage {stage}", fontsize=7)
    FigureCanvasAgg(figure).print_png(str(path))
