"""Numbers you can trust, data-set part: caches follow content, damaged entries (flipped
bits included) are rebuilt, bad values and contradictory annotations are errors naming
the file, ``verify`` reads every voxel, ``inspect --check`` lists every problem, options
are typed."""

from __future__ import annotations

import logging
import os
import re

import nibabel as nib
import numpy as np
import pytest

from benchmark.cli import main
from datasets import DatasetError, load_dataset
from foundation.seal import read_sealed

SHAPE = (6, 5, 4)  # file axes x, y, z
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # RAS+, so (D, H, W) = (z, y flipped, x flipped)


def oriented(array: np.ndarray) -> np.ndarray:
    """The benchmark's (D, H, W) = (S, P, L) view of an array saved with AFFINE."""
    return np.transpose(array, (2, 1, 0))[:, ::-1, ::-1]


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), AFFINE), path)


def image(k: int) -> np.ndarray:
    return np.random.default_rng(k).normal(0, 1, SHAPE).astype(np.float32)


def lesion(size: int = 1) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[1 : 2 + size, 1:3, 1:2] = 1
    return mask


def make(root, masks=None, labels=(0, 1, 0, 1)):
    """Cases c0..c3 (uncompressed .nii: the size follows dtype and shape), masks for the
    positives (``masks`` overrides: {k: array or None})."""
    lines = ["id,label,image,mask"]
    for k, label in enumerate(labels):
        save(root / "images" / f"c{k}.nii", image(k))
        mask = (masks or {}).get(k, lesion() if label else None)
        path = ""
        if mask is not None:
            save(root / "masks" / f"c{k}.nii", mask)
            path = f"masks/c{k}.nii"
        lines.append(f"c{k},{label},images/c{k}.nii,{path}")
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    return root


def open_folder(tmp_path, **options):
    return load_dataset(
        "folder", root=tmp_path / "data", cache_dir=tmp_path / "cache", val_fraction=0, **options
    )


def flip_digit(path, field: str) -> None:
    """Flip the lowest bit of the first digit after ``"field":`` in a JSON file: another
    digit, so the file still parses."""
    data = bytearray(path.read_bytes())
    data[re.search(rf'"{re.escape(field)}":[^0-9]*(\d)'.encode(), data).start(1)] ^= 1
    path.write_bytes(bytes(data))


def cache_files(ds) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in ds.cache_path.iterdir()}


# -- the cache follows the files ------------------------------------------------------


@pytest.mark.parametrize("same_size", [True, False])
def test_an_edited_image_is_read_again_and_only_its_entry_rewritten(tmp_path, caplog, same_size):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    for i in ds:
        ds[i]
    before, old_print = cache_files(ds), ds.fingerprint("c1")
    path = tmp_path / "data" / "images" / "c1.nii"
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    new = image(9) if same_size else image(9).astype(np.float64)
    save(path, new)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # a changed mtime, whatever the clock
    assert (path.stat().st_size == size) == same_size

    caplog.set_level(logging.INFO, logger="datasets")
    again = open_folder(tmp_path)
    assert np.allclose(again["c1"].image[0], oriented(new))
    assert again.fingerprint("c1") != old_print
    assert "images/c1.nii changed" in caplog.text
    after = cache_files(again)
    assert after["c1.json"] != before["c1.json"]
    assert {k: v for k, v in after.items() if not k.startswith("c1.")} == {
        k: v for k, v in before.items() if not k.startswith("c1.")
    }


def test_a_touched_file_is_hashed_once_and_kept(tmp_path, monkeypatch):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    for i in ds:
        ds[i]
    before = cache_files(ds)
    path = tmp_path / "data" / "images" / "c1.nii"
    mtime = path.stat().st_mtime_ns + 5 * 10**9
    os.utime(path, ns=(mtime, mtime))  # same bytes, new mtime: the hash says unchanged
    assert ds["c1"].image.shape == (1, 4, 5, 6)
    stored = read_sealed(ds.cache_path / "c1.json")["sources"]
    assert [s["mtime_ns"] for s in stored if s["path"].endswith("c1.nii")][0] == mtime
    assert cache_files(ds)["c1.image.npy"] == before["c1.image.npy"]  # not recomputed

    def no_hash(*args):
        raise AssertionError("an unchanged entry was hashed: reads must cost stat calls only")

    monkeypatch.setattr("datasets.cache.file_sha256", no_hash)
    again = open_folder(tmp_path)
    assert all(np.allclose(again[f"c{k}"].image[0], oriented(image(k))) for k in range(4))


def test_the_blind_spot_same_size_and_mtime_is_not_seen(tmp_path):
    """Documented in datasets.cache: an edit keeping size and mtime is served stale."""
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    old = np.array(ds["c1"].image)
    path = tmp_path / "data" / "images" / "c1.nii"
    stat = path.stat()
    save(path, image(9))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert np.array_equal(open_folder(tmp_path)["c1"].image, old)


