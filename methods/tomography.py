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
from collections.abc import Callable, Hashable, Sequence

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
    offsets = offsets.expand(n_dirs, -1) if offsets.dim() == 1 else offsets
    n_slices = offsets.shape[1]
    dtype, device = volume.dtype, volume.device
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
    points.masked_fill_(points.abs() > 1.0 + 1e-5, 4.0)
    sampled = F.grid_sample(
        volume[None],
        points.reshape(1, -1, h, w, 3),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # [1, C, N*M, h, w]
    return sampled[0].transpose(0, 1).reshape(n_dirs, n_slices, volume.shape[0], h, w)


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
    -1 + ((2c + 1) k - 1) / (pixels - 1) in the slice's [-1, 1] coordinates.
    """
    if cells == 1:
        return torch.zeros_like(coord)
    k = pixels / cells
    first = -1.0 + (k - 1.0) / (pixels - 1)
    last = -1.0 + ((2 * cells - 1) * k - 1.0) / (pixels - 1)
    return 2.0 * (coord - first) / (last - first) - 1.0


SliceOutputs = Callable[[Tensor], dict[Hashable, Tensor]]


@torch.no_grad()
def reconstruct_many(
    volume: Tensor,
    slice_fn: SliceOutputs,
    n_angles: int,
    n_slices: int,
    size: int | tuple[int, int],
    out_shape: tuple[int, int, int] | None = None,
    *,
    modes: Sequence[bool] = (True,),
    chunk: int = 32,
    seed: int = 0,
    frames: str = "stack",
    mixed_precision: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[Hashable, bool], Tensor]:
    """Several reconstructions (eqs. 11-13) from one pass over the slices.

    ``slice_fn`` maps slices [N, C, h, w] to named outputs {key: [N] or [N, a, b]}: a value
    per slice (ToNNO, eq. 6) or a map per slice (CAMs). For each of ``n_angles`` Fibonacci
    directions, a stack of slices at s_m = 2m/(M-1) - 1 is cut (m = -1..M when a filtered
    mode is asked, else m = 0..M-1) and passed to ``slice_fn``, ``chunk`` directions at a
    time (peak memory is set by ``chunk``, not by ``n_angles``; the result does not depend
    on it). Returns {(key, filtered): [D, H, W] float32} for every key and mode:

    - ``filtered=True``: second difference along s (eq. 9) scaled by c|S^2|/L = -1/(2 pi L)
      (eqs. 8, 11, 13);
    - ``filtered=False``: the mean of the raw values, 1/L (eq. 12 as a mean, so that a map
      equal to the slice returns V; the printed c|S^2|/L would flip its sign).

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
    normals = fibonacci_sphere(n_angles)
    padded = True in modes
    offsets = slice_offsets(n_slices, padded=padded)
    per_slice = len(offsets) if frames == "slice" else None
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(seed), per_slice)
    cast = autocast(device, enabled=mixed_precision)
    totals: dict[tuple[Hashable, bool], Tensor] = {}
    for start in range(0, n_angles, chunk):  # slice_fn may enable grad for itself (CAMs)
        part = slice(start, min(start + chunk, n_angles))
        slices = extract_slices(volume, normals[part], offsets, size, u[part], v[part])
        with cast:
            outputs = slice_fn(slices.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        stacks: dict[tuple[int, ...], list[tuple[tuple[Hashable, bool], Tensor]]] = {}
        for key, out in outputs.items():
            out = out.float().reshape(len(slices), len(offsets), *out.shape[1:]).movedim(1, -1)
            for filtered in modes:  # [n, *S, M+2] -> [n, M, *S]
                values = second_difference(out) if filtered else out[..., 1:-1] if padded else out
                stacks.setdefault(tuple(out.shape[1:-1]), []).append(
                    ((key, filtered), values.movedim(-1, 1))
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
        if progress is not None:
            progress(part.stop - part.start)
    return {
        (key, filtered): total * (-1.0 / (2.0 * math.pi * n_angles) if filtered else 1.0 / n_angles)
        for (key, filtered), total in totals.items()
    }


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
    results = reconstruct_many(
        volume,
        lambda s: {0: slice_fn(s)},
        n_angles,
        n_slices,
        size,
        out_shape,
        modes=(filtered,),
        **options,
    )
    return results[(0, filtered)]


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
