"""The tomography core against closed forms: Radon transforms and exact reconstructions."""

from __future__ import annotations

import math

import pytest
import torch
from phantoms import (
    gaussian,
    grid_points,
    plane_integral,
    radius_map,
    radon_gaussian,
    radon_smooth_ball,
    radon_uniform_ball,
    rel_l2,
    smooth_ball,
    uniform_ball,
)

from methods.tomography import (
    FILTERED,
    UNFILTERED,
    backproject,
    backproject_maps,
    extract_slices,
    fibonacci_sphere,
    orthonormal_frames,
    reconstruct,
    reconstruct_many,
    second_difference,
    slice_offsets,
)

# --- directions and frames -------------------------------------------------------------


def test_fibonacci_normals_are_unit_and_follow_the_papers_lattice():
    n = fibonacci_sphere(5)
    torch.testing.assert_close(n.norm(dim=1), torch.ones(5))
    # l = 1: y = 2/4 - 1, theta = golden angle
    y, r, theta = -0.5, math.sqrt(0.75), math.pi * (3 - math.sqrt(5))
    expected = torch.tensor([r * math.cos(theta), y, r * math.sin(theta)])
    torch.testing.assert_close(n[1], expected)
    torch.testing.assert_close(n[0], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(n[-1][1], torch.tensor(1.0))


def test_fibonacci_normals_cover_the_sphere_evenly():
    n = fibonacci_sphere(2000).double()
    # isotropic: first moment 0, second moment I/3
    torch.testing.assert_close(n.mean(0), torch.zeros(3, dtype=torch.float64), atol=2e-3, rtol=0)
    second = n.T @ n / len(n)
    torch.testing.assert_close(second, torch.eye(3, dtype=torch.float64) / 3, atol=2e-3, rtol=0)
    # any cap holds its share of the area: cap of half-angle 30 deg = (1 - cos 30)/2 of it
    caps = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    share = ((caps @ n.T) > math.cos(math.radians(30))).double().mean(1)
    expected = (1 - math.cos(math.radians(30))) / 2
    assert (share - expected).abs().max() < 0.01
    # no hole: every random direction has a lattice point within 2.5 mean spacings
    spacing = math.sqrt(4 * math.pi / len(n))
    probes = torch.nn.functional.normalize(torch.randn(2000, 3, dtype=torch.float64), dim=1)
    nearest = torch.arccos((probes @ n.T).max(1).values.clamp(max=1.0))
    assert nearest.max() < 2.5 * spacing / 2


def test_frames_are_orthonormal_right_handed_and_seeded():
    normals = torch.nn.functional.normalize(torch.randn(500, 3, dtype=torch.float64), dim=1)
    normals[0] = torch.tensor([1.0, 0.0, 0.0])  # the axis fallback of the construction
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(3))
    basis = torch.stack([normals, u, v], dim=1)  # [N, 3, 3]
    eye = torch.eye(3, dtype=torch.float64).expand(len(normals), 3, 3)
    torch.testing.assert_close(basis @ basis.transpose(1, 2), eye)
    torch.testing.assert_close(
        torch.linalg.det(basis), torch.ones(len(normals), dtype=torch.float64)
    )
    u2, _ = orthonormal_frames(normals, torch.Generator().manual_seed(3))
    u3, _ = orthonormal_frames(normals, torch.Generator().manual_seed(4))
    assert torch.equal(u, u2) and not torch.allclose(u, u3)


