"""A wheel installed away from the checkout has every file the packages read at run time.

The wheel is built offline (``pip wheel --no-build-isolation``, setuptools from the test
extra) from a copy of the sources, so that the checkout gains no ``build/`` folder, and
installed with ``pip install --target``; Python then runs in another folder with only that
install on ``PYTHONPATH`` ahead of the environment's packages. About 10 s: slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "datasets", "foundation")
pytestmark = pytest.mark.slow

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]

# Write a leaderboard page for an AutoPET row: it needs the paper's numbers (Table 7).
LEADERBOARD = """
import sys, benchmark, pandas as pd
from benchmark.publish.leaderboard import write_leaderboards
print(benchmark.__file__)
row = dict(dataset="autopet", method="layercam@2", precision=0.5, recall=0.4, f1=0.45,
           dice=0.3, balanced_accuracy=0.7)
write_leaderboards(pd.DataFrame([row]), sys.argv[1])
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the sources (no network)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    build = [*PIP, "wheel", "--no-deps", "--no-index", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp / "dist"), str(source)], check=True, cwd=tmp)
    (built,) = (tmp / "dist").glob("*.whl")
    return built


def test_the_wheel_holds_every_file_of_the_packages(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    ours = {
        path.relative_to(REPO).as_posix()
        for package in PACKAGES
        for path in (REPO / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "benchmark/data/published_results.csv" in ours
    assert ours <= shipped, sorted(ours - shipped)


def test_an_installed_wheel_writes_a_leaderboard_with_the_papers_numbers(wheel, tmp_path):
    site = tmp_path / "site"
    install = [*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # neither the checkout nor the install
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TONNO_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", LEADERBOARD, "pages"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == site / "benchmark" / "__init__.py"
    row = pd.read_csv(elsewhere / "pages" / "autopet.csv").set_index("method").loc["layercam@2"]
    assert (row.paper_f1, row.paper_dice, row.paper_balanced_accuracy) == (0.35, 0.31, 0.80)

    ls = subprocess.run(
        [sys.executable, "-m", "benchmark", "ls", "methods", "tonno"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert (ls.returncode, ls.stdout) == (0, "tonno\n"), ls.stderr
