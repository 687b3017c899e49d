"""What an evaluation writes beside the leaderboards: ``results.csv`` (with intervals and
deltas), ``folds.csv``, ``per_case.csv`` and ``summary.json``; and what a run folder's
tables keep of the earlier runs into it (:func:`keep_earlier`), read and written under
the folder's :func:`tables_lock` so that runs into one folder side by side keep every row.

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
from benchmark.protocol.evaluation import EvaluationResult
from benchmark.publish.leaderboard import context_mismatch, merge_rows, read_cases, read_rows
from benchmark.publish.rows import KEY
from foundation.io import atomic_save_json, atomic_write, file_lock

# A run folder's tables by name, the rows of each keyed by ``KEY`` (the timings, summed
# over classifiers, by ``method`` alone).
RUN_TABLES = {
    "results": "results.csv",
    "folds": "folds.csv",
    "cases": "per_case.csv",
    "timings": "timings.csv",
}


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
    (:meth:`~benchmark.protocol.evaluation.EvaluationResult.cases`)."""
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
    tables = {"results": results, "folds": folds, "cases": cases}
    paths = [write_csv(table, out_dir / RUN_TABLES[name]) for name, table in tables.items()]
    atomic_save_json(out_dir / "summary.json", summary)
    return [*paths, out_dir / "summary.json"]


def tables_lock(out_dir: str | Path):
    """The lock of a run folder's tables: held from reading them to writing them."""
    return file_lock(Path(out_dir) / "tables.lock")


def read_tables(out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The :data:`RUN_TABLES` an earlier run left in ``out_dir``; {} without its
    ``results.csv``. A damaged file raises a ValueError that names it."""
    out_dir = Path(out_dir)
    if not (out_dir / RUN_TABLES["results"]).is_file():
        return {}
    tables = {"results": read_rows(out_dir / RUN_TABLES["results"])}
    tables["cases"] = read_cases(out_dir / RUN_TABLES["cases"])
    for name in ("folds", "timings"):
        path = out_dir / RUN_TABLES[name]
        try:
            tables[name] = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=KEY)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a {name} CSV ({type(error).__name__})") from None
    return tables


def keep_earlier(
    earlier: Mapping[str, pd.DataFrame], new: Mapping[str, pd.DataFrame]
) -> tuple[dict[str, pd.DataFrame], str | None]:
    """(tables, why the earlier rows were dropped): ``new``'s :data:`RUN_TABLES` with the
    ``earlier`` rows of the methods ``new`` did not compute, when both rest on the same
    data, protocol and heatmap source per classifier (:func:`context_mismatch`); rows
    ``new`` recomputed replace their earlier versions."""
    new = dict(new)
    if not earlier or earlier["results"].empty:
        return new, None
    reason = context_mismatch(earlier["results"], new["results"])
    if reason is not None:
        return new, reason
    tables = {k: merge_rows(earlier[k], new[k]) for k in ("results", "folds", "cases")}
    timings = earlier["timings"]
    timings = timings[~timings.method.isin(new["timings"].method)]
    tables["timings"] = pd.concat([timings, new["timings"]], ignore_index=True)
    return tables, None