def test_per_slice_frames_differ_along_a_stack_and_are_orthonormal():
    """A.1: a frame per slice, (n, u, v) orthonormal for each, seeded."""
    normals = fibonacci_sphere(6).double()
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(5), slices=9)
    assert u.shape == v.shape == (6, 9, 3)
    n = normals[:, None].expand(6, 9, 3)
    basis = torch.stack([n, u, v], dim=-2)  # [L, M, 3, 3]
    eye = torch.eye(3, dtype=torch.float64).expand(6, 9, 3, 3)
    torch.testing.assert_close(basis @ basis.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(basis), torch.ones(6, 9, dtype=torch.float64))
    # within a stack, no two slices share a frame: every pair of u at least 1e-3 apart
    gaps = (u[:, :, None] - u[:, None]).norm(dim=-1) + torch.eye(9, dtype=torch.float64)
    assert gaps.min() > 1e-3
    again, _ = orthonormal_frames(normals, torch.Generator().manual_seed(5), slices=9)
    assert torch.equal(u, again)


def test_frame_angles_are_uniform_on_the_circle():
    normals = torch.tensor([[0.0, 0.0, 1.0]]).expand(20000, 3).contiguous()
    u, _ = orthonormal_frames(normals, torch.Generator().manual_seed(0))
    angle = torch.atan2(u[:, 1], u[:, 0])
    counts = torch.histc(angle, bins=8, min=-math.pi, max=math.pi)
    assert (counts / len(angle) - 1 / 8).abs().max() < 0.01


# --- slices and Radon sums -----------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_aligned_slices_are_the_volumes_own_slices(axis):
    volume = torch.rand(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    eye = torch.eye(3)
    normal, u, v = eye[axis], eye[(axis + 1) % 3], eye[(axis + 2) % 3]
    if axis == 1:  # keep (u, v) in increasing axis order so the slice is not transposed
        u, v = v, u
    n_offsets = volume.shape[1 + axis]
    others = [volume.shape[1 + k] for k in range(3) if k != axis]
    slices = extract_slices(
        volume, normal[None], torch.linspace(-1, 1, n_offsets), tuple(others), u[None], v[None]
    )[0]  # [M, C, h, w]
    expected = volume.movedim(1 + axis, 0)
    torch.testing.assert_close(slices, expected, atol=1e-6, rtol=0)


def test_slices_read_exactly_zero_outside_the_cube_and_no_blend_at_its_border():
    volume = torch.ones(1, 9, 9, 9)
    normal, u, v = (
        torch.tensor([[1.0, 0, 0]]),
        torch.tensor([[0, 1.0, 0]]),
        torch.tensor([[0, 0, 1.0]]),
    )
    # a slice 1.5 voxels inside the border, scaled so its pixels reach past the cube
    offsets = torch.tensor([1.0, 1.0 + 1e-3, 1.1])
    slices = extract_slices(volume, normal, offsets, 5, 2 * u, 2 * v)[0, :, 0]
    assert torch.equal(slices[0, 2, 2], torch.tensor(1.0))  # on the border: the voxel itself
    assert torch.equal(slices[1:], torch.zeros_like(slices[1:]))  # past it: exactly 0
    assert torch.equal(slices[0, 0, 0], torch.tensor(0.0))  # in-plane past the cube: 0


def test_shift_translates_the_slice_centre():
    volume = gaussian((17, 17, 17), sigma=0.2, centre=(0.0, 0.25, 0.0))[None]
    normal, u, v = torch.eye(3)[0:1], torch.eye(3)[1:2], torch.eye(3)[2:3]
    shifted = extract_slices(
        volume, normal, torch.zeros(1), 17, u, v, torch.tensor([[[0, 0.25, 0]]])
    )
    centred = extract_slices(gaussian((17, 17, 17), 0.2)[None], normal, torch.zeros(1), 17, u, v)
    inside = slice(0, 15)  # rows whose shifted points stay inside the cube
    torch.testing.assert_close(shifted[..., inside, :], centred[..., inside, :], atol=1e-5, rtol=0)
    assert torch.equal(shifted[..., 16, :], torch.zeros(1, 1, 1, 17))  # shifted past the border


def radon_sums(volume, normals, offsets, size=128, per_slice=False):
    slices = len(offsets) if per_slice else None
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(0), slices)
    slices = extract_slices(volume[None], normals, offsets, size, u, v)
    return plane_integral(slices.flatten(0, 1)).reshape(len(normals), len(offsets))


