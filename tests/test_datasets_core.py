"""The dataset package: registry, patient-level split, on-disk cache, atomic writes, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import datasets
from benchmark.cli import main
from datasets import DatasetError, Record, Volume, VolumeDataset, list_datasets, load_dataset
from datasets.base import assign_splits, safe_stem, val_target
from foundation.io import atomic_save_npy, atomic_write, cache_root

REPO = Path(__file__).resolve().parents[1]


def test_import_datasets_is_this_repository():
    assert Path(datasets.__file__).resolve() == REPO / "datasets" / "__init__.py"


def test_every_adapter_is_registered():
    names = ["autopet", "brain", "duke", "folder", "mosmed", "synthetic", "synthetic_pet"]
    assert list_datasets() == names
    assert list_datasets("m*") == ["mosmed"]


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(LookupError, match="did you mean mosmed"):
        load_dataset("mosmd")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("TONNO_CACHE")
    assert cache_root() == Path.home() / ".cache" / "tonno-benchmark"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "a.npy"
    atomic_save_npy(target, np.arange(5))
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError), atomic_write(target) as file:
        file.write(b"garbage")
        raise RuntimeError("killed")
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]  # the old file is intact
    assert os.listdir(target.parent) == ["a.npy"]  # and no temporary file is left


def _records(n_patients: int, studies: int = 2) -> list[Record]:
    return [
        Record(f"p{p}_s{s}", label=p % 2, patient=f"p{p}", annotated=False)
        for p in range(n_patients)
        for s in range(studies)
    ]


def test_split_is_patient_level_stratified_and_seeded():
    records = assign_splits(_records(40), val_fraction=0.25, seed=3)
    by_patient: dict[str, set[str]] = {}
    for r in records:
        by_patient.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())  # a patient never straddles
    val = [r for r in records if r.split == "val"]
    assert len(val) == 20 and sum(r.label for r in val) == 10  # 5 + 5 patients, 2 studies each
    again = assign_splits(_records(40), val_fraction=0.25, seed=3)
    assert [r.split for r in again] == [r.split for r in records]
    other = assign_splits(_records(40), val_fraction=0.25, seed=4)
    assert [r.split for r in other] != [r.split for r in records]


def test_with_one_sample_per_patient_val_is_the_head_of_each_shuffled_stratum():
    """The split of one-sample patients: per label, the first round(f n) of the patients
    (naturally sorted) in the seed's permutation; the negatives' permutation is drawn first."""
    records = [Record(f"s{k}", int(k % 3 == 0), f"s{k}", annotated=False) for k in range(30)]
    assign_splits(records, val_fraction=0.3, seed=7)
    rng = np.random.default_rng(7)
    expected = set()
    for label in (0, 1):
        names = sorted((r.id for r in records if r.label == label), key=lambda i: int(i[1:]))
        expected |= {names[k] for k in rng.permutation(len(names))[: round(0.3 * len(names))]}
    assert {r.id for r in records if r.split == "val"} == expected and len(expected) == 3 + 6


def test_val_target_takes_a_fraction_or_a_count_of_a_release():
    assert val_target(0.25, 10) == 2 and val_target(0.25, 30) == 8  # round(7.5): even
    assert val_target((57, 501), 501) == 57  # Table 3's count on the release
    assert val_target((57, 501), 1000) == 57  # never more on a larger one
    assert val_target((57, 501), 250) == 28  # the same share of a smaller one
    assert val_target((55, 512), 513) == 55


def test_per_class_shares_count_samples_and_keep_compositions_proportional():
    """Patients of 1 or 2 studies: each composition gets its share, singles settle the
    sample counts exactly."""
    records = [
        Record(f"p{p}_s{s}", label, f"p{p}", annotated=False)
        for p, labels in enumerate([(1,)] * 40 + [(1, 1)] * 20 + [(1, 0)] * 10 + [(0,)] * 30)
        for s, label in enumerate(labels)
    ]  # 90 positive, 40 negative samples
    assign_splits(records, {1: 0.2, 0: 0.25}, seed=0)
    val = [r for r in records if r.split == "val"]
    assert (sum(r.label for r in val), sum(1 - r.label for r in val)) == (18, 10)
    chosen = {r.patient for r in val}
    kinds = [sum(1 for p in range(a, b) if f"p{p}" in chosen) for a, b in ((40, 60), (60, 70))]
    assert kinds == [4, 2]  # (2, 0): 20 x 0.2; (1, 1): 10 x (0.2 + 0.25) / 2 = 2.25


def test_compositions_that_cannot_give_the_counts_give_the_closest(caplog):
    caplog.set_level("INFO")
    records = [  # every patient has two positive studies: 5 positives cannot be in val
        Record(f"p{p}_s{s}", 1 if p < 10 else 0, f"p{p}", annotated=False)
        for p in range(20)
        for s in range(2 if p < 10 else 1)
    ]
    assign_splits(records, {1: (5, 20), 0: 0.2}, seed=0)
    val = [r for r in records if r.split == "val"]
    assert sum(1 - r.label for r in val) == 2 and sum(r.label for r in val) in (4, 6)
    assert "asked 5 + 2" in caplog.text


def test_fixed_splits_are_kept_and_taken_by_the_whole_patient():
    records = _records(6)
    records[0].split = "val"  # p0_s0 fixed: p0_s1 follows
    assign_splits(records, val_fraction=0.0, seed=0)
    assert records[1].split == "val"
    assert {r.split for r in records[2:]} == {"train"}
    records = _records(2)
    records[0].split, records[1].split = "val", "train"
    with pytest.raises(DatasetError, match="both train and val"):
        assign_splits(records, 0.1, 0)


def test_safe_stem_keeps_plain_ids_and_disambiguates_others():
    assert safe_stem("study_0001") == "study_0001"
    a, b = safe_stem("PETCT_1/a b"), safe_stem("PETCT_1/a_b")
    assert a != b and "/" not in a and " " not in a


class Tiny(VolumeDataset):
    """A file-free adapter counting its loads, to test the base class."""

    name = "tiny"
    needs_root = False

    def __init__(self, labels=(0, 1, 0, 1), **kw):
        self.labels, self.loads = labels, 0
        super().__init__(**kw)

    def _scan(self):
        return [Record(f"t{i}", lab, f"t{i}", True) for i, lab in enumerate(self.labels)]

    def _load(self, record):
        self.loads += 1
        image = np.full((1, 2, 3, 4), float(record.id[1:]), dtype=np.float32)
        mask = np.zeros((2, 3, 4), bool)
        mask[1, 2, 3] = True
        return Volume(
            record.id, image, record.label, mask, [(1, 2, 2, 3, 3, 4)], np.eye(4), (1, 2, 3)
        )


def test_second_pass_reads_the_memory_mapped_cache(tmp_path):
    first = Tiny(cache_dir=tmp_path, val_fraction=0)
    volume = first["t3"]
    assert first.loads == 1 and isinstance(volume.image, np.memmap)
    second = Tiny(cache_dir=tmp_path, val_fraction=0)
    again = second[3]  # an int indexes ids()
    assert second.loads == 0
    assert again.id == "t3" and again.label == 1 and np.all(again.image == 3.0)
    assert again.mask.dtype == bool and again.mask.sum() == 1 and again.mask[1, 2, 3]
    assert again.boxes == [(1, 2, 2, 3, 3, 4)] and again.spacing == (1, 2, 3)
    assert not again.image.flags.writeable
    assert second.geometry("t3") == ((2, 3, 4), (1, 2, 3))


def test_cache_key_changes_with_the_options(tmp_path):
    a = Tiny(cache_dir=tmp_path, val_fraction=0)
    b = Tiny(cache_dir=tmp_path, val_fraction=0)
    assert a.cache_path == b.cache_path
    assert a.cache_path.parent == tmp_path / "tiny"
    assert a.cache_path.name.startswith(f"{a.version}-")


def test_a_data_set_without_one_class_fails_at_construction(tmp_path):
    with pytest.raises(DatasetError, match="tiny: the data set has no positive samples"):
        Tiny(labels=(0, 0, 0), cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="split 'val' has no negative samples"):
        Tiny(labels=(0, 1, 1, 1), cache_dir=tmp_path, val_fraction=0.5, seed=0)


def test_ids_counts_and_errors(tmp_path):
    ds = Tiny(cache_dir=tmp_path, val_fraction=0.5)
    assert (
        sorted(ds.ids("train") + ds.ids("val")) == ds.ids() == list(ds) == ["t0", "t1", "t2", "t3"]
    )
    assert ds.counts()["all"] == {"positive": 2, "negative": 2, "annotated": 4, "patients": 4}
    assert ds.counts()["val"]["positive"] == 1 and ds.counts()["val"]["negative"] == 1
    with pytest.raises(ValueError, match="split must be one of"):
        ds.ids("test")
    with pytest.raises(KeyError, match="no sample 'x'"):
        ds.label("x")
    with pytest.raises(DatasetError, match="val_fraction"):
        Tiny(cache_dir=tmp_path, val_fraction=1.0)


def test_file_adapters_need_an_existing_root(tmp_path):
    with pytest.raises(DatasetError, match="mosmed: no root given"):
        load_dataset("mosmed")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("autopet", root=tmp_path / "nowhere")


def test_inspect_prints_the_table_of_counts_and_shapes(capsys):
    options = ["--dataset-option", "n_train=6", "--dataset-option", "n_val=4"]
    options += ["--dataset-option", "shape=[8, 16, 16]"]
    assert main(["inspect", "--dataset", "synthetic", *options]) == 0
    out = capsys.readouterr().out
    assert "| train   |          3 |          3 |" in out
    assert "| val     |          2 |          2 |" in out
    assert "|   8 |  16 |  16 |" in out


def test_inspect_reports_bad_input_as_one_line(capsys, tmp_path):
    assert main(["inspect", "--dataset", "mosmed", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mosmed: no studies under") and "Traceback" not in err


def test_inspect_names_unknown_options(capsys):
    assert main(["inspect", "--dataset", "synthetic", "--dataset-option", "size=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: synthetic: unknown option(s) size; options: shape, n_train")


def test_atomic_writes_get_the_permissions_of_an_ordinary_file(tmp_path):
    import os

    from foundation.io import atomic_save_json

    atomic_save_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "b.json").write_text("{}")
    assert os.stat(tmp_path / "a.json").st_mode == os.stat(tmp_path / "b.json").st_mode


def test_a_sealed_file_reads_back_its_content_and_refuses_any_other(tmp_path):
    import hashlib
    import json

    from foundation.seal import read_sealed, save_sealed

    path = tmp_path / "a.json"
    save_sealed(path, {"b": [1.5, None], 10: "x", 9: (True,)})
    content = {"b": [1.5, None], "10": "x", "9": [True]}  # as JSON reads it back
    assert read_sealed(path) == content
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    assert json.loads(path.read_text())["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    path.write_text(path.read_text().replace("1.5", "1.4"))
    with pytest.raises(ValueError, match=f"^{path} does not match the sha256"):
        read_sealed(path)
    path.write_text('{"b": [1.5, null]}')
    with pytest.raises(ValueError, match="is not sealed"):
        read_sealed(path)


def test_a_negative_with_a_marked_mask_is_refused_by_the_base_class(tmp_path):
    ds = Tiny(cache_dir=tmp_path, val_fraction=0)
    with pytest.raises(
        DatasetError, match=r"^tiny: t0 is labelled 0 \(negative\) but its mask marks 1 voxels$"
    ):
        ds["t0"]
    assert not list(ds.cache_path.glob("t0.*"))  # nothing cached
    assert ds.verify("t1").empty_truth is False and ds.fingerprint("t1") != ds.fingerprint("t3")