def test_a_csv_row_pointing_at_another_mask_serves_the_new_mask(tmp_path):
    root = make(tmp_path / "data")
    save(root / "masks" / "other.nii", lesion(size=3))
    ds = open_folder(tmp_path)
    assert ds["c1"].mask.sum() == 4
    csv = root / "dataset.csv"
    csv.write_text(csv.read_text().replace("masks/c1.nii", "masks/other.nii"))
    mask = open_folder(tmp_path)["c1"].mask
    assert np.array_equal(mask, oriented(lesion(size=3)) > 0) and mask.sum() == 8


# -- damaged entries ------------------------------------------------------------------


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("c1.image.npy", _truncate),
        ("c1.mask.npy", os.unlink),
        ("c1.json", lambda p: p.write_text('{"shape": [1, 4')),
        ("c1.json", lambda p: p.write_bytes(b"\x00\xff garbage")),
        ("c1.json", lambda p: p.write_text('{"arrays": 1, "sources": [], "fields": {}}')),
        ("c1.json", lambda p: p.write_text("[]")),
    ],
)
def test_a_damaged_entry_is_rebuilt_with_a_warning(tmp_path, caplog, name, damage):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    ds["c1"]
    damage(ds.cache_path / name)
    caplog.set_level(logging.WARNING, logger="datasets")
    volume = open_folder(tmp_path)["c1"]
    assert np.allclose(volume.image[0], oriented(image(1)))
    assert np.array_equal(volume.mask, oriented(lesion()) > 0)
    assert name in caplog.text and "damaged cache entry" in caplog.text


@pytest.mark.parametrize("bit_rot", [False, True])
def test_flipped_bytes_in_an_array_are_seen_before_it_is_served(tmp_path, caplog, bit_rot):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    right, served = ds.fingerprint("c1"), np.array(ds["c1"].image)
    path = ds.cache_path / "c1.image.npy"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # same size: the stat calls do not see it
    path.write_bytes(bytes(data))
    if bit_rot:  # nor the mtime
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.set_level(logging.WARNING, logger="datasets")
    again = open_folder(tmp_path)  # the next run's
    assert np.array_equal(again["c1"].image, served)
    assert "c1.image.npy does not match the sha" in caplog.text
    assert again.fingerprint("c1") == right


def test_arrays_are_hashed_once_per_data_set_object(tmp_path, monkeypatch):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    check = ds.verify("c1")

    def no_hash(*args):
        raise AssertionError("hashed again")

    monkeypatch.setattr("datasets.cache.image_fingerprint", no_hash)
    assert ds["c1"].image.shape == (1, 4, 5, 6)  # hashed by verify: not again
    assert open_folder(tmp_path).verify("c1") == check  # verified content: no voxel read
    with pytest.raises(AssertionError, match="hashed again"):
        open_folder(tmp_path)["c1"]  # another object hashes before it serves


def test_verify_detects_flipped_bytes_and_rebuilds(tmp_path, caplog):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    right = ds.fingerprint("c1")
    path = ds.cache_path / "c1.mask.npy"
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0x01 for b in data[-4:])  # other bools
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="datasets")
    check = ds.verify("c1")
    assert "c1.mask.npy does not match the sha" in caplog.text
    assert check.fingerprint == right and check.shape == (1, 4, 5, 6) and not check.empty_truth
    assert np.array_equal(ds["c1"].mask, oriented(lesion()) > 0)


def test_a_flipped_digit_in_an_entry_json_is_damage(tmp_path, caplog):
    make(tmp_path / "data")
    ds = open_folder(tmp_path)
    affine = ds["c1"].affine
    flip_digit(ds.cache_path / "c1.json", "affine")  # still JSON, another affine
    caplog.set_level(logging.WARNING, logger="datasets")
    assert np.array_equal(open_folder(tmp_path)["c1"].affine, affine)
    assert "c1.json does not match the sha256 it was sealed with" in caplog.text


def test_fingerprints_follow_content_not_names(tmp_path):
    root = make(tmp_path / "data")
    save(root / "images" / "c3.nii", image(1))  # c3 gets c1's image under another name
    ds = open_folder(tmp_path)
    assert ds.fingerprint("c3") == ds.fingerprint("c1") != ds.fingerprint("c0")
    assert ds.truth_fingerprint("c3") == ds.truth_fingerprint("c1")
    assert ds.truth_fingerprint("c0") == ds.truth_fingerprint("c2")  # label 0, no mask
    assert ds.truth_fingerprint("c0") != ds.truth_fingerprint("c1")
    other = load_dataset("folder", root=root, cache_dir=tmp_path / "elsewhere", val_fraction=0)
    assert other.fingerprint("c1") == ds.fingerprint("c1")
    assert len(ds.fingerprint("c1")) == 64 and int(ds.fingerprint("c1"), 16) >= 0


def test_uncached_fingerprints_and_verify_are_deterministic():
    a = load_dataset("synthetic", n_train=4, n_val=2, shape=(8, 16, 16))
    b = load_dataset("synthetic", n_train=4, n_val=2, shape=(8, 16, 16))
    ids = a.ids()
    assert [a.fingerprint(i) for i in ids] == [b.fingerprint(i) for i in ids]
    assert len({a.fingerprint(i) for i in ids}) == len(ids)
    check = a.verify(ids[1])
    assert check.fingerprint == a.fingerprint(ids[1]) and a.verify(ids[1]) is check
    assert check.truth_fingerprint == b.truth_fingerprint(ids[1])