PHANTOMS = {
    "uniform ball": (uniform_ball, radon_uniform_ball, {"radius": 0.6}),
    "smooth ball": (smooth_ball, radon_smooth_ball, {"radius": 0.6}),
    "gaussian": (gaussian, radon_gaussian, {"sigma": 0.15}),
}


@pytest.mark.parametrize("name", PHANTOMS)
@pytest.mark.parametrize(
    ("centre", "per_slice"), [((0.0, 0.0, 0.0), False), ((0.15, -0.2, 0.1), False),
                              ((0.15, -0.2, 0.1), True)]
)  # fmt: skip
def test_radon_sums_match_the_analytic_transform(name, centre, per_slice):
    make, radon, params = PHANTOMS[name]
    volume = make((96, 96, 96), centre=centre, **params)
    normals = fibonacci_sphere(7)
    offsets = torch.linspace(-0.95, 0.95, 39)
    measured = radon_sums(volume, normals, offsets, per_slice=per_slice)
    shift = normals.double() @ torch.tensor(centre, dtype=torch.float64)
    exact = radon(offsets[None].double() - shift[:, None], **params).float()
    error = (measured - exact).abs().max() / exact.max()
    assert error < 0.02, f"{name}: max error {error:.4f} of the peak"


# --- filtering and backprojection ------------------------------------------------------


def test_second_difference_uses_the_true_step():
    s = slice_offsets(11).double()  # m = -1..M
    torch.testing.assert_close(s, torch.arange(-1, 12, dtype=torch.float64) / 5 - 1)
    s = torch.arange(-1, 12, dtype=torch.float64) / 5 - 1
    q = second_difference(3 * s**2 - s + 5)  # d2/ds2 = 6 exactly for a quadratic
    torch.testing.assert_close(q, torch.full((11,), 6.0, dtype=torch.float64))


def test_backprojection_interpolates_linearly_and_is_zero_outside():
    normal = torch.tensor([[0.6, 0.0, 0.8]])
    n_slices = 21
    s = slice_offsets(n_slices, padded=False)
    shape = (5, 7, 9)
    result = backproject((s**1)[None] * 2 + 1, normal, shape)  # profile 2s + 1
    x = grid_points(shape).float()
    along = x @ normal[0]
    expected = torch.where(along.abs() <= 1, 2 * along + 1, torch.zeros(()))
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=0)
    assert result[-1, 0, -1] == 0 and along[-1, 0, -1] > 1  # corner past |s| = 1


RECON = dict(n_angles=1000, n_slices=64, size=96)


@pytest.mark.parametrize("frames", ["stack", pytest.param("slice", marks=pytest.mark.slow)])
def test_smooth_ball_is_reconstructed_in_absolute_value(frames):
    radius = 0.6
    volume = smooth_ball((48, 48, 48), radius)
    rec = reconstruct(volume[None], plane_integral, **RECON, frames=frames)
    assert rec.dtype == torch.float32 and rec.shape == volume.shape
    inner = radius_map(volume.shape) < 0.8 * radius
    assert rel_l2(rec[inner], volume[inner]) < 0.05
    centre = rec[23:25, 23:25, 23:25].mean()  # the 8 voxels around x = 0
    assert abs(centre - volume[23:25, 23:25, 23:25].mean()) < 0.05


def test_off_centre_gaussian_is_reconstructed_in_absolute_value():
    centre, sigma = (0.2, -0.15, 0.1), 0.2
    volume = gaussian((48, 48, 48), sigma, centre=centre, amplitude=2.0)
    rec = reconstruct(volume[None], plane_integral, **RECON)
    support = radius_map(volume.shape, centre) < 2 * sigma
    assert rel_l2(rec[support], volume[support]) < 0.05
    peak = torch.unravel_index(rec.argmax(), rec.shape)
    assert peak == torch.unravel_index(volume.argmax(), volume.shape)  # at the right voxel
    assert abs(rec[peak] - volume[peak]) < 0.05 * volume[peak]


