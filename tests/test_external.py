"""External heatmaps: found by volume id, checked up front, mapped into the volume's space
(exactly through the adapter's reorientation and crop, or resampled on another grid)."""

from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from benchmark.run.external import ExternalHeatmapError, ExternalHeatmaps, GridMap, grid_map
from datasets import load_dataset
from datasets.base import safe_stem

# file voxel axes: (R -> L, I -> S, P -> A), spacing (1.5, 2.0, 0.8) mm, and an offset;
# the adapter reorders them to (D, H, W) = (S, P, L): a permutation and a flip
AFFINE = np.array(
    [[-1.5, 0.0, 0.0, 30.0], [0.0, 0.0, 0.8, -10.0], [0.0, 2.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]
)
SHAPE = (7, 6, 9)  # as stored
SPLITS = {"s0": "train", "s1": "train", "s2": "val", "s3": "val", "s4": "val"}
VAL = ["s2", "s3", "s4"]


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)


def stored_mask(k: int) -> np.ndarray:
    """The mask of sample ``k`` as stored (empty for the negatives s0, s2)."""
    blob = np.random.default_rng(k).random(SHAPE) > 0.7
    return (blob & bool(k % 2 or k == 4)).astype(np.uint8)


def in_volume_order(array: np.ndarray) -> np.ndarray:
    """Stored (L, S, A) order -> (S, P, L): the oracle for the adapter's reorientation."""
    return np.transpose(array, (1, 2, 0))[:, ::-1, :]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    lines = ["id,label,image,mask,split"]
    for k, (name, split) in enumerate(SPLITS.items()):
        image = np.random.default_rng(100 + k).normal(0, 1, SHAPE).astype(np.float32)
        save(root / f"{name}.nii.gz", image)
        save(root / f"{name}_mask.nii.gz", stored_mask(k))
        lines.append(f"{name},{int(stored_mask(k).any())},{name}.nii.gz,{name}_mask.nii.gz,{split}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    return load_dataset("folder", root=root, cache_dir=root / "cache")


def source_heatmaps(folder, ids=VAL):
    """The masks, as float, in the source space: the mask files' data and affine."""
    for name in ids:
        save(folder / f"{name}.nii.gz", stored_mask(int(name[1])).astype(np.float32))
    return folder


def test_source_space_heatmaps_map_exactly_onto_the_masks(ds, tmp_path):
    folder = source_heatmaps(tmp_path)
    canonical = nib.as_closest_canonical(nib.load(folder / "s3.nii.gz"))  # RAS: other order
    (folder / "s3.nii.gz").unlink()
    nib.save(canonical, folder / "s3.nii")
    four_d = nib.Nifti1Image(stored_mask(4)[..., None].astype(np.float32), AFFINE)
    nib.save(four_d, folder / "s4.nii.gz")  # last dimension 1: read as 3D
    (folder / "README.txt").write_text("not a heatmap")
    heatmaps = ExternalHeatmaps(ds, folder, ds.ids("val"))
    heatmaps.check()
    for name in VAL:
        heatmap = heatmaps.load(name)
        assert heatmap.dtype == np.float32 and heatmap.flags.c_contiguous
        assert np.array_equal(heatmap, ds[name].mask)
        assert np.array_equal(heatmap, in_volume_order(stored_mask(int(name[1]))))
    assert ds["s3"].mask.sum() > 10


def test_npy_in_volume_space_loads_as_is(ds, tmp_path):
    source_heatmaps(tmp_path, ["s2"])
    values = np.random.default_rng(0).normal(size=(6, 9, 7))  # float64
    np.save(tmp_path / "s3.npy", values)
    np.save(tmp_path / "s4.npy", ds["s4"].mask)  # bool
    heatmaps = ExternalHeatmaps(ds, tmp_path, VAL)
    heatmaps.check()
    assert np.array_equal(heatmaps.load("s3"), values.astype(np.float32))
    assert heatmaps.load("s4").dtype == np.float32
    assert np.array_equal(heatmaps.load("s4"), ds["s4"].mask)


def test_saved_heatmaps_of_ids_that_start_with_a_dot_are_found(tmp_path):
    """``--save-heatmaps`` names files by the volume id (export_nifti); an id that starts
    with "." gets a file name that does not, which ``evaluate`` does not skip as hidden."""
    from types import SimpleNamespace

    from benchmark.run.outputs import export_nifti

    root, lines = tmp_path / "data", ["id,label,image,mask,split"]
    for k, (name, split) in enumerate([(".t0", "train"), (".t1", "train"), (".v0", "val"),
                                       (".v1", "val"), ("..v3", "val")]):  # fmt: skip
        save(root / f"c{k}.nii.gz", np.random.default_rng(k).normal(0, 1, SHAPE))
        save(root / f"c{k}_mask.nii.gz", stored_mask(k))
        lines.append(f"{name},{int(stored_mask(k).any())},c{k}.nii.gz,c{k}_mask.nii.gz,{split}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    dataset = load_dataset("folder", root=root, cache_dir=tmp_path / "cache")
    val = dataset.ids("val")
    job = SimpleNamespace(  # what export_nifti reads of a run's job
        dataset=dataset,
        volume_ids=val,
        specs=["mine"],
        heatmap=lambda spec, v: dataset[v].mask.astype(np.float32),
    )
    files = export_nifti(job, tmp_path / "heatmaps")
    assert not [f.name for f in files if f.name.startswith(".")]
    heatmaps = ExternalHeatmaps(dataset, tmp_path / "heatmaps" / "mine", val)
    heatmaps.check()
    for volume_id in val:
        assert np.array_equal(heatmaps.load(volume_id), dataset[volume_id].mask)


def linear(world):
    """A linear function of world mm: trilinear interpolation reproduces it exactly."""
    return world[..., 0] + 2 * world[..., 1] - world[..., 2]


def world_of(affine, shape):
    """World mm of every voxel centre of a grid: [*shape, 3]."""
    index = np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return np.einsum("ij,j...->...i", affine[:3, :3], index) + affine[:3, 3]


def test_other_grid_is_resampled_trilinearly(ds, tmp_path, caplog):
    fine = np.diag([0.75, 0.4, 1.0, 1.0])  # RAS, half the spacing along (x, y, z)
    fine[:3, 3] = world_of(AFFINE, SHAPE).reshape(-1, 3).min(axis=0) - np.diag(fine)[:3] / 2
    source_heatmaps(tmp_path, ["s2", "s4"])  # s3: the same extent, twice the resolution
    save(tmp_path / "s3.nii.gz", linear(world_of(fine, (14, 18, 12))).astype(np.float32), fine)
    heatmaps = ExternalHeatmaps(ds, tmp_path, VAL)
    heatmaps.check()
    with caplog.at_level(logging.INFO, logger="benchmark.run.external"):
        heatmap = heatmaps.load("s3")
    volume = ds["s3"]
    expected = linear(world_of(volume.affine, volume.mask.shape))
    assert heatmap.shape == volume.mask.shape and heatmap.dtype == np.float32
    assert np.allclose(heatmap, expected, atol=1e-3)
    assert "s3.nii.gz: resampled" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="benchmark.run.external"):
        heatmaps.load("s2")
    assert "resampled" not in caplog.text


@pytest.mark.parametrize("shift, covered", [(0.4, True), (-0.4, True), (0.6, False)])
def test_half_a_voxel_off_is_resampled_with_the_edge_extended(ds, tmp_path, shift, covered):
    moved = AFFINE.copy()
    moved[:3, 3] += shift * AFFINE[:3, 2]  # along the file's third axis (A), a fraction
    source_heatmaps(tmp_path, ["s2", "s4"])
    save(tmp_path / "s3.nii.gz", linear(world_of(moved, SHAPE)).astype(np.float32), moved)
    heatmaps = ExternalHeatmaps(ds, tmp_path, VAL)
    if not covered:
        with pytest.raises(ExternalHeatmapError, match="s3.nii.gz does not cover volume s3"):
            heatmaps.check()
        return
    heatmaps.check()
    volume = ds["s3"]
    index = world_of(np.linalg.inv(moved) @ volume.affine, volume.mask.shape)  # file indices
    nearest = np.clip(index, 0, np.subtract(SHAPE, 1))  # outside the last centres: the edge
    expected = linear(nearest @ moved[:3, :3].T + moved[:3, 3])
    assert np.allclose(heatmaps.load("s3"), expected, atol=1e-3)


def test_signed_permutations_are_taken_by_indexing():
    """The exact path against scipy's nearest-neighbour sampling of the same map."""
    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    rng = np.random.default_rng(1)
    for _ in range(8):
        turn = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], size=3)
        shape = tuple(int(rng.integers(2, 4)) for _ in range(3))
        reach = np.abs(turn) @ (np.array(shape) - 1)  # file extent along each file axis
        low = np.where(turn.sum(axis=1) > 0, 0, reach)  # a flipped axis starts high
        matrix = np.eye(4)
        matrix[:3, :3] = turn
        matrix[:3, 3] = low + rng.integers(0, np.array(data.shape) - reach)
        mapped = grid_map(np.eye(4), matrix)
        assert mapped.exact and mapped.covers(data.shape, shape)
        expected = ndimage.affine_transform(
            data, turn, offset=matrix[:3, 3], output_shape=shape, order=0
        )
        assert np.array_equal(mapped.apply(data, shape), expected)
    assert not grid_map(np.diag([2.0, 1.0, 1.0, 1.0]), np.eye(4)).exact  # another spacing
    half = np.eye(4)
    half[0, 3] = 0.5
    assert not grid_map(np.eye(4), half).exact  # a half-voxel shift


