"""``run`` end to end on a ``folder`` data set of NIfTI files: edits between runs give the
numbers of a fresh cache, and bad input is one error line before any training."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from benchmark.cli import main
from datasets import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
# a classifier of a few steps may be at chance: these runs test the machinery, not rankings
# float32: bf16 steps on a CPU diverged at step 1 on 16-px slices (test_resnet, batch norms)
CONFIG = """\
run: {folds: 3, allow_chance: true}
train: {model: test_resnet, pretrained: false, iterations: 8, slice_size: 16, precision: float32,
        slices_per_volume: 4, val_every: 4, val_slices: 4, checkpoint_every: 4, log_every: 4}
tomography: {n_angles: 8, n_angles_cam: 4, n_slices: 6, slice_size: 16, chunk: 4}
"""
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS-like voxel axes: stored flipped


def write_folder(root, n_train: int = 6, n_val: int = 8):
    """Synthetic volumes as NIfTI images and masks listed in ``dataset.csv``."""
    source = load_dataset("synthetic", shape=(12, 16, 16), n_train=n_train, n_val=n_val)
    lines = ["id,label,image,mask,split"]
    for k, sample_id in enumerate(source.ids()):
        volume = source[sample_id]
        for name, array in (("image", volume.image[0]), ("mask", volume.mask.astype(np.uint8))):
            path = root / f"{name}s" / f"case{k:02d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(array.T), AFFINE), path)
        split = source.split(sample_id)
        lines.append(
            f"case{k:02d},{volume.label},images/case{k:02d}.nii.gz,masks/case{k:02d}.nii.gz,{split}"
        )
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    return root


def run_args(root, out, config, *extra):
    return [
        "run", "--dataset", "folder", "--root", str(root), "--preset", "quick",
        "--device", "cpu", "--config", str(config), "--methods", "tonno,layercam@1",
        "--out", str(out), "--leaderboards", str(out / "leaderboards"), *extra,
    ]  # fmt: skip


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return path


def edit(root, case: int, array_of) -> None:
    """Rewrite ``images/caseNN.nii.gz`` with ``array_of(old array)``."""
    path = root / "images" / f"case{case:02d}.nii.gz"
    old = np.asarray(nib.load(path).dataobj)
    nib.save(nib.Nifti1Image(array_of(old).astype(old.dtype), AFFINE), path)


def records(cache) -> set:
    return set(cache.glob("heatmaps/*/*/*/*.json"))


def test_edited_files_give_the_numbers_of_a_fresh_cache(tmp_path, config, monkeypatch):
    root = write_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    monkeypatch.setenv("TONNO_CACHE", str(cache))
    assert main(run_args(root, tmp_path / "run", config)) == 0
    before, first = (tmp_path / "run" / "results.csv").read_text(), records(cache)

    edit(root, 7, np.zeros_like)  # two validation images zeroed: only their entries are new
    edit(root, 8, np.zeros_like)
    assert main(run_args(root, tmp_path / "run", config)) == 0
    new = {p.name.split("-")[0] for p in records(cache) - first}
    assert new == {"case07", "case08"} and len(records(cache) - first) == 2 * 2
    edited = (tmp_path / "run" / "results.csv").read_text()

    edit(root, 1, lambda a: a[::-1].copy())  # a training image flipped: the classifier too
    assert main(run_args(root, tmp_path / "run", config)) == 0
    retrained = (tmp_path / "run" / "results.csv").read_text()
    assert list((tmp_path / "run").glob("checkpoint.*.pt"))  # the old classifier kept aside

    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "fresh-cache"))
    assert main(run_args(root, tmp_path / "fresh", config)) == 0
    assert retrained == (tmp_path / "fresh" / "results.csv").read_text()
    assert len({before, edited, retrained}) == 3


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: edit(root, 2, lambda a: a + 1e30), "images/case02.nii.gz"),
        (lambda root: edit(root, 9, lambda a: np.where(a > a.mean(), np.nan, a)), "NaN"),
    ],
    ids=["absurd-training-values", "nan-in-validation"],
)
def test_bad_volumes_are_named_before_training(tmp_path, config, monkeypatch, capsys, damage,
                                               message):  # fmt: skip
    root = write_folder(tmp_path / "data")
    damage(root)
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    assert main(run_args(root, tmp_path / "run", config)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: folder: ") and message in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_negative_with_a_lesion_in_its_mask_is_refused(tmp_path, config, monkeypatch, capsys):
    root = write_folder(tmp_path / "data")
    csv = root / "dataset.csv"
    lines = csv.read_text().splitlines()
    lines[1 + 11] = lines[1 + 11].replace(",1,images", ",0,images")  # case11 is a positive
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    assert main(run_args(root, tmp_path / "run", config)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "case11" in err and "masks/case11.nii.gz" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_volume_edited_during_the_run_is_not_filed_under_its_old_address(tmp_path):
    """A heatmap is filed under the digests the job began with: a volume whose cache entry
    is rebuilt from other content before its heatmap is computed is a failure, not a
    result under the old address."""
    import torch

    from benchmark.cache import HeatmapStore
    from benchmark.runner import Job, compute_missing_heatmaps

    root = write_folder(tmp_path / "data")
    dataset = load_dataset("folder", root=root, cache_dir=tmp_path / "cache")
    store = HeatmapStore(tmp_path / "store")
    job = Job(dataset, ["intensity"], ["case07"], store, None, 1, [], set(), set())
    edit(root, 7, np.zeros_like)
    model = torch.nn.Linear(1, 1)
    failures = compute_missing_heatmaps(job, ["case07"], model, {}, progress=False)
    assert failures == [
        "volume case07: case07 changed during the run (its cache entry was rebuilt from other "
        "content): rerun the command"
    ]
    assert not list(store.root.rglob("*.json"))
