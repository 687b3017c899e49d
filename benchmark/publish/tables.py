"""A leaderboard's tables and page text from its rows: the best-layer, every-layer and
model tables (the paper's Tables 2 and 4-9), the CSV table, the opening verdict."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.protocol.metrics import HEADERS, KEYS, overlap_key, reported
from benchmark.publish.captions import (
    BOLD,
    CLASSIFIER_AUC,
    GAIN,
    MISSING,
    PAPER,
    PAPER_LAYER,
    SEED_SD,
    SIGNIFICANT,
    Quote,
    shown,
    verdict,
)
from benchmark.publish.rows import (
    CONTEXT_COLUMNS,
    EXTERNAL,
    MODEL_NAMES,
    REFERENCE,
    aligned,
    best_layers,
    in_order,
    page_models,
    ranked,
    reference_model,
    reference_spec,
    shown_beside,
    stat_columns,
    table_truth,
    trivial,
)
from benchmark.publish.section import Section
from methods.registry import method_name


def column_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    """``frame[name]`` as floats; NaN when the column is absent."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def _cell(
    value: float,
    std: float = np.nan,
    base: float = np.nan,
    interval: tuple[float, float] = (np.nan, np.nan),
    marked: bool = False,
    seed_sd: float = np.nan,
) -> str:
    """``"0.52"``, ``"0.52 ± 0.03 [0.47, 0.58]"``, ``"0.52 ± 0.03 (seeds ± 0.05) [...]"`` or
    ``"0.52 (+0.06)"`` / ``"0.52 (=)"``, with :data:`SIGNIFICANT` after the delta when
    ``marked``; NaN: a dash."""
    if np.isnan(value):
        return MISSING
    text = f"{value:.2f}"
    if not np.isnan(std):
        text += f" ± {std:.2f}"
    if not np.isnan(seed_sd):
        text += f" (seeds ± {seed_sd:.2f})"
    if not np.isnan(interval[0]):
        text += f" [{interval[0]:.2f}, {interval[1]:.2f}]"
    if not np.isnan(base):
        delta = round(shown(value) - shown(base), 2)
        text += (f" ({delta:+.2f})" if delta else " (=)") + (SIGNIFICANT if marked else "")
    return text


def _table(
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    metrics: Sequence[str],
    labels: Sequence[str],
    *,
    std: bool = False,
    intervals: bool = False,
    reference: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, bold) of our rows and, where published, the paper's aligned rows beside them.

    With ``std`` and ``intervals``, our values carry the fold spread and the bootstrap
    interval. With ``reference`` (a mask of the reference row), each value is followed by
    its difference to that row of the same source, marked when our paired interval
    excludes 0; bold marks our best value of each column, as shown.
    """
    cells, bold = {"Method": list(labels)}, {"Method": [False] * len(ours)}
    is_reference = np.zeros(len(ours), bool) if reference is None else reference
    nan = np.full(len(ours), np.nan)
    for source, suffix in ((ours, ""), (paper, PAPER)):
        if suffix and source[list(metrics)].isna().all().all():
            continue
        for metric in metrics:
            values = column_values(source, metric)
            mine = not suffix
            spreads = column_values(source, f"{metric}_std") if std and mine else nan
            seed_sds = column_values(source, f"{metric}_seed_sd") if std and mine else nan
            lows = column_values(source, f"{metric}_ci_low") if intervals and mine else nan
            highs = column_values(source, f"{metric}_ci_high") if intervals and mine else nan
            marked = (column_values(ours, f"{metric}_delta_ci_low") > 0) | (
                column_values(ours, f"{metric}_delta_ci_high") < 0
            )
            base = values[is_reference][0] if is_reference.any() else np.nan
            cells[HEADERS[metric] + suffix] = [
                _cell(v, s, np.nan if r else base, (lo, hi), k and mine, sd)
                for v, s, r, lo, hi, k, sd in zip(
                    values, spreads, is_reference, lows, highs, marked, seed_sds, strict=True
                )
            ]
            as_shown = np.array([np.nan if np.isnan(v) else shown(v) for v in values])
            best = np.nanmax(as_shown) if mine and np.isfinite(as_shown).any() else np.nan
            bold[HEADERS[metric] + suffix] = list(as_shown == best)
    return pd.DataFrame(cells), pd.DataFrame(bold)


# Markdown's active characters in a name as shown (a user's ``--name``): as entities or
# escaped, so that a "|" stays in its cell and HTML shows as text
MARKDOWN_TEXT = str.maketrans({"\\": "\\\\", "|": "\\|", "&": "&amp;", "<": "&lt;", ">": "&gt;"})


def markdown_text(text: str) -> str:
    """``text`` shown as written in a Markdown paragraph or table cell."""
    return text.translate(MARKDOWN_TEXT)


def render(table: pd.DataFrame, fmt: str, bold: pd.DataFrame | None = None) -> str:
    """The one table formatter: ``"md"`` (GitHub Markdown) or ``"csv"``; the HTML page lays
    out the same cells (:func:`benchmark.publish.page.html_page`)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    cells = table.map(lambda cell: markdown_text(str(cell)))
    if bold is not None:
        cells = cells.where(~bold.to_numpy(bool), cells.map("**{}**".format))
    return tabulate(
        cells, headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )


def _section(title: str, rows: pd.DataFrame, cells: pd.DataFrame, bold: pd.DataFrame) -> Section:
    meta = rows[["method", "family", "layer", "model"]].reset_index(drop=True)
    meta.insert(2, "family_name", [method_name(f).display for f in meta.family])
    return Section(title, cells, bold, meta.assign(external=meta.model == EXTERNAL))


def _gain(rows: pd.DataFrame, overlap: str) -> list[str] | None:
    """Each row's overlap minus the better trivial baseline's, as shown, with † where their
    paired interval (``_gain_ci_low`` / ``_gain_ci_high``) excludes 0; None without one."""
    baseline = trivial(rows)
    values = np.array([np.nan if np.isnan(v) else shown(v) for v in column_values(rows, overlap)])
    if not np.isfinite(values[baseline]).any():
        return None
    best = np.nanmax(values[baseline])
    marked = (column_values(rows, f"{overlap}_gain_ci_low") > 0) | (
        column_values(rows, f"{overlap}_gain_ci_high") < 0
    )
    return [
        MISSING if np.isnan(v) else f"{v - best:+.2f}" + ("†" if k else "")
        for v, k in zip(values, marked, strict=True)
    ]


def _add_classifier_auc(
    cells: pd.DataFrame, bold: pd.DataFrame, rows: pd.DataFrame, metrics: Sequence[str]
) -> None:
    """The :data:`CLASSIFIER_AUC` column after our ``metrics``: each row's classifier's
    validation AUC (mean over seeds, :func:`benchmark.training.scoring.classifier_report`), so
    that a 3D classifier's rows show theirs beside the 2D one's; none when no row has one."""
    auc = column_values(rows, "classifier_auc")
    if np.isfinite(auc).any():
        column = [MISSING if np.isnan(v) else f"{v:.2f}" for v in auc]
        cells.insert(len(metrics) + 1, CLASSIFIER_AUC, column)
        bold.insert(len(metrics) + 1, CLASSIFIER_AUC, False)


def _spread(rows: pd.DataFrame, metric: str) -> list[str] | None:
    """Each row's standard deviation of ``metric`` over classifier seeds; None without."""
    spread = column_values(rows, f"{metric}_seed_sd")
    if not np.isfinite(spread).any():
        return None
    return [MISSING if np.isnan(v) else f"{v:.2f}" for v in spread]


def page_sections(
    ours: pd.DataFrame, paper: pd.DataFrame, reference: str = REFERENCE
) -> list[Section]:
    """Every table of one dataset: per 2D model (external and 3D classifiers' rows beside
    each, :func:`shown_beside`), then across models."""
    truth = table_truth(pd.concat([ours, paper]))
    overlap, metrics = overlap_key(truth), reported(truth)
    models, beside = page_models(ours), shown_beside(ours)
    best, paper_best = best_layers(ours), best_layers(paper)
    sections = []
    for model in models:
        rows = in_order(best[best.model.isin([model, *beside])])
        published = aligned(rows, paper_best, ["model", "family"])
        spec = reference_spec(ours, model, reference)
        marker = ((rows.method == spec) & (rows.model == model)).to_numpy()
        cells, bold = _table(rows, published, metrics, rows.name, reference=marker)
        extra = {
            f"{HEADERS[overlap]} {GAIN}": _gain(rows, overlap),
            f"{HEADERS[overlap]} {SEED_SD}": _spread(rows, overlap),
        }
        _add_classifier_auc(cells, bold, rows, metrics)
        for header, column in reversed(extra.items()):
            if column is not None:
                cells.insert(len(metrics) + 1, header, column)
                bold.insert(len(metrics) + 1, header, False)
        if published[metrics].notna().any().any():
            layer = [MISSING if pd.isna(v) else str(v) for v in published.layer]
            cells.insert(len(metrics) + 1, PAPER_LAYER, layer)
            bold.insert(len(metrics) + 1, PAPER_LAYER, False)
        title = f"Best layer per method: {model} (Table 2 layout)"
        sections.append(_section(title, rows, cells, bold))
        rows = in_order(ours[ours.model.isin([model, *beside])])
        published = aligned(rows, paper, ["model", "method"])
        cells, bold = _table(rows, published, metrics, rows.name, std=True, intervals=True)
        _add_classifier_auc(cells, bold, rows, metrics)
        title = f"Every method at every layer: {model} (Tables 6-9 layout)"
        sections.append(_section(title, rows, cells, bold))
    if len(set(ours.model) - {EXTERNAL}) > 1:
        rows = in_order(best[best.model != EXTERNAL], by_model=True)
        labels = [
            f"{n}, {m} ({MODEL_NAMES[m]})" if m in MODEL_NAMES else f"{n}, {m}"
            for n, m in zip(rows.name, rows.model, strict=True)
        ]
        published = aligned(rows, paper_best, ["model", "family"])
        cells, bold = _table(
            rows, published, ["f1", overlap, "balanced_accuracy"], labels, std=True, intervals=True
        )
        _add_classifier_auc(cells, bold, rows, ["f1", overlap, "balanced_accuracy"])
        sections.append(_section("Model comparison (Tables 1 and 4 layout)", rows, cells, bold))
    return sections