def test_cropping_adapter_autopet(tmp_path):
    """AutoPET crops to SUV > 0.2: a heatmap equal to the source SEG gives the cropped mask."""
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = (-8.0, -10.0, 5.0)
    root = tmp_path / "FDG-PET-CT-Lesions"
    segs = {}
    for k, patient in enumerate(["PETCT_0a", "PETCT_0b", "PETCT_0c", "PETCT_0d"]):
        rng = np.random.default_rng(k)
        study = root / patient / f"0{k}-01-2000-NA-PET-CT Ganzkoerper-{k}"
        suv = np.zeros((8, 9, 6), np.float32)
        suv[2:6, 1:7, 1:5] = rng.uniform(0.5, 20, (4, 6, 4))
        seg = ((rng.random(suv.shape) > 0.6) & (suv > 0) & (k % 2 == 1)).astype(np.uint8)
        save(study / "CTres.nii.gz", rng.uniform(-1000, 1000, suv.shape).astype(np.float32), affine)
        save(study / "SUV.nii.gz", suv, affine)
        save(study / "SEG.nii.gz", seg, affine)
        segs[f"{patient}/{study.name}"] = seg
    ds = load_dataset("autopet", root=root, cache_dir=tmp_path / "cache", val_fraction=0.5)
    folder = tmp_path / "heatmaps"
    for volume_id in ds.ids("val"):
        save(folder / f"{safe_stem(volume_id)}.nii.gz", segs[volume_id].astype(np.float32), affine)
    heatmaps = ExternalHeatmaps(ds, folder, ds.ids("val"))
    heatmaps.check()
    for volume_id in ds.ids("val"):
        volume = ds[volume_id]
        assert volume.mask.shape == (4, 6, 4)  # cropped from (6, 9, 8)
        assert np.array_equal(heatmaps.load(volume_id), volume.mask)
    assert any(ds[i].mask.any() for i in ds.ids("val"))
    gone = ds.ids("val")[0]  # an id with a slash and a space: its file name is sanitised
    (folder / f"{safe_stem(gone)}.nii.gz").unlink()
    with pytest.raises(ExternalHeatmapError, match=re.escape(f"{gone} (file {safe_stem(gone)}.*)")):
        ExternalHeatmaps(ds, folder, ds.ids("val")).check()


