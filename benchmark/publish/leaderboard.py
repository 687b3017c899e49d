"""Leaderboards: a results table to ``leaderboards/<dataset>.md``, ``.csv`` and ``.html``.

Input: one row per (dataset, model, method spec), with the columns of
:meth:`benchmark.protocol.evaluation.EvaluationResult.row` (``precision``, ``recall``, ``f1``,
``dice`` or ``maxiou``, ``balanced_accuracy``, each with an optional ``_std``), plus
``dataset``, ``method`` (``layercam@2``, ``tonno``, ``gradcam_3axis@1``) and ``model``
(optional; default ``resnet10t``). Per dataset and model, the Markdown and HTML pages show

1. the best layer of every method with deltas versus slice-wise LayerCAM at its best
   layer (the paper's Table 2, and Table 5 for the other CAMs and the ★ variants);
2. every method at every layer (Tables 6-9);
3. with several models, each method's best layer per model (Tables 1 and 4);

with the paper's numbers beside ours for its data sets (``ms``, ``autopet``, ``mosmed``,
``duke``): Tables 2 and 5-9 for the paper's classifier (R-10-T with frozen batch norm,
our ``resnet10t``), Table 4 for ToNNO with the other classifiers. The CSV holds our rows
with full precision and the matching paper numbers.

A page only ever gains rows: :func:`write_leaderboards` merges ``results`` into the rows
already in ``<dataset>.csv`` (a row of ``results`` replaces the one with its dataset, model
and method), but only when both come from the same evaluation context (the optional
``context`` and ``source`` columns, see :data:`CONTEXT_COLUMNS`); otherwise the page is
left standing and the new tables go to a fallback folder, with a warning. Pages are read,
merged and written under their folder's :func:`page_lock`: runs side by side that write
into one folder each add their rows.

Beyond the paper, every number gets a 95% percentile-bootstrap interval over volumes and
each method a paired difference to a reference method (slice-wise LayerCAM at its best
layer by default), computed from the per-case scores kept beside the page in
``<dataset>.per_case.csv`` (:func:`with_intervals`). Heatmaps of other tools enter as
*external* rows (model ``external``, shown beside every model's rows). ``intensity`` and
``centre`` are the trivial baselines: the best-layer table states each method's gain over
the better of the two. Each page opens with a plain-language verdict and a legend of what
its tables show (:mod:`benchmark.publish.captions`).

The best layer has the highest Dice (MaxIoU for boxes), then F1-score, then balanced
accuracy, then the lowest layer: on the paper's Tables 6-9 this rule picks every layer of
its Tables 2 and 5 (highest F1 first would not, for Duke). Deltas are differences of the
values as shown, rounded to two decimals like the paper.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.protocol.metrics import HEADERS, KEYS, overlap_key
from benchmark.publish.captions import (
    legend,
    scores_note,
)
from benchmark.publish.page import html_page
from benchmark.publish.rows import (
    CONTEXT_COLUMNS,
    EXTERNAL,
    KEY,
    PAPER_MODEL,
    Intervals,
    paper_results,
    prepare,
    table_truth,
    with_intervals,
)
from benchmark.publish.tables import (
    csv_table,
    opening_paragraph,
    page_document,
    page_sections,
    render,
)
from foundation.io import atomic_write, file_lock

log = logging.getLogger(__name__)


CASE_COLUMNS = ["dataset", "model", "method", "volume", "label", "max", "n_scored", "correct"]
STRIP_NAME = re.compile(r"\w[\w.+-]*")  # a family or "input": a file name in <dataset>.figure/


@dataclass(frozen=True)
class Written:
    """What :func:`write_leaderboards` wrote; iterates over (and adds to a list as) ``paths``."""

    paths: tuple[Path, ...]
    merged: tuple[str, ...] = ()  # datasets whose page kept rows that this call did not compute
    fell_back: tuple[str, ...] = ()  # datasets whose page was left standing (tables: fallback)
    tables: Mapping[str, pd.DataFrame] = dataclasses.field(default_factory=dict)  # rows shown

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __add__(self, other: Sequence[Path]) -> list[Path]:
        return [*self.paths, *other]


def read_rows(path: str | Path) -> pd.DataFrame:
    """Our rows of a leaderboard CSV written by :func:`write_leaderboards`: the key, scores
    and context columns (not the derived names, layers, best-layer flags or paper numbers)."""
    text = {c: str for c in CONTEXT_COLUMNS}
    try:
        table = pd.read_csv(path, dtype=text)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a leaderboard CSV ({type(error).__name__})") from None
    missing = set(KEY) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a leaderboard CSV (lacks the columns {sorted(missing)})")
    derived = {"name", "layer", "best_layer"}
    keep = [c for c in table.columns if c not in derived and not c.startswith("paper_")]
    return table[keep]


def _one_value(rows: pd.DataFrame, column: str) -> str | None:
    """The single value of ``column`` in ``rows``; None if missing, empty or mixed."""
    if column not in rows or rows[column].isna().any():
        return None
    values = set(rows[column].astype(str))
    return values.pop() if len(values) == 1 else None


def context_mismatch(existing: pd.DataFrame, new: pd.DataFrame) -> str | None:
    """Why the rows of one dataset's page and ``new`` rows cannot share it, or None.

    They can when both state one and the same ``context``, and, for every model in both
    (external rows aside), one and the same ``source``. Rows without these columns (older
    files) state none.
    """
    if _one_value(new, "context") is None:
        return "the new rows state no single evaluation context (column 'context')"
    old = _one_value(existing, "context")
    if old is None:
        return "its rows state no single evaluation context (an older file?)"
    if old != _one_value(new, "context"):
        return f"its evaluation context is {old}, the new rows' {_one_value(new, 'context')}"
    for model in sorted(set(existing.model) & set(new.model) - {EXTERNAL}):
        ours = _one_value(new[new.model == model], "source")
        theirs = _one_value(existing[existing.model == model], "source")
        if ours is None or ours != theirs:
            return f"its {model} rows come from heatmap source {theirs}, the new ones from {ours}"
    return None


def merge_rows(existing: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``existing`` rows with those of ``new`` replacing the ones with the same key."""
    replaced = pd.MultiIndex.from_frame(existing[KEY]).isin(pd.MultiIndex.from_frame(new[KEY]))
    return pd.concat([existing[~replaced], new], ignore_index=True)