def csv_table(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our rows at full precision, their best-layer flag and the paper's numbers beside."""
    rows = in_order(ours, by_model=True)
    chosen = best_layers(rows).index
    published = aligned(rows, paper, ["model", "method"])[list(KEYS)].add_prefix("paper_")
    scores = [c for m in KEYS for c in stat_columns(m) if c in rows and rows[c].notna().any()]
    table = rows[["dataset", "model", "method", "name", "layer"]].assign(
        best_layer=rows.index.isin(chosen)
    )
    kept = [c for c in ("display_name", *CONTEXT_COLUMNS) if c in rows]
    parts = [table, rows[scores], rows[kept], published.dropna(axis=1, how="all")]
    return pd.concat(parts, axis=1)


def _warning_block(warning: str | None) -> list[str]:
    """The page's first block, a Markdown quote; nothing without a warning."""
    if not warning:
        return []
    lines = warning.strip().splitlines() or [""]
    return ["\n".join(["> **Warning:** " + lines[0], *(f"> {line}" for line in lines[1:])])]


def page_document(
    dataset: str,
    notes: list[str],
    sections: list[Section],
    warning: str | None = None,
    opening: str = "",
    symbols: Sequence[tuple[str, str]] = (),
) -> str:
    """The Markdown page: title, the warning, the opening paragraph, notes, the legend of
    ``symbols``, then each section's table."""
    parts = [f"# Leaderboard: {dataset}", *_warning_block(warning)]
    parts += [markdown_text(opening)] if opening else []
    parts.append("\n".join(f"- {n}" for n in notes))
    if symbols:
        keys = [f"**{k}**" if k == BOLD else f"`{k}`" for k, _ in symbols]
        lines = [f"- {k}: {meaning}" for k, (_, meaning) in zip(keys, symbols, strict=True)]
        parts.append("\n".join(["Legend:", *lines]))
    parts += [f"## {x.title}\n\n{render(x.cells, 'md', x.bold)}" for x in sections]
    return "\n\n".join(parts) + "\n"


def opening_paragraph(rows: pd.DataFrame, overlap: str, reference: str, seeds: int) -> str:
    """The page's first paragraph (:func:`benchmark.publish.captions.verdict`) on its first
    best-layer table: that model's classifier, its best method by the ranking
    (:func:`ranked`), the reference and the better trivial baseline it is compared with."""
    model = reference_model(rows)
    best = best_layers(rows[rows.model.isin([model, *shown_beside(rows)])])
    baseline = trivial(best)
    methods = ranked(best[~baseline & np.isfinite(column_values(best, overlap))])
    baselines = ranked(best[baseline & np.isfinite(column_values(best, overlap))])
    leader = methods.iloc[0] if len(methods) else None
    spec = reference_spec(rows, model, reference)
    ref = rows[(rows.model == model) & (rows.method == spec)]
    auc = rows[(rows.model == model) & np.isfinite(column_values(rows, "classifier_auc"))]
    classifier = None
    if len(auc):
        first = auc.iloc[0]
        low, high = (first.get(f"classifier_auc_ci_{k}", np.nan) for k in ("low", "high"))
        classifier = Quote(model, first.classifier_auc, low, high)
    paired = gained = (np.nan, np.nan)
    if leader is not None:
        paired = tuple(leader.get(f"{overlap}_delta_ci_{k}", np.nan) for k in ("low", "high"))
        gained = tuple(leader.get(f"{overlap}_gain_ci_{k}", np.nan) for k in ("low", "high"))
    return verdict(
        HEADERS[overlap],
        classifier,
        None if leader is None else _quote(leader, overlap),
        _quote(ref.iloc[0], overlap) if len(ref) else None,
        paired,
        _quote(baselines.iloc[0], overlap) if len(baselines) else None,
        seeds,
        gained,
    )


def _quote(row: pd.Series, metric: str) -> Quote:
    """A row's ``metric`` with its interval, under the row's name."""
    low, high = (row.get(f"{metric}_ci_{k}", np.nan) for k in ("low", "high"))
    return Quote(row["name"], row[metric], low, high)