def nan_in_s3(folder):
    data = stored_mask(3).astype(np.float32)
    data[0, :2, 0] = np.nan
    save(folder / "s3.nii.gz", data)


def shifted(offset):
    def write(folder):
        moved = AFFINE.copy()
        moved[:3, 3] += offset
        save(folder / "s3.nii.gz", stored_mask(3).astype(np.float32), moved)

    return write


def replaced(name, write):
    def change(folder):
        (folder / "s3.nii.gz").unlink()
        write(folder / name)

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (
            replaced("s3.npy", lambda p: np.save(p, np.zeros((6, 9, 8)))),
            r"^\S+: s3.npy has shape \(6, 9, 8\), the volume's is \(6, 9, 7\)",
        ),
        (nan_in_s3, r"^\S+: s3.nii.gz has 2 NaN voxels"),
        (
            shifted((500.0, 0.0, 0.0)),
            r"^\S+: s3.nii.gz does not cover volume s3: its affine places it elsewhere "
            r"\(heatmap x 521.0..530.0, .*; volume x 21.0..30.0, ",
        ),
        (shifted((0.0, 0.8, 0.0)), "s3.nii.gz does not cover volume s3"),  # one voxel off
        (
            lambda folder: (folder / "s4.nii.gz").unlink(),
            r"^\S+: no heatmap \(<id>.nii.gz, .nii or .npy\) for 1 of the 3 volumes "
            "to score: s4$",
        ),
        (
            lambda folder: source_heatmaps(folder, ["s0"]),
            r"^\S+: s0.nii.gz: s0 is a training volume; heatmaps of training volumes are not "
            "scored$",
        ),
        (
            lambda folder: np.save(folder / "notes.npy", np.zeros(3)),
            r"^\S+: notes.npy: no volume of folder has the id 'notes'$",
        ),
        (
            lambda folder: np.save(folder / "s3.npy", np.zeros((6, 9, 7))),
            r"^\S+: s3.nii.gz and s3.npy: 2 heatmaps for volume s3; keep one$",
        ),
        (
            replaced("s3.nii", lambda p: save(p, np.zeros((7, 6)))),
            r"s3.nii is not a 3D image \(shape \(7, 6\)\)",
        ),
        (
            lambda folder: save(folder / "s3.nii.gz", np.zeros((*SHAPE, 2), np.float32)),
            r"s3.nii.gz is not a 3D image \(shape \(7, 6, 9, 2\)\)",
        ),
    ],
)
def test_each_problem_is_found_by_check(ds, tmp_path, monkeypatch, change, message):
    change(source_heatmaps(tmp_path))

    def no_mapping(*args):
        raise AssertionError("check() mapped a heatmap")

    monkeypatch.setattr(GridMap, "apply", no_mapping)
    with pytest.raises(ExternalHeatmapError, match=message):
        ExternalHeatmaps(ds, tmp_path, VAL).check()