@dataclass(frozen=True)
class _Plan:
    """One dataset's page: its rows, the folder it goes to, and what became of the old one."""

    dataset: str
    rows: pd.DataFrame
    cases: pd.DataFrame  # per-case scores of the rows that have them
    folder: Path
    merged: bool = False
    reason: str | None = None  # why the page in out_dir was left standing


def read_cases(path: str | Path) -> pd.DataFrame:
    """The per-case scores of a page (``<dataset>.per_case.csv``); empty when absent."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=CASE_COLUMNS)
    try:
        cases = pd.read_csv(path, dtype={"volume": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a per-case CSV ({type(error).__name__})") from None
    missing = set(CASE_COLUMNS) - set(cases.columns)
    if missing:
        raise ValueError(f"{path}: not a per-case CSV (lacks the columns {sorted(missing)})")
    return cases


def _plan(
    dataset: str,
    new: pd.DataFrame,
    cases: pd.DataFrame,
    out_dir: Path,
    fallback_dir: Path | None,
) -> _Plan:
    """Merge ``new`` into ``out_dir/<dataset>.csv`` (and its cases into the page's
    ``.per_case.csv``) when the contexts match, else fall back."""
    path = out_dir / f"{dataset}.csv"
    existing = read_rows(path) if path.is_file() else pd.DataFrame(columns=KEY)
    existing = existing[existing.dataset.astype(str) == dataset]
    if existing.empty:
        return _Plan(dataset, new, cases, out_dir)
    reason = context_mismatch(existing, new)
    if reason is None:
        old = read_cases(out_dir / f"{dataset}.per_case.csv")
        old = old[old.dataset.astype(str) == dataset]
        replaced = pd.MultiIndex.from_frame(old[KEY]).isin(pd.MultiIndex.from_frame(new[KEY]))
        merged_cases = pd.concat([old[~replaced], cases], ignore_index=True)
        return _Plan(dataset, merge_rows(existing, new), merged_cases, out_dir, merged=True)
    if fallback_dir is None:
        raise ValueError(
            f"{path} holds results of another evaluation context ({reason}): not overwriting "
            "them; pass a fallback folder for the new tables"
        )
    return _Plan(dataset, new, cases, fallback_dir, reason=reason)


def page_lock(folder: str | Path):
    """The lock of the pages in ``folder``: held from reading them to writing them."""
    return file_lock(Path(folder) / "pages.lock")


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as file:
        file.write(data)


def _stored_strips(folder: Path) -> dict[str, bytes]:
    """The Figure 6 strips kept in ``folder`` (``<family>.png``), by family."""
    return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def write_leaderboards(
    results: pd.DataFrame,
    out_dir: str | Path = "leaderboards",
    paper: bool = True,
    notes: Sequence[str] = (),
    *,
    fallback_dir: str | Path | None = None,
    warning: str | None = None,
    cases: pd.DataFrame | None = None,
    intervals: Intervals = Intervals(),
    strips: Mapping[str, bytes] | None = None,
) -> Written:
    """Write ``<dataset>.md``, ``.csv`` and ``.html`` per dataset of ``results`` into ``out_dir``.

    The page of a dataset shows the rows already in ``out_dir/<dataset>.csv`` with those of
    ``results`` replacing the ones with the same (dataset, model, method), when both come
    from the same evaluation context (:func:`context_mismatch`, on the optional columns
    :data:`CONTEXT_COLUMNS`). Otherwise the existing page is left untouched and this call's
    tables are written to ``fallback_dir`` instead, with a WARNING saying why and where
    (without ``fallback_dir``: a ValueError, before anything is written).

    ``paper``: show the published numbers (:func:`paper_results`) beside ours where the
    dataset and model match; ``False`` leaves them out. ``notes``: more
    lines for the pages' header (e.g. the specs a preset left out). ``warning``: shown as the
    pages' first block, prominently (e.g. a classifier at chance). ``cases``: the rows'
    per-case scores (:data:`CASE_COLUMNS` and the metrics), kept in
    ``<dataset>.per_case.csv`` and merged like the rows; the page's intervals and deltas
    are computed from them (:func:`with_intervals` with ``intervals``). ``strips``: the
    Figure 6 strips of one dataset's page (family, or ``"input"``, to PNG bytes,
    :func:`benchmark.publish.figures.method_strips`), kept in ``<dataset>.figure/<family>.png``
    beside the page like its rows; the HTML page embeds those of its families.
    """
    prepare(results)  # validate before reading or writing anything
    strips = strips or {}
    if strips and results.dataset.nunique() > 1:
        raise ValueError("strips belong to one dataset's page; results hold several datasets")
    for name in strips:
        if not STRIP_NAME.fullmatch(name):
            raise ValueError(f"strip {name!r}: expected a method family or 'input'")
    out_dir = Path(out_dir)
    fallback = Path(fallback_dir) if fallback_dir is not None else None
    frame = results if "model" in results else results.assign(model=PAPER_MODEL)
    cases = pd.DataFrame(columns=CASE_COLUMNS) if cases is None else cases
    empty = pd.DataFrame(columns=["dataset", "model", "method", *KEYS])
    published = prepare(paper_results() if paper else empty)
    written, tables = [], {}
    with page_lock(out_dir):
        plans = [
            _plan(str(dataset), rows, cases[cases.dataset == dataset], out_dir, fallback)
            for dataset, rows in frame.groupby("dataset", sort=True)
        ]
        for plan in plans:
            paths, tables[plan.dataset] = _write_pages(
                plan, published, list(notes), warning, intervals, strips
            )
            written += paths
            if plan.reason is not None:
                log.warning(
                    "%s left standing: %s; this run's tables are in %s",
                    out_dir / f"{plan.dataset}.md",
                    plan.reason,
                    plan.folder,
                )
    return Written(
        tuple(written),
        merged=tuple(p.dataset for p in plans if p.merged),
        fell_back=tuple(p.dataset for p in plans if p.reason is not None),
        tables=tables,
    )


def _write_pages(
    plan: _Plan,
    published: pd.DataFrame,
    notes: list[str],
    warning: str | None,
    intervals: Intervals,
    strips: Mapping[str, bytes],
) -> tuple[list[Path], pd.DataFrame]:
    """The Markdown, HTML and CSV pages (and per-case CSV, Figure 6 strips) of one dataset,
    into ``plan.folder``; and its rows with their intervals."""
    has_cases = not plan.cases.empty
    table = with_intervals(plan.rows, plan.cases, intervals) if has_cases else plan.rows
    rows = prepare(table)
    theirs = published[published.dataset == plan.dataset]
    sections = page_sections(rows, theirs, intervals.reference)
    overlap = overlap_key(table_truth(pd.concat([rows, theirs])))
    seeds = plan.cases.seed.nunique() if "seed" in plan.cases else 1
    header = [scores_note(seeds), *notes]
    opening = opening_paragraph(rows, overlap, intervals.reference, seeds)
    symbols = legend(sections, HEADERS[overlap], intervals.reference, seeds)
    figure = plan.folder / f"{plan.dataset}.figure"
    written = []
    for name, png in strips.items():
        written.append(figure / f"{name}.png")
        _write_bytes(written[-1], png)
    pages = {
        "md": page_document(plan.dataset, header, sections, warning, opening, symbols),
        "html": html_page(
            plan.dataset, header, sections, warning, _stored_strips(figure), opening, symbols
        ),
        "csv": render(csv_table(rows, theirs), "csv"),
    }
    if has_cases:
        pages["per_case.csv"] = render(plan.cases, "csv")
    for fmt, text in pages.items():
        written.append(plan.folder / f"{plan.dataset}.{fmt}")
        _write_bytes(written[-1], text.encode("utf-8"))
    return written, table