SMALL = dict(n_angles=40, n_slices=12, size=24)


def weighted_sum(slices):
    """A linear slice functional that is not rotation invariant (sees the frames)."""
    h, w = slices.shape[-2:]
    weights = torch.linspace(0, 1, h * w, dtype=slices.dtype, device=slices.device).reshape(h, w)
    return (slices[:, 0] * weights).sum((-2, -1))


def test_reconstruction_is_linear():
    a = gaussian((12, 14, 16), 0.2, centre=(0.1, 0, 0))
    b = smooth_ball((12, 14, 16), 0.5, centre=(0, -0.2, 0.1))
    ra, rb = (reconstruct(x[None], weighted_sum, **SMALL) for x in (a, b))
    rab = reconstruct((2 * a - 3 * b)[None], weighted_sum, **SMALL)
    torch.testing.assert_close(rab, 2 * ra - 3 * rb, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("filtered", [True, False])
@pytest.mark.parametrize(("maps", "frames"), [(False, "stack"), (False, "slice"), (True, "stack")])
def test_chunk_size_does_not_change_the_result_and_bounds_the_batch(filtered, maps, frames):
    volume = gaussian((10, 12, 14), 0.3, centre=(0.1, 0, 0))[None]
    seen = []

    def slice_fn(slices):
        seen.append(len(slices))
        return slices[:, 0, ::4, ::4] if maps else weighted_sum(slices)

    results = [
        reconstruct(volume, slice_fn, **SMALL, filtered=filtered, chunk=chunk, frames=frames)
        for chunk in (3, 40)
    ]
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    per_direction = SMALL["n_slices"] + (2 if filtered else 0)
    assert max(seen[: math.ceil(40 / 3)]) == 3 * per_direction


@pytest.mark.parametrize("frames", ["stack", "slice"])
def test_same_seed_same_heatmap_other_seed_other_heatmap(frames):
    volume = gaussian((10, 12, 14), 0.3)[None]
    first, again, other = (
        reconstruct(volume, weighted_sum, **SMALL, seed=seed, frames=frames) for seed in (0, 0, 1)
    )
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_per_slice_frames_change_only_what_sees_the_frame():
    """The plane through s n does not depend on its in-plane frame: a functional of the
    slice's centre pixel (which samples s n exactly) reconstructs the same volume with a
    frame per slice as with one per stack; the frame-dependent weighted sum does not."""
    volume = gaussian((10, 12, 14), 0.3, centre=(0.1, 0, 0))[None]

    def centre_pixel(slices):
        return slices[:, 0, 12, 12]  # size 25: pixel 12 is (i', j') = (0, 0)

    frame_blind, frame_seen = (
        [reconstruct(volume, fn, **{**SMALL, "size": 25}, frames=f) for f in ("stack", "slice")]
        for fn in (centre_pixel, weighted_sum)
    )
    torch.testing.assert_close(frame_blind[1], frame_blind[0], atol=1e-6, rtol=1e-6)
    assert (frame_blind[0].abs() > 0).any()
    assert rel_l2(frame_seen[1], frame_seen[0]) > 0.05


def test_named_modes_give_each_reconstruction_and_a_boolean_mode_is_refused():
    """``reconstruct_many``'s FILTERED and UNFILTERED, from one pass, are ``reconstruct``'s
    ``filtered=True`` and ``False``; the booleans they replace are an error, not a key."""
    volume = gaussian((10, 12, 14), 0.3, centre=(0.1, 0, 0))[None]
    both = reconstruct_many(
        volume, lambda s: {0: weighted_sum(s)}, **SMALL, modes=(UNFILTERED, FILTERED)
    )
    for mode, filtered in ((FILTERED, True), (UNFILTERED, False)):
        alone = reconstruct(volume, weighted_sum, **SMALL, filtered=filtered)
        torch.testing.assert_close(both[(0, mode)], alone, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="FILTERED, UNFILTERED or an Iterative, got True"):
        reconstruct_many(volume, lambda s: {0: weighted_sum(s)}, **SMALL, modes=(True,))


def test_per_slice_frames_are_for_values_not_maps():
    volume = gaussian((6, 6, 6), 0.3)[None]
    with pytest.raises(ValueError, match="maps need 'stack'"):
        reconstruct(volume, lambda s: s[:, 0, ::4, ::4], **SMALL, frames="slice")
    with pytest.raises(ValueError, match="frames must be"):
        reconstruct(volume, plane_integral, **SMALL, frames="direction")


# --- Averaged and Tomographic map backprojection (eqs. 12-13) ----------------------------


def test_averaged_reconstruction_of_full_resolution_maps_returns_the_volume():
    """The paper's Figure 4, top-left: the slice itself as its own "CAM" map."""
    volume = smooth_ball((32, 32, 32), 0.7, centre=(0.05, 0, -0.05))
    rec = reconstruct(
        volume[None], lambda s: s[:, 0], n_angles=200, n_slices=64, size=64, filtered=False
    )
    inner = radius_map(volume.shape) < 0.9
    assert rel_l2(rec[inner], volume[inner]) < 0.03


def test_tomographic_one_cell_map_of_the_plane_integral_equals_tonno():
    """A 1x1 map holding the plane integral makes eq. (13) coincide with eq. (11)."""
    volume = gaussian((12, 12, 12), 0.25)[None]
    tonno = reconstruct(volume, plane_integral, **SMALL)
    tomographic = reconstruct(volume, lambda s: plane_integral(s)[:, None, None], **SMALL)
    ball = radius_map(volume.shape[1:]) <= 1  # beyond it the slice square misses some points
    torch.testing.assert_close(tomographic[ball], tonno[ball], atol=1e-5, rtol=1e-4)


def test_coarse_map_cells_sit_at_the_centres_of_their_pixels():
    """A map pooled 2x2 from a linear ramp reads back the ramp at every in-plane point."""
    normal, u, v = torch.eye(3)[0:1], torch.eye(3)[1:2], torch.eye(3)[2:3]
    size = 8
    ramp = torch.linspace(-1, 1, size)[:, None] + 0 * torch.linspace(-1, 1, size)  # value = x.u
    pooled = torch.nn.functional.avg_pool2d(ramp[None, None], 2)[0, 0]  # [4, 4]
    maps = pooled.expand(1, 3, 4, 4)  # constant along the stack
    out = backproject_maps(maps, normal, u, v, (5, 8, 8), size)
    inner = out[:, 1:-1, 1:-1]  # away from the clamped edge half-cells
    expected = torch.linspace(-1, 1, size)[1:-1, None].expand(6, 6)
    torch.testing.assert_close(inner, expected.expand(5, 6, 6), atol=1e-5, rtol=0)


def test_map_backprojection_is_zero_outside_the_slice_square():
    normal, u, v = torch.eye(3)[0:1], torch.eye(3)[1:2], torch.eye(3)[2:3]
    maps = torch.ones(1, 3, 4, 4)
    out = backproject_maps(maps, normal, 0.5 * u / 0.5, v, (3, 5, 5), 8)
    assert torch.equal(out, torch.ones(3, 5, 5))
    tilted = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=1)
    u2 = torch.nn.functional.normalize(torch.tensor([[1.0, -1.0, 0.0]]), dim=1)
    out = backproject_maps(maps, tilted, u2, v, (3, 5, 5), 8)
    assert out[0, 0, 0] == 0 and out[1, 2, 2] == 1  # corner: |x.n| = sqrt(2) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    volume = gaussian((16, 16, 16), 0.25)[None]
    cpu = reconstruct(volume, plane_integral, **SMALL)
    gpu = reconstruct(volume.cuda(), plane_integral, **SMALL)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)
