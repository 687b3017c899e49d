"""Iterative tomographic CAM, the reconstruction the paper leaves open: its forward model P
(slices pooled to the maps' grid) and adjoint are exact transposes, it beats Averaged and
Tomographic CAM on the paper's Figure 4, and its family shares Averaged CAM's passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from phantoms import grid_points, radius_map, rel_l2, smooth_ball
from timm.models.resnet import BasicBlock, ResNet

from benchmark.config import TomographyConfig
from benchmark.run.prices import shared_passes
from methods import create_method, expand_specs, list_methods
from methods.heatmaps import compute_heatmaps
from methods.registry import method_name
from methods.tomography import (
    FILTERED,
    UNFILTERED,
    Iterative,
    backproject_pooled,
    extract_slices,
    fibonacci_sphere,
    orthonormal_frames,
    pooled_slice_matrices,
    project_maps,
    reconstruct_iterative,
    reconstruct_many,
    slice_offsets,
)


def geometry(n_angles, n_slices, dtype=torch.float32, seed=0):
    normals = fibonacci_sphere(n_angles, dtype)
    u, v = orthonormal_frames(normals, torch.Generator().manual_seed(seed))
    return normals, u, v, slice_offsets(n_slices, padded=False).to(dtype)


def ellipsoid(shape, axes=(0.5, 0.3, 0.4), centre=(0.2, -0.15, 0.1)) -> torch.Tensor:
    """The smooth ellipsoid (1 - sum ((x - c)_i / a_i)^2)+, off-centre."""
    scaled = (grid_points(shape) - torch.tensor(centre, dtype=torch.float64)) / torch.tensor(axes)
    return (1.0 - scaled.square().sum(-1)).clamp(min=0.0).float()


# --- the forward model P and its adjoint --------------------------------------------------


@pytest.mark.parametrize(
    "shape, n_angles, n_slices, size, cells",
    [
        ((6, 6, 6), 4, 5, 16, (4, 4)),  # cubic, kernel 4
        ((5, 6, 7), 3, 4, 12, (3, 3)),  # non-cubic
        ((9, 4, 6), 5, 3, 10, (5, 2)),  # non-square cells
        ((7, 5, 8), 6, 4, 15, (4, 3)),  # size not a multiple of the cells: adaptive pooling
        ((4, 7, 5), 7, 2, 8, (8, 8)),  # full resolution: no pooling
    ],
)
def test_adjoint_is_the_exact_transpose_in_float64(shape, n_angles, n_slices, size, cells):
    normals, u, v, offsets = geometry(n_angles, n_slices, torch.float64, seed=1)
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    y = torch.randn(n_angles, n_slices, 2, *cells, generator=generator, dtype=torch.float64)
    px = project_maps(x, normals, u, v, offsets, size, cells)
    pty = backproject_pooled(y, normals, u, v, offsets, size, shape)
    assert px.shape == y.shape and pty.shape == x.shape
    left, right = float((px * y).sum()), float((x * pty).sum())
    assert abs(left - right) <= 1e-10 * abs(left)  # asked: 1e-5; measured ~1e-15


@pytest.mark.parametrize(
    "shape, n_angles, n_slices, size, cells, scale",
    [
        ((8, 8, 8), 5, 4, 16, (4, 4), 1.0),  # cubic, kernel 4
        ((6, 9, 11), 4, 5, 12, (3, 4), 1.0),  # non-cubic, non-square cells
        ((7, 5, 8), 6, 4, 15, (4, 7), 1.0),  # adaptive pooling (15 px into 4 and 7 cells)
        ((5, 7, 6), 3, 3, (10, 9), (10, 9), 1.0),  # full resolution, non-square slices
        ((9, 6, 7), 7, 6, 13, (5, 3), 1.6),  # large frames: slices leave the cube
    ],
)
def test_sparse_projection_equals_grid_sample(shape, n_angles, n_slices, size, cells, scale):
    """The sparse P of pooled_slice_matrices is project_maps (grid_sample + pooling)."""
    normals, u, v, offsets = geometry(n_angles, n_slices, seed=2)
    offsets = offsets * 1.1  # the outer slices leave the cube too
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    expected = project_maps(x, normals, scale * u, scale * v, offsets, size, cells)
    columns = x.reshape(3, -1).T
    blocks = pooled_slice_matrices(normals, scale * u, scale * v, offsets, size, cells, shape)
    rows = torch.cat([matrix @ columns for matrix, _ in blocks])
    projected = rows.T.reshape(3, n_angles, n_slices, *cells).movedim(0, 2)
    assert (expected == 0).any() and (expected != 0).any()
    error = (projected - expected).abs().max() / expected.abs().max()
    assert error < 1e-5


def test_projection_is_the_slices_of_eq_4_average_pooled():
    """P on a smooth volume is extract_slices + avg_pool2d (kernel = stride = 224/7 style)."""
    volume = smooth_ball((12, 14, 16), 0.7, centre=(0.1, 0.0, -0.1))[None]
    normals, u, v, offsets = geometry(6, 5)
    slices = extract_slices(volume, normals, offsets, 24, u, v)  # [6, 5, 1, 24, 24]
    for kernel in (2, 3, 8):
        pooled = F.avg_pool2d(slices.flatten(0, 2), kernel).view(6, 5, 1, 24 // kernel, -1)
        projected = project_maps(volume, normals, u, v, offsets, 24, (24 // kernel,) * 2)
        torch.testing.assert_close(projected, pooled, atol=1e-6, rtol=0)


def test_pooled_cells_of_a_linear_volume_are_its_values_at_the_cell_centres():
    """Trilinear interpolation is exact on a linear f, so a cell's mean over its pixels is f
    at the mean of their points s n + u' u + v' v, eq. (4): a closed form."""
    shape, size, cells = (7, 9, 11), 12, (3, 4)
    x = grid_points(shape)
    volume = (0.3 * x[..., 0] - 0.5 * x[..., 1] + 0.2 * x[..., 2] + 1.0).float()[None]
    normals, u, v, _ = geometry(5, 2)
    u, v = 0.45 * u, 0.45 * v  # shrunk so every pixel stays inside the cube
    offsets = torch.tensor([-0.3, 0.25])
    projected = project_maps(volume, normals, u, v, offsets, size, cells)[:, :, 0]
    pixels = torch.linspace(-1.0, 1.0, size)
    along_u = pixels.view(cells[0], -1).mean(1)  # the cells' centres in the slice
    along_v = pixels.view(cells[1], -1).mean(1)
    centres = (
        offsets[None, :, None, None, None] * normals[:, None, None, None]
        + along_u[None, None, :, None, None] * u[:, None, None, None]
        + along_v[None, None, None, :, None] * v[:, None, None, None]
    )  # [L, M, a, b, 3]
    expected = 0.3 * centres[..., 0] - 0.5 * centres[..., 1] + 0.2 * centres[..., 2] + 1.0
    torch.testing.assert_close(projected, expected, atol=1e-5, rtol=0)


# --- the solver ---------------------------------------------------------------------------


FIGURE4 = dict(n_angles=20, n_slices=10, size=16)  # 16-px slices: kernels of 8 and 2 pixels


def test_figure_4_iterative_beats_averaged_and_tomographic_at_two_resolutions():
    """The paper's Figure 4: each slice's "CAM" is the slice average-pooled to 2 x 2 cells
    (kernel 8, as 7 cells of 224 px: blurry averages, over-sharp second differences) or
    8 x 8 (kernel 2). Relative L2 error inside the unit ball, measured: 2 cells, averaged
    0.87/0.93, tomographic 0.82/0.82, iterative 0.16/0.23 (ball/ellipsoid); 8 cells 0.23/0.40,
    0.52/0.73, 0.005/0.032."""
    shape = (16, 20, 20)
    phantoms = torch.stack([smooth_ball(shape, 0.6), ellipsoid(shape)])
    solver = Iterative()
    results = reconstruct_many(
        phantoms,
        lambda s: {(k, c): F.adaptive_avg_pool2d(s[:, k], c) for k in (0, 1) for c in (2, 8)},
        **FIGURE4,
        modes=(UNFILTERED, FILTERED, solver),
        chunk=FIGURE4["n_angles"],
    )
    inside = radius_map(shape) <= 1
    bound = {2: 0.3, 8: 0.05}
    for cells in (2, 8):
        for k, volume in enumerate(phantoms):
            averaged, tomographic, iterative = (
                rel_l2(results[((k, cells), mode)][inside], volume[inside])
                for mode in (UNFILTERED, FILTERED, solver)
            )
            assert iterative < 0.5 * min(averaged, tomographic), (cells, k)
            assert iterative < bound[cells], (cells, k, iterative)


def test_chunk_size_does_not_change_the_iterative_result_and_bounds_the_batch():
    volume = smooth_ball((8, 10, 12), 0.6, centre=(0.1, 0.0, 0.0))[None]
    seen = []

    def slice_fn(slices):
        seen.append(len(slices))
        return F.avg_pool2d(slices[:, 0], 4)

    options = dict(n_angles=10, n_slices=6, size=16, iterations=5)
    results = [reconstruct_iterative(volume, slice_fn, **options, chunk=c) for c in (3, 10)]
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-4)
    assert seen == [3 * 6] * 3 + [1 * 6] + [10 * 6]  # the classifier sees each slice once
    assert results[0].dtype == torch.float32 and results[0].shape == (8, 10, 12)
    assert results[0].min() >= 0  # the default solver is non-negative


def test_cgls_recovers_a_volume_that_its_full_resolution_slices_determine():
    """Consistent data with a full-rank P (maps at full resolution): CGLS converges to the
    volume itself, unconstrained, and the default SIRT gets there too."""
    volume = smooth_ball((8, 8, 8), 0.7)[None]
    options = dict(n_angles=12, n_slices=8, size=8)
    inside = radius_map((8, 8, 8)) <= 1
    for solver in ({"solver": "cgls", "nonnegative": False}, {}):
        rec = reconstruct_iterative(volume, lambda s: s[:, 0], **options, iterations=60, **solver)
        assert rel_l2(rec[inside], volume[0][inside]) < 0.01, solver


def test_solver_settings_and_outputs_are_checked():
    with pytest.raises(ValueError, match="cgls solver is unconstrained"):
        Iterative(solver="cgls")
    with pytest.raises(ValueError, match="'sirt' or 'cgls'"):
        Iterative(solver="art")
    volume = torch.ones(1, 4, 4, 4)
    with pytest.raises(ValueError, match="needs maps"):
        reconstruct_iterative(volume, lambda s: s.mean((1, 2, 3)), 3, 3, 8)


# --- the method family ----------------------------------------------------------------------

GRADIENT_CAMS = ("gradcam", "gradcampp", "layercam")
TINY = TomographyConfig(n_angles=4, n_angles_cam=3, n_slices=4, slice_size=32, chunk=2)
SHAPE = (5, 6, 7)


def test_the_family_is_registered_for_every_gradient_cam_with_the_papers_names():
    assert list_methods("iterative*") == [f"iterative_{c}" for c in GRADIENT_CAMS]
    assert expand_specs("iterative_*@2") == [f"iterative_{c}@2" for c in GRADIENT_CAMS]
    assert method_name("iterative_gradcampp@3").display == "Iterative GradCAM++ (layer 3)"
    rows = ["layercam@1", "tonno", "iterative_layercam@1", "tomographic_layercam@1"]
    rows += ["averaged_layercam@1", "centre"]
    order = sorted(rows, key=lambda spec: method_name(spec).order)
    assert order[2:5] == ["averaged_layercam@1", "tomographic_layercam@1", "iterative_layercam@1"]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = ResNet(BasicBlock, (1, 1, 1, 1), num_classes=1, in_chans=2, channels=(4, 8, 8, 8))
    return model.eval()


def count_slices(model, run):
    """Slices through ``model`` (forward hook) while ``run()`` runs, and its result."""
    seen = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    try:
        result = run()
    finally:
        handle.remove()
    return sum(seen), result


def test_the_family_shares_the_classifier_passes_of_averaged_and_tomographic_cam(tiny_model):
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    L, M = TINY.n_angles_cam, TINY.n_slices

    def computed(specs):
        return count_slices(
            tiny_model, lambda: dict(compute_heatmaps(specs, volume, tiny_model, TINY, 16))
        )

    averaged, alone = computed(["averaged_layercam@2"])
    assert averaged == L * M
    iterative = [f"iterative_{c}@{k}" for c in GRADIENT_CAMS for k in (2, 4)]
    together, shared = computed(["averaged_layercam@2", *iterative])
    assert together == L * M  # the iterative specs add no classifier pass
    with_tomographic, _ = computed(["averaged_layercam@2", "tomographic_layercam@2", *iterative])
    assert with_tomographic == L * (M + 2)  # Tomographic CAM's padded stacks, as alone
    torch.testing.assert_close(shared["averaged_layercam@2"], alone["averaged_layercam@2"])
    for spec in ("iterative_gradcampp@2", "iterative_layercam@4"):  # the same as alone
        method = create_method(spec, config=TINY, batch_size=16)
        torch.testing.assert_close(shared[spec], method(volume, tiny_model), rtol=1e-4, atol=1e-6)
    groups = {create_method(s, config=TINY).pass_group for s in ["averaged_layercam@1", *iterative]}
    assert len(groups) == 1


def test_stated_passes_are_the_counted_classifier_passes_and_solver_cuts(tiny_model, monkeypatch):
    from methods import tomography

    cuts = []
    extract = tomography.extract_slices

    def counting_extract(*args, **kwargs):
        slices = extract(*args, **kwargs)
        cuts.append(slices.shape[0] * slices.shape[1])
        return slices

    monkeypatch.setattr(tomography, "extract_slices", counting_extract)
    volume = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(1))
    method = create_method("iterative_layercam@3", config=TINY, batch_size=16)
    forward, _ = count_slices(tiny_model, lambda: method(volume, tiny_model))
    stated = method.passes(SHAPE)
    L, M, size = TINY.n_angles_cam, TINY.n_slices, TINY.slice_size
    iterations = Iterative().iterations
    assert (
        (stated.forward, stated.backward, stated.cut) == (forward, forward, L * M) == (12, 12, 12)
    )
    # the solver reads every slice's sparse P for P^T maps, D = P^T P 1 and each
    # iteration's P^T P, and writes it back (the adjoint): counted as two reads a pixel;
    # its matrices are built from the slices' points, not cut with extract_slices
    assert sum(cuts) == L * M  # the classifier's
    averaged = L * SHAPE[0] * SHAPE[1] * SHAPE[2]  # where the solver starts: eq. (12)
    assert stated.backprojected == averaged + 2 * (iterations + 2) * L * M * size**2
    family = [create_method(f"iterative_layercam@{k}", config=TINY) for k in (1, 2, 3, 4)]
    work = shared_passes(family, SHAPE, {})
    assert (work.forward, work.cut) == (L * M, L * M)  # one shared pass for the 4 layers
    assert work.backprojected == 4 * stated.backprojected  # but a solve per layer


@pytest.mark.slow  # ~15 s idle: 4 grids x 30 iterations of 64-px slices
def test_bench_figure4_prints_every_phantom_and_grid(capsys):
    from benchmark.cli import main

    args = ["bench", "figure4", "--device", "cpu", "--grids", "quick", "--shape", "1", "8", "10"]
    args += ["10", "--set", "n_angles_cam=4", "n_slices=4", "chunk=4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8x10x10 volumes, L = 4, M = 4" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.count("|") == 8]
    body = [[cell.strip() for cell in row] for row in rows[2:]]  # below header and rule
    assert [row[:4] for row in body[:3]] == [
        ["smooth ball", "64", "2", "32"],
        ["off-centre ellipsoid", "64", "2", "32"],
        ["synthetic_0049", "64", "2", "32"],
    ]
    assert [row[2] for row in body] == ["2"] * 3 + ["4"] * 3 + ["8"] * 3 + ["16"] * 3
    assert all(0 < float(error) < 10 for row in body for error in row[4:])
