"""What an evaluation writes beside the leaderboards: ``results.csv`` (with intervals and
deltas), ``folds.csv``, ``per_case.csv`` and ``summary.json``.

``summary.json`` follows the shape medical-imaging users know from nnU-Net and Grand
Challenge: ``metric_per_case`` (one entry per validation volume and method), then the
aggregates, then everything that produced them (settings, classifier, provenance).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark import __version__
from benchmark.evaluation import EvaluationResult
from benchmark.io import atomic_save_json, atomic_write
from benchmark.leaderboard import KEY


def results_tables(
    dataset: str, model: str, evaluations: Mapping[str, EvaluationResult]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, folds): one leaderboard row per spec (fold means and spreads), and one
    row per spec and fold (tau, tau', metrics, sample counts)."""
    ident = {"dataset": dataset, "model": model}
    results = pd.DataFrame(
        [{**ident, "method": spec, **e.row()} for spec, e in evaluations.items()]
    )
    folds = pd.concat(
        [e.folds.assign(**ident, method=spec) for spec, e in evaluations.items()],
        ignore_index=True,
    )
    return results, folds[KEY + [c for c in folds.columns if c not in KEY]]


def cases_table(
    dataset: str,
    model: str,
    evaluations: Mapping[str, EvaluationResult],
    volume_ids: Sequence[str],
) -> pd.DataFrame:
    """One row per (spec, validation volume): label, heatmap maximum, folds that scored
    it, the fraction classified right, and each metric averaged over those folds
    (:meth:`~benchmark.evaluation.EvaluationResult.cases`)."""
    parts = [
        e.cases().assign(dataset=dataset, model=model, method=spec, volume=list(volume_ids))
        for spec, e in evaluations.items()
    ]
    cases = pd.concat(parts, ignore_index=True)
    first = [*KEY, "volume"]
    return cases[first + [c for c in cases.columns if c not in first]]


def code_version() -> str:
    """The package version, with the git commit (``+dirty`` when changed) of a checkout.

    Installed from a wheel, the package is not in a checkout of its own: the version alone
    (never the commit of a repository that happens to hold the environment).
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__} ({commit})" if commit else __version__


def provenance(device: str | None = None) -> dict[str, Any]:
    """What produced a result besides its settings: code, libraries, machine, threads."""
    versions = {}
    for package in ("torch", "timm", "numpy", "scipy", "grad-cam"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    torch = sys.modules.get("torch")  # threads only when torch is in use
    return {
        "code": code_version(),
        "python": platform.python_version(),
        "packages": versions,
        "device": device,
        "threads": torch.get_num_threads() if torch is not None else None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def provenance_columns(
    environment: Mapping[str, Any], preset: str | None, seeds: Sequence[int]
) -> dict[str, Any]:
    """The columns of ``results.csv`` that say what produced each row."""
    packages = environment["packages"]
    return {
        "code": environment["code"],
        "torch": packages.get("torch"),
        "timm": packages.get("timm"),
        "device": environment["device"],
        "threads": environment["threads"],
        "preset": preset,
        "seeds": " ".join(str(s) for s in seeds),
    }


def environment_note(
    environment: Mapping[str, Any], preset: str | None, seeds: Sequence[int]
) -> str:
    """One line for the pages: what produced this run's rows."""
    packages = environment["packages"]
    threads = environment["threads"]
    return (
        f"Produced by benchmark {environment['code']}, torch {packages.get('torch')}, "
        f"timm {packages.get('timm')} on {environment['device']}"
        + (f" with {threads} threads" if threads else "")
        + f"; preset `{preset}`; classifier seeds {', '.join(str(s) for s in seeds)}."
    )


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and NA to None, numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA:
        return None
    return value


def summary_document(
    results: pd.DataFrame,
    cases: pd.DataFrame,
    folds: pd.DataFrame,
    settings: Mapping[str, Any],
    classifiers: Sequence[Mapping[str, Any]],
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """``summary.json``: per-case entries, aggregates per method (every results column,
    and tau / tau' per fold), then the settings, classifiers (one per seed; none for
    external heatmaps) and the environment (:func:`provenance`) behind them."""
    entry = [c for c in (*KEY[1:], "seed", "volume", "label", "max") if c in cases]
    metrics = [c for c in cases.columns if c not in (*entry, "dataset")]
    per_case = [
        {**{c: row[c] for c in entry}, "metrics": {m: row[m] for m in metrics}}
        for row in cases.to_dict("records")
    ]
    aggregates = {}
    for row in results.to_dict("records"):
        spec_folds = folds[(folds.model == row["model"]) & (folds.method == row["method"])]
        aggregates[f"{row['model']}/{row['method']}"] = {
            **{k: v for k, v in row.items() if k not in ("dataset",)},
            "folds": spec_folds[
                [c for c in ("seed", "fold", "tau", "tau_low") if c in folds]
            ].to_dict("records"),
        }
    document = {
        "dataset": str(results.dataset.iloc[0]) if len(results) else None,
        "metric_per_case": per_case,
        "aggregates": aggregates,
        "settings": dict(settings),
        "classifiers": [dict(c) for c in classifiers],
        "provenance": dict(environment),
    }
    return _plain(document)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path, "w") as file:
        frame.to_csv(file, index=False)
    return path


def write_reports(
    out_dir: str | Path,
    results: pd.DataFrame,
    folds: pd.DataFrame,
    cases: pd.DataFrame,
    summary: Mapping[str, Any],
) -> list[Path]:
    """``results.csv``, ``folds.csv``, ``per_case.csv`` and ``summary.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [
        write_csv(results, out_dir / "results.csv"),
        write_csv(folds, out_dir / "folds.csv"),
        write_csv(cases, out_dir / "per_case.csv"),
    ]
    atomic_save_json(out_dir / "summary.json", summary)
    return [*paths, out_dir / "summary.json"]
