"""Processes that share a cache, a run folder and a leaderboards folder: job arrays,
``--shard`` jobs, runs started side by side. Each keeps every row; none takes what another
is writing for damage; a classifier is trained once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import benchmark.io
from benchmark.io import file_lock

REPO = Path(__file__).resolve().parents[1]

COUNT = """\
import sys, time
from pathlib import Path
from benchmark.io import file_lock
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

    monkeypatch.setattr(benchmark.io.fcntl, "flock", unsupported)
    monkeypatch.setattr(benchmark.io, "_warned", False)
    ran = []
    with caplog.at_level(logging.WARNING, logger="benchmark.io"):
        for name in ("a", "b"):
            with file_lock(tmp_path / f"{name}.lock"):
                ran.append(name)
    assert ran == ["a", "b"]
    assert caplog.text.count("concurrent runs here are not safe") == 1
    assert "a.lock (" in caplog.text and "No locks available" in caplog.text
