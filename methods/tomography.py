"""The shared tomography core of ToNNO, Averaged CAM and Tomographic CAM (paper 3.3-3.5).

Pure functions on torch tensors, device-agnostic and batched over directions.

Coordinates: a volume ``V[C, D, H, W]`` lives on [-1, 1]^3, voxel (i, j, k) at
(2i/(D-1)-1, 2j/(H-1)-1, 2k/(W-1)-1); vectors are in (depth, height, width) order and
the volume is zero outside the cube. A slice of ``size`` pixels spans the in-plane square
[-1, 1]^2 of its frame (eq. 4), so a plane integral is 4 x the slice's pixel mean.

Inversion constant: f(x) = -1/(8 pi^2) * integral over S^2 of d^2/ds^2 Rf(x.n, n) dn
(eq. 2 with c = -1/(8 pi^2)); with L equally weighted directions, c|S^2|/L = -1/(2 pi L)
(eq. 8). Hence ``reconstruct(V, 4 x pixel mean)`` returns V itself, not only up to scale,
for content inside the unit ball.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA, a no-op elsewhere: the same code runs on both."""
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda"
    )


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[n, 3] unit normals on the Fibonacci lattice (paper, above eq. 8).

    y_l = 2l/(n-1) - 1, r_l = sqrt(1 - y_l^2), theta_l = l * golden angle,
    n_l = (r_l cos theta_l, y_l, r_l sin theta_l).
    """
    if n < 2:
        raise ValueError(f"need at least 2 directions, got {n}")
    index = torch.arange(n, dtype=torch.float64)
    y = 2.0 * index / (n - 1) - 1.0
    r = torch.sqrt((1.0 - y * y).clamp(min=0.0))
    theta = index * GOLDEN_ANGLE
    return torch.stack([r * torch.cos(theta), y, r * torch.sin(theta)], dim=-1).to(dtype)


def orthonormal_frames(
    normals: Tensor, generator: torch.Generator | None = None, slices: int | None = None
) -> tuple[Tensor, Tensor]:
    """Random in-plane unit vectors (u, v) with (n, u, v) orthonormal (paper A.1).

    ``normals`` [..., 3] -> u, v [..., 3]. u is uniform on the circle of n-perp; v = n x u.
    With ``slices`` = M, one frame per slice of each normal's stack: u, v [..., M, 3] (A.1:
    "whenever extracting a slice"), angles drawn in (normal, slice) order.
    The angles are drawn on the CPU from ``generator``, so a seed gives the same frames on
    every device; without a generator the angle is 0 (a fixed, deterministic frame).
    """
    if slices is not None:
        normals = normals[..., None, :].expand(*normals.shape[:-1], slices, 3)
    axis = torch.zeros_like(normals)
    use_x = normals[..., 0].abs() < 0.9
    axis[..., 0] = use_x.to(normals.dtype)
    axis[..., 1] = (~use_x).to(normals.dtype)
    e1 = F.normalize(axis - (axis * normals).sum(-1, keepdim=True) * normals, dim=-1)
    e2 = torch.linalg.cross(normals, e1, dim=-1)
    if generator is None:
        angle = torch.zeros(normals.shape[:-1], dtype=normals.dtype, device=normals.device)
    else:
        angle = torch.rand(normals.shape[:-1], generator=generator, dtype=torch.float64)
        angle = (2.0 * math.pi * angle).to(normals.device, normals.dtype)
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    u = cos * e1 + sin * e2
    return u, torch.linalg.cross(normals, u, dim=-1)


def slice_offsets(n_slices: int, padded: bool = True, device=None) -> Tensor:
    """Offsets s_m = 2m/(M-1) - 1 for m = -1..M (``padded``, M+2 values) or m = 0..M-1."""
    start = -1 if padded else 0
    m = torch.arange(start, n_slices - start, dtype=torch.float32, device=device)
    return 2.0 * m / (n_slices - 1) - 1.0


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def extract_slices(
    volume: Tensor,
    normals: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    u: Tensor,
    v: Tensor,
    shift: Tensor | None = None,
) -> Tensor:
    """Slices S_V(s, n, u, v) of eq. (4): [C,D,H,W] -> [N, M, C, h, w].

    ``normals`` [N,3]; ``offsets`` [M] or [N,M]; ``u``, ``v`` [N,3] or [N,M,3] (any length:
    scale and shear are augmentations); ``shift`` [N,M,3] is added to each slice's centre
    s*n (in-plane translation for training). Pixel (i, j) samples the point
    s*n + i'*u + j'*v with i' = 2i/(h-1) - 1, j' = 2j/(w-1) - 1, by trilinear ``grid_sample``;
    points outside [-1, 1]^3 read 0.
    """
    h, w = _as_size(size)
    n_dirs = normals.shape[0]
    points = _sample_points(normals, offsets, size, u, v, shift, volume.dtype, volume.device)
    sampled = F.grid_sample(
        volume[None],
        points.reshape(1, -1, h, w, 3),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # [1, C, N*M, h, w]
    return sampled[0].transpose(0, 1).reshape(n_dirs, -1, volume.shape[0], h, w)


def _sample_points(
    normals: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    u: Tensor,
    v: Tensor,
    shift: Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """The ``grid_sample`` points of :func:`extract_slices`: [N*M, h*w, 3] in (x, y, z) =
    (width, height, depth) order, points outside [-1, 1]^3 sent to 4 (they read 0)."""
    h, w = _as_size(size)
    n_dirs = normals.shape[0]
    offsets = offsets.expand(n_dirs, -1) if offsets.dim() == 1 else offsets
    n_slices = offsets.shape[1]
    # grid_sample wants (x, y, z) = (width, height, depth): flip the small vectors, not the grid
    normals, offsets, u, v = (t.to(device, dtype) for t in (normals, offsets, u, v))
    centres = offsets[..., None] * normals[:, None]  # [N, M, 3]
    if shift is not None:
        centres = centres + shift.to(device, dtype)
    u, v = (t[:, None] if t.dim() == 2 else t for t in (u, v))
    in_plane = torch.stack(torch.broadcast_tensors(u, v, centres)[:2], dim=2)  # [N, M, 2, 3]
    a = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)
    b = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)
    pixels = torch.stack(torch.meshgrid(a, b, indexing="ij"), dim=-1).reshape(1, h * w, 2)
    points = torch.baddbmm(
        centres.flip(-1).reshape(-1, 1, 3),
        pixels.expand(n_dirs * n_slices, -1, -1),
        in_plane.flip(-1).reshape(-1, 2, 3),
    )  # [N*M, h*w, 3]
    # Exact zero outside [-1, 1]^3: a coordinate past the border is sent far away (zero
    # padding alone would blend the border voxel with 0 over one voxel).
    return points.masked_fill_(points.abs() > 1.0 + 1e-5, 4.0)


def second_difference(p: Tensor) -> Tensor:
    """Eq. (9)-(10) with the true step: q_m = (p_{m+1} + p_{m-1} - 2 p_m) / h^2.

    ``p`` [..., M+2] sampled at s_m = 2m/(M-1) - 1, m = -1..M; returns [..., M] for
    m = 0..M-1, h = 2/(M-1). (Eq. 9 as printed divides by 1/(M-1); the exact step keeps
    the reconstruction in absolute units.)
    """
    n_slices = p.shape[-1] - 2
    step = 2.0 / (n_slices - 1)
    return (p[..., 2:] + p[..., :-2] - 2.0 * p[..., 1:-1]) / step**2


def _grid_points(shape: tuple[int, int, int], device, dtype) -> Tensor:
    """[D*H*W, 3] normalised coordinates x of the output voxels (eq. 7), (d, h, w) order."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def backproject(q: Tensor, normals: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Eq. (11) without its constant: sum_l q~_l(x . n_l) on a [D,H,W] grid.

    ``q`` [L, M] (or [L, K, M] for K profiles at once -> [K, D, H, W]) sampled at
    s_m = 2m/(M-1) - 1 is interpolated linearly in s, with q~(-1) = q_0, q~(1) = q_{M-1}
    and q~ = 0 outside [-1, 1].
    """
    stacked = q if q.dim() == 3 else q[:, None]  # [L, K, M]
    points = _grid_points(shape, q.device, q.dtype)
    to_grid = torch.zeros(len(q), 3, 2, device=q.device, dtype=q.dtype)
    to_grid[:, :, 0] = normals.to(q.device, q.dtype)  # grid (x, y) = (x . n, 0)
    grid = torch.matmul(points, to_grid)  # [L, P, 2]
    grid.masked_fill_(grid.abs() > 1.0 + 1e-6, 4.0)  # |s| > 1 reads 0 under zero padding
    sampled = F.grid_sample(
        stacked[:, :, None, :],
        grid[:, None],
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # [L, K, 1, P]
    result = sampled.sum(0).reshape(-1, *shape)
    return result if q.dim() == 3 else result[0]


def backproject_maps(
    maps: Tensor,
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    shape: tuple[int, int, int],
    slice_size: int | tuple[int, int],
) -> Tensor:
    """Eqs. (12)-(13) without their constant: sum_l p~_l(x . n_l, x . u_l, x . v_l).

    ``maps`` [L, M, a, b] (or [L, K, M, a, b] for K stacks at once -> [K, D, H, W]) holds
    per-slice 2D maps for slices at s_m = 2m/(M-1) - 1 of ``slice_size`` pixels. Cell (a, b)
    covers the slice pixels it was pooled from, so its centre is the mean of those pixels'
    positions: a full-resolution map is read exactly at the slice's own pixels, a coarse one
    at its cells' centres. Interpolation is trilinear inside the stack, clamped to the edge
    cells in-plane, and 0 outside the slab |s| <= 1 or the slice square |x.u|, |x.v| <= 1.
    """
    stacked = maps if maps.dim() == 5 else maps[:, None]  # [L, K, M, a, b]
    map_h, map_w = stacked.shape[-2:]
    dtype, device = maps.dtype, maps.device
    points = _grid_points(shape, device, dtype)
    frames = torch.stack([v, u, normals], dim=-1).to(device, dtype)  # [L, 3, 3]: (x, y, z)
    coords = torch.matmul(points, frames)  # [L, P, 3] = (x.v, x.u, x.n)
    inside = (coords.abs() <= 1.0 + 1e-6).all(-1)  # [L, P]
    height, width = _as_size(slice_size)
    coords[..., 0] = _cell_grid(coords[..., 0], map_w, width)
    coords[..., 1] = _cell_grid(coords[..., 1], map_h, height)
    sampled = F.grid_sample(
        stacked,
        coords[:, None, None],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )  # [L, K, 1, 1, P]
    result = (sampled[:, :, 0, 0] * inside[:, None]).sum(0).reshape(-1, *shape)
    return result if maps.dim() == 5 else result[0]


def _cell_grid(coord: Tensor, cells: int, pixels: int) -> Tensor:
    """In-plane coordinate -> ``grid_sample`` coordinate (align_corners) of a map of ``cells``.

    A cell pooling k = pixels/cells pixels is centred at pixel (c + 1/2) k - 1/2, i.e. at
    -1 + ((2c + 1) k - 1) / (pixels - 1) in the slice's [-1, 1] coordinates: where the
    pixels it pools lie, and where pytorch-grad-cam's resize (hence the slice-wise CAMs)
    puts it. Paper 3.5's text says "centered on the pixel a 224/h_CAM", pixel c k: (k - 1)/2
    pixels towards the slice's first corner, 15.5 pixels at layer 4 (k = 32)
    (measured: docs/decisions.md#cam-cell-placement).
    """
    if cells == 1:
        return torch.zeros_like(coord)
    k = pixels / cells
    first = -1.0 + (k - 1.0) / (pixels - 1)
    last = -1.0 + ((2 * cells - 1) * k - 1.0) / (pixels - 1)
    return 2.0 * (coord - first) / (last - first) - 1.0


# --- Iterative tomographic CAM: the reconstruction the paper leaves open (Conclusion) ------


def project_maps(
    volume: Tensor,
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    cells: tuple[int, int],
) -> Tensor:
    """P, the forward model of iterative tomographic CAM: [K,D,H,W] -> [L, M, K, a, b].

    The slices of eq. (4) (:func:`extract_slices`: trilinear, 0 outside the cube) each
    average-pooled to ``cells`` = (a, b): kernel and stride size/cells when they divide,
    the paper's "CAM" of a slice in Figure 4 (3.5); adaptive pooling otherwise. Linear in
    ``volume``; its exact adjoint is :func:`backproject_pooled`.
    """
    slices = extract_slices(volume, normals, offsets, size, u, v)  # [L, M, K, h, w]
    pooled = F.adaptive_avg_pool2d(slices.flatten(0, 2), cells)
    return pooled.view(*slices.shape[:3], *pooled.shape[-2:])


def backproject_pooled(
    maps: Tensor,
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    shape: tuple[int, int, int],
) -> Tensor:
    """P^T, the exact adjoint of :func:`project_maps`: [L, M, K, a, b] -> [K, *shape].

    P is the primary operator (it is what a map of pooled slices measures) and P^T its
    transpose, as sparse matrices (:func:`pooled_slice_matrices`): each cell's value, spread
    evenly over the pixels it pools, is scattered onto the 8 voxels around each pixel's
    sample point with the trilinear weights that cut it. So <P x, y> = <x, P^T y> holds to
    rounding (tested in float64). :func:`backproject_maps` (Averaged CAM) is not this
    transpose: it gathers the stack at each voxel's (x.n, x.u, x.v) where P^T spreads from
    the pixels; each normalised by its value on ones, they differ by ~7 % on smooth maps.
    """
    rows = maps.movedim(2, -1).reshape(-1, maps.shape[2])  # [L*M*a*b, K]
    total = maps.new_zeros(math.prod(shape), maps.shape[2])
    cells = tuple(maps.shape[-2:])
    start = 0
    geometry = (normals, u, v, offsets, size, cells, shape, maps.dtype, maps.device)
    for matrix, transpose in pooled_slice_matrices(*geometry):
        stop = start + matrix.shape[0]
        total += transpose @ rows[start:stop]
        start = stop
    return total.T.reshape(-1, *shape)


BLOCK_ENTRIES = 2**22  # trilinear entries per block of slices before coalescing (see below)


def _pooling_bins(pixels: int, cells: int) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive average pooling along one axis as (cell, pixel, weight) triples, [R] each:
    cell i averages pixels floor(i p/c) .. ceil((i+1) p/c) - 1, torch's bins (kernel =
    stride = p/c when c divides p; overlapping bins otherwise)."""
    cell, pixel, weight = [], [], []
    for i in range(cells):
        first, last = (i * pixels) // cells, -(-((i + 1) * pixels) // cells)
        cell += [i] * (last - first)
        pixel += range(first, last)
        weight += [1.0 / (last - first)] * (last - first)
    return torch.tensor(cell), torch.tensor(pixel), torch.tensor(weight, dtype=torch.float64)


def pooled_slice_matrices(
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    cells: tuple[int, int],
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    skip: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """P of :func:`project_maps` as sparse CSR blocks (A, A^T), A [S*a*b, D*H*W], for
    consecutive blocks of S of the L*M slices (direction-major, then slice, then cell), the
    first ``skip`` blocks left out.

    A's row for a cell holds, for every pixel it pools (:func:`_pooling_bins`, weight 1 /
    its pixels), the 8 trilinear weights of the pixel's sample point (the points of
    :func:`extract_slices`, ``grid_sample``'s align_corners=True arithmetic), corners
    outside the volume dropped (zero padding); duplicates are summed. A block holds at most
    ``BLOCK_ENTRIES`` entries before summing (~40 bytes each while built), so building is
    bounded at any geometry: at the quick preset (64-px slices, 16 .. 2 cells) a block is
    128 slices; at the paper's (224 px) 10. A^T is stored as its own CSR (a sparse product
    with A's transpose, a CSC, costs more).
    """
    h, w = _as_size(size)
    a, b = cells
    depth, height, width = shape
    cell_h, pixel_h, weight_h = _pooling_bins(h, a)
    cell_w, pixel_w, weight_w = _pooling_bins(w, b)
    pixel = (pixel_h[:, None] * w + pixel_w[None]).flatten().to(device)
    cell = (cell_h[:, None] * b + cell_w[None]).flatten().to(device)
    pooling = (weight_h[:, None] * weight_w[None]).flatten().to(device, dtype)
    n_dirs = normals.shape[0]
    offsets = offsets.expand(n_dirs, -1) if offsets.dim() == 1 else offsets
    n_slices = offsets.shape[1]
    # one "direction" per slice (of one offset): the same arithmetic as extract_slices
    per_slice = [t[:, None].expand(-1, n_slices, 3) if t.dim() == 2 else t for t in (u, v)]
    per_slice = [t.reshape(-1, 3) for t in (normals[:, None].expand(-1, n_slices, 3), *per_slice)]
    flat = offsets.reshape(-1, 1)
    extent = torch.tensor([width - 1, height - 1, depth - 1], device=device, dtype=dtype)
    strides = torch.tensor([1, width, height * width], device=device)  # (x, y, z)
    bounds = torch.tensor([width, height, depth], device=device)
    n_voxels = depth * height * width
    step = max(1, BLOCK_ENTRIES // (8 * len(pixel)))
    for first in range(skip * step, len(flat), step):
        part = slice(first, first + step)
        block = len(flat[part])
        sn, su, sv = (t[part] for t in per_slice)
        points = _sample_points(sn, flat[part], size, su, sv, None, dtype, device)[:, pixel]
        coords = (points + 1) / 2 * extent  # grid_sample's unnormalisation, align_corners
        base = coords.floor()
        high = coords - base  # weight of the upper corner along each axis
        low = base + 1 - coords
        base = base.long()
        rows = torch.arange(block, device=device)[:, None] * (a * b) + cell  # [S, R]
        keys, values = [], []
        for corner in range(8):
            upper = torch.tensor([(corner >> k) & 1 for k in range(3)], device=device)
            index = base + upper
            weight = torch.where(upper.bool(), high, low).prod(-1) * pooling
            keep = ((index >= 0) & (index < bounds)).all(-1) & (weight != 0)  # zero padding
            keys.append(rows[keep] * n_voxels + (index[keep] * strides).sum(-1))
            values.append(weight[keep])
        keys, inverse = torch.unique(torch.cat(keys), return_inverse=True)  # sorted
        values = torch.zeros(len(keys), device=device, dtype=dtype).index_add_(
            0, inverse, torch.cat(values)
        )
        row, column = keys // n_voxels, keys % n_voxels
        crow = torch.zeros(block * a * b + 1, device=device, dtype=torch.long)
        crow[1:] = torch.bincount(row, minlength=block * a * b).cumsum(0)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(
                crow, column, values, (block * a * b, n_voxels), check_invariants=False
            )
            csc = matrix.to_sparse_csc()
            transpose = torch.sparse_csr_tensor(
                csc.ccol_indices(),
                csc.row_indices(),
                csc.values(),
                (n_voxels, block * a * b),
                check_invariants=False,
            )
        yield matrix, transpose


class Backprojection(Enum):
    """The direct modes of :func:`reconstruct_many`: the stacks' values backprojected with
    their second difference along s (``FILTERED``: ToNNO, Tomographic CAM) or as they are
    (``UNFILTERED``: Averaged CAM)."""

    FILTERED = "filtered"
    UNFILTERED = "unfiltered"


FILTERED, UNFILTERED = Backprojection.FILTERED, Backprojection.UNFILTERED


@dataclass(frozen=True)
class Iterative:
    """The iterative mode of :func:`reconstruct_many`: x = argmin ||P x - maps||^2, maybe
    with x >= 0 and + damping ||x||^2 (P: :func:`project_maps`).

    ``solver``: ``"sirt"``, x <- x + D^-1 (P^T maps - P^T P x) with D = P^T P 1 (P's rows
    sum to 1 inside the cube, so D is SIRT's column sums, and D >= P^T P makes the step
    safe), Nesterov-accelerated (FISTA) and projected on x >= 0 when ``nonnegative``; or
    ``"cgls"``, conjugate gradients on the normal equations (CGNR: CGLS in exact
    arithmetic), unconstrained. ``damping`` is relative to the mean of D.

    Iterations start from Averaged CAM (eq. 12), so that what the maps leave undetermined
    (between slices, inside a cell) keeps its interpolation. The defaults (30 iterations
    of accelerated SIRT, x >= 0, no damping): measured, docs/decisions.md#iterative-solver.
    """

    iterations: int = 30
    solver: str = "sirt"
    nonnegative: bool = True
    damping: float = 0.0

    def __post_init__(self):
        if self.solver not in ("sirt", "cgls"):
            raise ValueError(f"iterative solver must be 'sirt' or 'cgls', got {self.solver!r}")
        if self.solver == "cgls" and self.nonnegative:
            raise ValueError("the cgls solver is unconstrained: use nonnegative=False or 'sirt'")
        if self.iterations < 1 or self.damping < 0:
            raise ValueError(f"need iterations >= 1 and damping >= 0, got {self}")


def normal_operator(
    normals: Tensor,
    u: Tensor,
    v: Tensor,
    offsets: Tensor,
    size: int | tuple[int, int],
    cells: tuple[int, int],
    shape: tuple[int, int, int],
    budget: int = 512 * 2**20,
) -> Callable[[Tensor], Tensor]:
    """x [K,D,H,W] -> P^T P x = sum over blocks A^T (A x) (:func:`pooled_slice_matrices`).

    The blocks are built on the first call and kept while they fit in ``budget`` bytes;
    the rest are rebuilt on every call, so memory stays bounded (the quick preset's are
    all kept; measured: docs/decisions.md#normal-operator-memory).
    """
    kept: list[tuple[Tensor, Tensor]] = []
    built = complete = False

    def blocks(x: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        nonlocal built, complete
        geometry = (normals, u, v, offsets, size, cells, shape, x.dtype, x.device)
        if built:
            yield from kept
            if not complete:
                yield from pooled_slice_matrices(*geometry, skip=len(kept))
            return
        used = 0
        for pair in pooled_slice_matrices(*geometry):
            used += sum(_sparse_bytes(m) for m in pair)
            if used <= budget:  # used only grows: the kept blocks are the first ones
                kept.append(pair)
            yield pair
        built, complete = True, used <= budget

    def apply(x: Tensor) -> Tensor:
        columns = x.reshape(len(x), -1).T.contiguous()  # [D*H*W, K]
        total = torch.zeros_like(columns)
        for matrix, transpose in blocks(x):
            total += transpose @ (matrix @ columns)
        return total.T.reshape(x.shape)

    return apply


def _sparse_bytes(matrix: Tensor) -> int:
    parts = (matrix.crow_indices(), matrix.col_indices(), matrix.values())
    return sum(t.numel() * t.element_size() for t in parts)


def solve_iterative(
    rhs: Tensor, normal: Callable[[Tensor], Tensor], mode: Iterative, start: Tensor
) -> Tensor:
    """argmin_x ||P x - y||^2 (+ damping, x >= 0) from ``rhs`` = P^T y [K,D,H,W] and
    ``normal`` = P^T P (:func:`normal_operator`), the K channels independently, iterating
    from ``start`` (Averaged CAM: what the maps leave undetermined keeps its values)."""
    diagonal = normal(torch.ones_like(rhs[:1]))  # D = P^T P 1 >= P^T P, 0 where no slice reads
    seen = diagonal > 0
    damping = mode.damping * float(diagonal[seen].mean()) if bool(seen.any()) else 0.0
    if mode.solver == "cgls":
        return _cgls(rhs, lambda p: normal(p) + damping * p, mode.iterations, start)
    scale = torch.where(seen, 1.0 / (diagonal + damping), torch.zeros_like(diagonal))
    x = previous = start.clamp(min=0.0) if mode.nonnegative else start
    t = 1.0
    for _ in range(mode.iterations):  # FISTA with the diagonal metric D
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x + ((t - 1.0) / t_next) * (x - previous)
        step = y + scale * (rhs - normal(y) - damping * y)
        previous, x, t = x, step.clamp(min=0.0) if mode.nonnegative else step, t_next
    return x


def _cgls(
    rhs: Tensor, normal: Callable[[Tensor], Tensor], iterations: int, start: Tensor
) -> Tensor:
    """Conjugate gradients on normal(x) = rhs from x = ``start``, per channel (dim 0)."""

    def dot(a: Tensor, b: Tensor) -> Tensor:  # [K] -> broadcastable [K, 1, 1, 1]
        return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.dim() - 1)))

    x = start.clone()
    residual = rhs - normal(x)
    direction, norm = residual.clone(), dot(residual, residual)
    for _ in range(iterations):
        product = normal(direction)
        curvature = dot(direction, product)
        alpha = torch.where(curvature > 0, norm / curvature, torch.zeros_like(norm))
        x += alpha * direction
        residual -= alpha * product
        new_norm = dot(residual, residual)
        beta = torch.where(norm > 0, new_norm / norm, torch.zeros_like(norm))
        direction, norm = residual + beta * direction, new_norm
    return x


SliceOutputs = Callable[[Tensor], dict[Hashable, Tensor]]
Mode = Backprojection | Iterative  # a reconstruction of reconstruct_many


@torch.no_grad()
def reconstruct_many(
    volume: Tensor,
    slice_fn: SliceOutputs,
    n_angles: int,
    n_slices: int,
    size: int | tuple[int, int],
    out_shape: tuple[int, int, int] | None = None,
    *,
    modes: Sequence[Mode] = (FILTERED,),
    chunk: int = 32,
    seed: int = 0,
    frames: str = "stack",
    mixed_precision: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[Hashable, Mode], Tensor]:
    """Several reconstructions (eqs. 11-13, iterative) from one pass over the slices.

    ``slice_fn`` maps slices [N, C, h, w] to named outputs {key: [N] or [N, a, b]}: a value
    per slice (ToNNO, eq. 6) or a map per slice (CAMs). For each of ``n_angles`` Fibonacci
    directions, a stack of slices at s_m = 2m/(M-1) - 1 is cut (m = -1..M when a filtered
    mode is asked, else m = 0..M-1) and passed to ``slice_fn``, ``chunk`` directions at a
    time (peak memory is set by ``chunk``, not by ``n_angles``; the result does not depend
    on it). Returns {(key, mode): [D, H, W] float32} for every key and mode:

    - ``FILTERED``: second difference along s (eq. 9) scaled by c|S^2|/L =
      -1/(2 pi L) (eqs. 8, 11, 13);
    - ``UNFILTERED``: the mean of the raw values, 1/L (eq. 12 as a mean, so that a map equal
      to the slice returns V; the printed c|S^2|/L would flip its sign);
    - an :class:`Iterative`: the volume whose slices m = 0..M-1, pooled to the maps' grid,
      best match the maps (:func:`solve_iterative`, from the ``UNFILTERED`` result; maps
      only).
      The maps are consumed chunk by chunk into P^T maps, so the classifier still sees
      each slice once and no map is kept; each iteration cuts the slices of the iterate
      again (no classifier).

    In-plane frames are random (A.1), drawn on the CPU from ``seed``: ``frames="stack"``,
    one per direction, shared by its stack (eqs. 12-13 interpolate the maps along the
    stack, so maps need it); ``frames="slice"``, one per slice (A.1: "whenever extracting a
    slice"; ToNNO), for scalar outputs only. The frames (6 floats a slice at most) are drawn
    up front, the slices cut per chunk: peak memory stays set by ``chunk``. Slices reach
    ``slice_fn`` channels-last (free for one channel; what convolutions prefer) and, on
    CUDA, under bf16 autocast unless ``mixed_precision=False``; sums stay float32.
    ``out_shape`` defaults to the volume's.
    """
    if volume.dim() != 4:
        raise ValueError(f"expected a volume [C, D, H, W], got shape {tuple(volume.shape)}")
    if n_slices < 2:
        raise ValueError(f"need at least 2 slices per direction, got {n_slices}")
    out_shape = tuple(out_shape or volume.shape[1:])
    device = volume.device
    if frames not in ("stack", "slice"):
        raise ValueError(f"frames must be 'stack' or 'slice', got {frames!r}")
    for mode in modes:
        if not isinstance(mode, (Backprojection, Iterative)):
            raise TypeError(f"a mode is FILTERED, UNFILTERED or an Iterative, got {mode!r}")
    normals = fibonacci_sphere(n_angles)
    padded = FILTERED in modes
    offsets = slice_offsets(n_slices, padded=padded)
    per_slice = len(offsets) if frames == "slice" else None
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(seed), per_slice)
    inner = slice_offsets(n_slices, padded=False)  # the iterative modes' slices
    asked = list(modes)
    solved = list(dict.fromkeys(m for m in modes if isinstance(m, Iterative)))
    modes = [m for m in modes if not isinstance(m, Iterative)]
    modes += [UNFILTERED] if solved and UNFILTERED not in modes else []  # iterations start
    cast = autocast(device, enabled=mixed_precision)
    totals: dict[tuple[Hashable, Backprojection], Tensor] = {}
    adjoints: dict[Hashable, Tensor] = {}  # key -> P^T maps of the iterative modes
    cells: dict[tuple[int, ...], list[Hashable]] = {}  # map shape -> keys
    for start in range(0, n_angles, chunk):  # slice_fn may enable grad for itself (CAMs)
        part = slice(start, min(start + chunk, n_angles))
        slices = extract_slices(volume, normals[part], offsets, size, u[part], v[part])
        with cast:
            outputs = slice_fn(slices.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        stacks: dict[tuple[int, ...], list[tuple[tuple[Hashable, Backprojection], Tensor]]] = {}
        for key, out in outputs.items():
            out = out.float().reshape(len(slices), len(offsets), *out.shape[1:]).movedim(1, -1)
            for mode in modes:  # [n, *S, M+2] -> [n, M, *S]
                filtered = mode is FILTERED
                values = second_difference(out) if filtered else out[..., 1:-1] if padded else out
                stacks.setdefault(tuple(out.shape[1:-1]), []).append(
                    ((key, mode), values.movedim(-1, 1))
                )
        for group in stacks.values():  # one backprojection per map shape, keys as channels
            names, values = zip(*group, strict=True)
            stacked = torch.stack(values, dim=1)  # [n, K, M, *S]
            if stacked.dim() == 3:
                results = backproject(stacked, normals[part], out_shape)
            elif per_slice:
                raise ValueError("frames='slice' needs one value per slice; maps need 'stack'")
            else:
                results = backproject_maps(
                    stacked, normals[part], u[part], v[part], out_shape, size
                )
            for name, result in zip(names, results, strict=True):
                totals[name] = totals[name] + result if name in totals else result
        pooled: dict[tuple[int, ...], list[tuple[Hashable, Tensor]]] = {}
        for key, out in outputs.items() if solved else ():  # maps m = 0..M-1: [n, M, a, b]
            if out.dim() != 3:
                raise ValueError(f"iterative reconstruction needs maps [N, a, b], got {key!r}")
            maps = out.float().reshape(len(slices), len(offsets), *out.shape[1:])
            pooled.setdefault(tuple(out.shape[1:]), []).append(
                (key, maps[:, 1:-1] if padded else maps)
            )
        for shape, group in pooled.items():  # P^T maps, keys of one map shape as channels
            names, maps = zip(*group, strict=True)
            cells.setdefault(shape, list(names))
            stacked = torch.stack(maps, dim=2)  # [n, M, K, a, b]
            found = backproject_pooled(
                stacked, normals[part], u[part], v[part], inner, size, out_shape
            )
            for name, adjoint in zip(names, found, strict=True):
                adjoints[name] = adjoints[name] + adjoint if name in adjoints else adjoint
        if progress is not None:
            progress(part.stop - part.start)
    scale = {FILTERED: -1.0 / (2.0 * math.pi * n_angles), UNFILTERED: 1.0 / n_angles}
    results = {(key, mode): total * scale[mode] for (key, mode), total in totals.items()}
    for shape, keys in cells.items():  # keys of one map shape solved together, as channels
        normal = normal_operator(normals, u, v, inner, size, shape, out_shape)
        rhs = torch.stack([adjoints[key] for key in keys])
        averaged = torch.stack([results[(key, UNFILTERED)] for key in keys])
        for mode in solved:
            solution = solve_iterative(rhs, normal, mode, averaged)
            results.update({(key, mode): x for key, x in zip(keys, solution, strict=True)})
    return {name: result for name, result in results.items() if name[1] in asked}


def reconstruct(
    volume: Tensor,
    slice_fn: Callable[[Tensor], Tensor],
    n_angles: int,
    n_slices: int,
    size: int | tuple[int, int],
    out_shape: tuple[int, int, int] | None = None,
    *,
    filtered: bool = True,
    **options,
) -> Tensor:
    """The tomographic reconstruction G of eq. (11) (``slice_fn`` [N,C,h,w] -> [N]) or its
    map variants, eqs. (12)-(13) (``slice_fn`` -> [N, a, b]): see :func:`reconstruct_many`.

    ``filtered=True``: ToNNO (scalar outputs) or Tomographic CAM (maps); ``False``: the
    averaged, unfiltered variant (Averaged CAM for maps). ``frames="slice"`` draws a frame
    per slice (ToNNO, A.1; scalar outputs only), the default ``"stack"`` one per direction.
    Returns float32 [D, H, W].
    """
    mode = FILTERED if filtered else UNFILTERED
    results = reconstruct_many(
        volume,
        lambda s: {0: slice_fn(s)},
        n_angles,
        n_slices,
        size,
        out_shape,
        modes=(mode,),
        **options,
    )
    return results[(0, mode)]


def reconstruct_iterative(
    volume: Tensor,
    slice_fn: Callable[[Tensor], Tensor],
    n_angles: int,
    n_slices: int,
    size: int | tuple[int, int],
    out_shape: tuple[int, int, int] | None = None,
    *,
    iterations: int = Iterative.iterations,
    solver: str = Iterative.solver,
    nonnegative: bool = Iterative.nonnegative,
    damping: float = Iterative.damping,
    **options,
) -> Tensor:
    """Iterative tomographic CAM: the volume x minimising ||P x - maps||^2 (:class:`Iterative`),
    P = the slices m = 0..M-1 of Averaged CAM's stacks average-pooled to the maps' grid
    (:func:`project_maps`), maps = ``slice_fn`` [N,C,h,w] -> [N, a, b] of those slices,
    computed once; ``options``: :func:`reconstruct_many`'s. Returns float32 [D, H, W].
    """
    mode = Iterative(iterations, solver, nonnegative, damping)
    results = reconstruct_many(
        volume,
        lambda s: {0: slice_fn(s)},
        n_angles,
        n_slices,
        size,
        out_shape,
        modes=(mode,),
        **options,
    )
    return results[(0, mode)]


@torch.no_grad()
def reslice(
    volume: Tensor,
    slice_fn: SliceOutputs,
    axis: int,
    size: int | tuple[int, int],
) -> dict[Hashable, Tensor]:
    """Slice-wise maps stacked back (paper 4.3): every slice of ``volume`` along ``axis``
    resampled to ``size`` (eq. 4 with an axis normal), ``slice_fn`` [N,C,h,w] ->
    {key: [N,a,b]}, each map read back at its slice's voxels -> {key: [D, H, W] float32}.

    The in-plane axes keep their order (axis 0: (H, W); 1: (D, W); 2: (D, H)), so a
    full-resolution map equal to the slice returns the volume exactly.
    """
    shape = tuple(volume.shape[1:])
    eye = torch.eye(3, device=volume.device)
    normal = eye[axis : axis + 1]
    u, v = (eye[k : k + 1] for k in range(3) if k != axis)
    offsets = torch.linspace(-1.0, 1.0, shape[axis], device=volume.device)
    slices = extract_slices(volume, normal, offsets, size, u, v)[0]
    outputs = slice_fn(slices.contiguous(memory_format=torch.channels_last))
    return {
        key: backproject_maps(maps.float()[None], normal, u, v, shape, size)
        for key, maps in outputs.items()
    }