def test_all_problems_in_one_error_first_file_first(ds, tmp_path):
    source_heatmaps(tmp_path, ["s0", "s2"])
    nan_in_s3(tmp_path)
    with pytest.raises(ExternalHeatmapError) as error:
        ExternalHeatmaps(ds, tmp_path, VAL).check()
    lines = str(error.value).splitlines()
    assert lines[0].endswith(
        "s0.nii.gz: s0 is a training volume; heatmaps of training "
        "volumes are not scored (and 2 more problems, below)"
    )
    assert lines[1:] == [
        "  s3.nii.gz has 2 NaN voxels",
        "  no heatmap (<id>.nii.gz, .nii or .npy) for 1 of the 3 volumes to score: s4",
    ]


def test_empty_or_missing_folder_and_load_errors(ds, tmp_path):
    with pytest.raises(ExternalHeatmapError, match="no such folder"):
        ExternalHeatmaps(ds, tmp_path / "nope", VAL).check()
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ExternalHeatmapError, match=r"no heatmap files \(<volume id>.nii.gz"):
        ExternalHeatmaps(ds, tmp_path, VAL).check()
    nan_in_s3(tmp_path)
    heatmaps = ExternalHeatmaps(ds, tmp_path, VAL)
    with pytest.raises(ExternalHeatmapError, match=r"^\S+: s3.nii.gz has 2 NaN voxels$"):
        heatmaps.load("s3")
    with pytest.raises(ExternalHeatmapError, match=r"no heatmap for volume s2 \(s2.nii.gz, "):
        heatmaps.load("s2")