# -- values and annotations -----------------------------------------------------------


def test_an_absurd_value_names_the_file_and_max_abs_raises_the_limit(tmp_path):
    root = make(tmp_path / "data")
    bad = image(2)
    bad[0, 0, 0] = 1e30
    save(root / "images" / "c2.nii", bad)
    ds = open_folder(tmp_path)
    with pytest.raises(
        DatasetError,
        match=r"^folder: images/c2.nii: 1 voxels with \|value\| > 1e\+06 \(max 1e\+30\) "
        r"after preprocessing; fix the file or raise --dataset-option max_abs=",
    ):
        ds["c2"]
    assert not (ds.cache_path / "c2.json").exists()  # never cached
    assert open_folder(tmp_path, max_abs=1e31)["c2"].image.max() == pytest.approx(1e30)


def test_a_negative_with_a_marked_mask_is_an_error_naming_the_mask(tmp_path):
    make(tmp_path / "data", masks={0: lesion()})
    with pytest.raises(
        DatasetError,
        match=r"^folder: c0 is labelled 0 \(negative\) but its mask masks/c0.nii marks 4 voxels",
    ):
        open_folder(tmp_path)["c0"]


def test_a_positive_with_an_empty_mask_is_reported_not_refused(tmp_path):
    make(tmp_path / "data", masks={3: np.zeros(SHAPE, np.uint8)})
    ds = open_folder(tmp_path)
    assert ds["c3"].mask.sum() == 0
    assert ds.verify("c3").empty_truth and not ds.verify("c1").empty_truth


def test_a_non_binary_mask_needs_mask_threshold(tmp_path):
    soft = np.zeros(SHAPE, np.float32)
    soft[1:3, 1:3, 1] = 0.3
    soft[1:2, 1:3, 2] = 1.0
    make(tmp_path / "data", masks={1: soft})
    with pytest.raises(DatasetError, match=r"masks/c1.nii: mask has values other than 0 and 1"):
        open_folder(tmp_path)["c1"]
    with pytest.raises(DatasetError, match="--dataset-option mask_threshold=T"):
        open_folder(tmp_path)["c1"]
    for threshold in (0.5, 0.2):
        mask = open_folder(tmp_path, mask_threshold=threshold)["c1"].mask
        assert np.array_equal(mask, oriented(soft) > threshold)
    assert open_folder(tmp_path, mask_threshold=0.2)["c1"].mask.sum() == 6


# -- the command line -----------------------------------------------------------------


def inspect(tmp_path, *extra):
    root = tmp_path / "data"
    cache = ["--dataset-option", f"cache_dir={tmp_path / 'cache'}"]
    return main(["inspect", "--dataset", "folder", "--root", str(root), *cache, *extra])


def test_inspect_check_lists_every_bad_file_once_and_exits_2(tmp_path, capsys):
    root = make(tmp_path / "data", masks={0: lesion()})
    bad = image(2)
    bad[1, 1, 1] = np.float32(-3e7)
    save(root / "images" / "c2.nii", bad)
    assert inspect(tmp_path, "--check") == 2
    out, err = capsys.readouterr()
    assert (out + err).count("images/c2.nii") == 1 and (out + err).count("masks/c0.nii") == 1
    assert "checked 4 volumes" in out and "2 volumes with a problem" in out
    assert "Traceback" not in out + err and err.splitlines()[-1].startswith("error: 2 of 4 volumes")


def test_inspect_check_on_a_good_set_counts_the_empty_positives(tmp_path, capsys):
    make(tmp_path / "data", masks={3: np.zeros(SHAPE, np.uint8)})
    assert inspect(tmp_path, "--check") == 0
    out = capsys.readouterr().out
    assert "checked 4 volumes" in out
    assert "1 positives with an empty annotation, excluded from the localisation scores: c3" in out
    assert inspect(tmp_path) == 0  # without --check: the header summary, no check report
    assert "checked" not in capsys.readouterr().out


def test_a_dataset_option_of_the_wrong_type_is_one_error_line(capsys):
    assert main(["inspect", "--dataset", "synthetic", "--dataset-option", "n_val=abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: synthetic: option n_val: cannot read 'abc' as int")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_dataset_options_are_converted_to_the_annotated_types(tmp_path):
    from datasets.base import check_options
    from datasets.folder import Folder
    from datasets.synthetic import Synthetic

    options = check_options(Synthetic, {"n_val": "3", "shape": "8,16,16", "max_abs": "1e7"})
    assert options == {"n_val": 3, "shape": (8, 16, 16), "max_abs": 1e7}
    assert check_options(Folder, {"mask_threshold": "none", "zscore": "yes"}) == {
        "mask_threshold": None,
        "zscore": True,
    }
    with pytest.raises(DatasetError, match="folder: option zscore: expected true/false"):
        check_options(Folder, {"zscore": "maybe"})
