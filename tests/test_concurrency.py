"""Processes that share a cache, a run folder and a leaderboards folder: job arrays,
``--shard`` jobs, runs started side by side. Each keeps every row; none takes what another
is writing for damage; a classifier is trained once."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_dataset_trust import lesion, make, open_folder, oriented
from test_run_trust import CONFIG, write_folder

import foundation.io
from benchmark.cli import main
from benchmark.protocol.evaluation import GRID_LEVELS
from benchmark.run.cache import HeatmapStore
from datasets.cache import CacheEntry
from foundation.io import file_lock

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster
REPO = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")  # the children run this module's functions

COUNT = """\
import sys, time
from pathlib import Path
from foundation.io import file_lock
counter = Path(sys.argv[1])
for _ in range(25):
    with file_lock(counter.with_suffix(".lock")):
        value = int(counter.read_text())
        time.sleep(0.002)  # read, modify, write: another process in between loses a count
        counter.write_text(str(value + 1))
"""


def test_a_file_lock_makes_processes_take_turns(tmp_path):
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen([sys.executable, "-c", COUNT, str(counter)], env=env) for _ in range(4)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0] * 4
    assert counter.read_text() == "100"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter.txt"]  # no lock file left


def test_a_file_lock_nests_in_one_process_and_is_removed_after(tmp_path):
    lock = tmp_path / "sub" / "a.lock"
    with file_lock(lock):
        with file_lock(tmp_path / "sub" / ".." / "sub" / "a.lock"):  # the same lock
            assert lock.exists()
        assert lock.exists()
    assert not lock.exists()


def test_without_flock_the_block_runs_unlocked_after_one_warning(tmp_path, monkeypatch, caplog):
    import errno

    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(foundation.io.fcntl, "flock", unsupported)
    monkeypatch.setattr(foundation.io, "_warned", False)
    ran = []
    with caplog.at_level(logging.WARNING, logger="foundation.io"):
        for name in ("a", "b"):
            with file_lock(tmp_path / f"{name}.lock"):
                ran.append(name)
    assert ran == ["a", "b"]
    assert caplog.text.count("concurrent runs here are not safe") == 1
    assert "a.lock (" in caplog.text and "No locks available" in caplog.text


def hold_while(lock, between, after, ready) -> None:
    """In a child process: hold ``lock``, ``between()``, say so, wait, ``after()``."""
    with lock:
        between()
        ready.set()
        time.sleep(1.0)
        after()


def test_a_dataset_entry_being_written_is_waited_for_not_deleted(tmp_path, caplog):
    make(tmp_path / "data")
    open_folder(tmp_path)["c1"]
    entry = CacheEntry(open_folder(tmp_path).cache_path / "c1")
    mask, meta = entry.array_path("mask"), entry.json_path
    data, built = mask.read_bytes(), meta.stat().st_mtime_ns
    ready = FORK.Event()
    writer = FORK.Process(
        target=hold_while,  # another process between the entry's files: the mask not there yet
        args=(entry.lock(), mask.unlink, lambda: mask.write_bytes(data), ready),
    )
    writer.start()
    assert ready.wait(timeout=30)
    caplog.set_level(logging.INFO, logger="datasets")
    volume = open_folder(tmp_path)["c1"]
    writer.join(timeout=30)
    assert writer.exitcode == 0
    assert np.array_equal(volume.mask, oriented(lesion()) > 0)
    assert "damaged" not in caplog.text and meta.stat().st_mtime_ns == built  # not rebuilt


def test_a_heatmap_entry_being_written_is_waited_for_not_deleted(tmp_path, caplog):
    store = HeatmapStore(tmp_path)
    old, new = np.zeros((2, 3, 4), np.float32), np.ones((2, 3, 4), np.float32)

    def record(sha: str) -> dict:
        return {"sketch": [0.0] * (GRID_LEVELS + 1), "max": 1.0, "seconds": 0.0, "heatmap": sha}

    store.save_record("tonno", "v", "img", record(store.save_heatmap("tonno", "v", "img", old)))
    ready = FORK.Event()
    shas = FORK.Queue()
    writer = FORK.Process(  # the new heatmap written, its record not yet
        target=hold_while,
        args=(
            store.lock("tonno", "v", "img"),
            lambda: shas.put(store.save_heatmap("tonno", "v", "img", new)),
            lambda: store.save_record("tonno", "v", "img", record(shas.get())),
            ready,
        ),
    )
    writer.start()
    assert ready.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="benchmark.run.cache"):
        heatmap = store.heatmap("tonno", "v", "img")
    writer.join(timeout=30)
    assert writer.exitcode == 0
    assert np.array_equal(heatmap, new) and "damaged" not in caplog.text


# --- whole runs side by side: subprocesses on one fresh cache and one leaderboards folder ---


def run_args(root: Path, *extra: str) -> list[str]:
    return [
        "run", "--dataset", "folder", "--root", str(root / "data"), "--preset", "quick",
        "--device", "cpu", "--config", str(root / "tiny.yaml"), "--out", str(root / "run"),
        "--leaderboards", str(root / "leaderboards"), *extra,
    ]  # fmt: skip


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """A tiny ``folder`` data set, its settings, and a fresh cache for every process."""
    write_folder(tmp_path / "data")
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    monkeypatch.setenv("TONNO_CACHE", str(tmp_path / "cache"))
    return tmp_path


def side_by_side(commands: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """``python -m benchmark COMMAND`` for each command, all started at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmark", *command],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    done = []
    for process, command in zip(started, commands, strict=True):
        out, err = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return done


@pytest.mark.slow  # two runs at once, training included: 15 s on a busy 2-core CPU (load 5)
def test_two_runs_side_by_side_keep_every_row_and_train_once(shared):
    methods = ["tonno", "layercam@2"]
    done = side_by_side([run_args(shared, "--methods", m) for m in methods])
    for process in done:
        assert process.returncode == 0, process.stderr
        assert "damaged" not in process.stderr, process.stderr
    assert sum("is finished (step 8): reusing it" in p.stderr for p in done) == 1
    assert sorted(pd.read_csv(shared / "run" / "results.csv").method) == sorted(methods)
    page = pd.read_csv(shared / "leaderboards" / "folder.csv")
    assert sorted(page.method) == sorted(methods)
    cases = pd.read_csv(shared / "leaderboards" / "folder.per_case.csv")
    assert len(cases) == len(methods) * 8  # every validation volume of each
    assert not list(shared.rglob("*.lock"))


@pytest.mark.slow  # a training, four shards at once, a merge: 31 s on a busy 2-core CPU
def test_four_shards_side_by_side_then_a_merge_score_every_volume(shared):
    train = ["train", *run_args(shared)[1:13]]  # data set, preset, device, config, out
    assert main(train) == 0
    methods = "tonno,layercam@1,intensity"
    shards = [run_args(shared, "--methods", methods, "--shard", f"{i}/4") for i in (1, 2, 3, 4)]
    for i, process in enumerate(side_by_side(shards), start=1):
        assert process.returncode == 0, process.stderr
        assert "damaged" not in process.stderr, process.stderr
        assert f"shard {i}/4 done" in process.stdout
    records = list((shared / "cache").glob("heatmaps/folder/*/*/*.json"))
    assert len(records) == 3 * 8
    assert main(run_args(shared, "--methods", methods, "--merge")) == 0
    cases = pd.read_csv(shared / "run" / "per_case.csv")
    assert sorted(cases.method.unique()) == sorted(methods.split(","))
    assert cases.groupby("method").volume.nunique().tolist() == [8, 8, 8]