def test_digest_follows_the_heatmaps_content_only(ds, tmp_path):
    source_heatmaps(tmp_path)
    before = ExternalHeatmaps(ds, tmp_path, VAL).digest()
    (tmp_path / "README.txt").write_text("my method")
    assert ExternalHeatmaps(ds, tmp_path, VAL).digest() == before
    data = stored_mask(3).astype(np.float32)
    data[0, 0, 0] = 0.5
    save(tmp_path / "s3.nii.gz", data)
    assert ExternalHeatmaps(ds, tmp_path, VAL).digest() != before


def ball(k: int, shape=(10, 12, 14)) -> np.ndarray:
    """A ball lesion at a seeded place (sample ``k``), as stored."""
    rng = np.random.default_rng(k)
    centre = [rng.uniform(3, n - 3) for n in shape]
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 6.5).astype(np.uint8)


def test_evaluate_scores_source_space_heatmaps_of_a_reoriented_folder_set(
    tmp_path, monkeypatch, capsys
):
    """End to end through ``python -m benchmark evaluate``: the ground-truth masks written
    in the source space (axes permuted and flipped) score Dice > 0.9, noise < 0.1, and a
    missing file is one error line naming it, before anything is scored or written."""
    from benchmark.cli import main

    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    root, rows = tmp_path / "data", ["id,label,image,mask,split"]
    for k in range(20):
        label, split = k % 2, "train" if k < 4 else "val"
        image = np.random.default_rng(k).normal(0, 1, (10, 12, 14)).astype(np.float32)
        save(root / f"c{k}.nii.gz", image + 3 * ball(k) * label)
        save(root / f"c{k}_mask.nii.gz", ball(k) * label)
        rows.append(f"c{k},{label},c{k}.nii.gz,c{k}_mask.nii.gz,{split}")
    (root / "dataset.csv").write_text("\n".join(rows) + "\n")
    masks, noise = tmp_path / "masks", tmp_path / "noise"
    rng = np.random.default_rng(0)
    for k in range(4, 20):
        save(masks / f"c{k}.nii.gz", (ball(k) * (k % 2)).astype(np.float32))
        save(noise / f"c{k}.nii.gz", rng.random((10, 12, 14)).astype(np.float32))
    board = tmp_path / "leaderboards"

    def evaluate(folder, name):
        args = ["evaluate", "--dataset", "folder", "--root", str(root), "--heatmaps"]
        return main(
            [
                *args,
                str(folder),
                "--name",
                name,
                "--leaderboards",
                str(board),
                "--out",
                str(tmp_path / name),
                "--set",
                "folds=4",
            ]
        )

    (masks / "c7.nii.gz").rename(tmp_path / "c7.nii.gz")
    assert evaluate(masks, "Masks") == 2
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error.startswith("error: ") and "c7" in error and "no heatmap" in error
    assert not board.exists() or not any(board.iterdir())
    (tmp_path / "c7.nii.gz").rename(masks / "c7.nii.gz")
    assert evaluate(masks, "Masks") == 0 and evaluate(noise, "Noise") == 0
    import pandas as pd

    page = pd.read_csv(board / "folder.csv").set_index("method")
    assert page.loc["masks", "dice"] > 0.9 and page.loc["noise", "dice"] < 0.1
    assert set(page.model) == {"external"}
    assert page.loc["masks", "dice_ci_low"] > 0.8
