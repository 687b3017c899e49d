"""One path from :func:`~benchmark.protocol.assess.assess`'s numbers to the files: an
evaluation's tables (:func:`evaluation_tables`), their intervals, the leaderboard pages and
the reports beside them (:func:`publish`).

``run`` and ``evaluate`` both go through it and differ only in what they pass: a run its
folder's tables (its seeds combined, the earlier runs' rows kept, under the folder's locks
that it holds), with notes, a warning and Figure 6 strips for the pages; ``evaluate`` one
external row, whose reports hold the row as its page shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.protocol.evaluation import EvaluationResult
from benchmark.publish.leaderboard import Written, write_leaderboards
from benchmark.publish.report import (
    RUN_TABLES,
    cases_table,
    results_tables,
    summary_document,
    write_csv,
    write_reports,
)
from benchmark.publish.rows import Intervals, with_intervals


def evaluation_tables(
    dataset: str,
    model: str,
    evaluations: Mapping[str, EvaluationResult],
    volume_ids: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(results, folds, cases) of one model's evaluations (:func:`results_tables`,
    :func:`cases_table`)."""
    results, folds = results_tables(dataset, model, evaluations)
    return results, folds, cases_table(dataset, model, evaluations, volume_ids)


@dataclass(frozen=True)
class Reports:
    """Where the reports go and what ``summary.json`` says besides the tables
    (:func:`~benchmark.publish.report.summary_document`); ``environment``, or the function
    that reads it when the reports are written (``evaluate``'s, after its pages: the code's
    state in :func:`~benchmark.publish.report.provenance` may change with them); ``tables``:
    more of the folder's :data:`~benchmark.publish.report.RUN_TABLES` (a run's timings),
    written after them."""

    out_dir: Path
    settings: Mapping[str, Any]
    classifiers: Sequence[Mapping[str, Any]] = ()
    environment: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(default_factory=dict)
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class Published:
    """What :func:`publish` wrote: the rows of the reports (with their intervals), the
    pages, and the reports' files."""

    results: pd.DataFrame
    pages: Written
    reports: list[Path]


def publish(
    results: pd.DataFrame,
    folds: pd.DataFrame,
    cases: pd.DataFrame,
    reports: Reports,
    leaderboards: str | Path,
    intervals: Intervals,
    *,
    fallback_dir: str | Path,
    from_page: bool = False,
    notes: Sequence[str] = (),
    warning: str | None = None,
    strips: Callable[[pd.DataFrame], Mapping[str, bytes] | None] | None = None,
) -> Published:
    """The reports (``results.csv``, ``folds.csv``, ``per_case.csv``, ``summary.json`` and
    ``reports.tables``) and the leaderboard pages (:func:`write_leaderboards`, with
    ``notes``, ``warning`` and the Figure 6 ``strips(rows)`` of the rows it is given) of
    ``results`` and their ``folds`` and ``cases``.

    In one of two orders. By default (a run) the reports first, ``results`` with intervals
    over the volumes of ``cases`` (:func:`with_intervals`), then the pages from those rows.
    ``from_page`` (``evaluate``, one dataset): the pages first, and the reports hold
    ``results``' rows as the page shows them, their intervals and deltas computed among the
    page's rows.
    """

    def write_pages(rows: pd.DataFrame) -> Written:
        figure = strips(rows) if strips is not None else None
        return write_leaderboards(
            rows,
            leaderboards,
            strips=figure,
            notes=notes,
            warning=warning,
            fallback_dir=fallback_dir,
            cases=cases,
            intervals=intervals,
        )

    pages = None
    if from_page:
        pages = write_pages(results)
        page = pages.tables[str(results.dataset.iloc[0])]
        ours = pd.MultiIndex.from_frame(results[["model", "method"]])
        shown = pd.MultiIndex.from_frame(page[["model", "method"]]).isin(ours)
        results = page[shown].reset_index(drop=True)
    else:
        results = with_intervals(results, cases, intervals)
    out_dir = Path(reports.out_dir)
    environment = reports.environment
    environment = environment() if callable(environment) else environment
    summary = summary_document(
        results, cases, folds, reports.settings, reports.classifiers, environment
    )
    written = write_reports(out_dir, results, folds, cases, summary)
    for name, table in reports.tables.items():
        written.append(write_csv(table, out_dir / RUN_TABLES[name]))
    if pages is None:
        pages = write_pages(results)
    return Published(results, pages, written)
