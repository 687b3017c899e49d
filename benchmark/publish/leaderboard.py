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
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.config import RunConfig
from benchmark.protocol.metrics import HEADERS, KEYS, overlap_key, reported
from benchmark.protocol.stats import case_intervals
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
    legend,
    scores_note,
    shown,
    verdict,
)
from benchmark.publish.page import html_page
from benchmark.publish.section import Section
from foundation.io import atomic_write, file_lock
from methods.registry import method_name, paper_families

log = logging.getLogger(__name__)

MODEL_NAMES = {  # benchmark.training.models names to the paper's Table 4 rows
    "resnet10t": "R-10-T, FBN",
    "resnet10t_bn": "R-10-T, BN",
    "resnet10t_gn": "R-10-T, GN",
    "resnet10t_gn_np": "R-10-T, GN, NP",
    "resnet50_gn": "R-50, GN",
}
PAPER_MODEL = "resnet10t"  # the classifier of the paper's Tables 2 and 5-9
REFERENCE = RunConfig.reference  # deltas versus slice-wise LayerCAM at its best layer
EXTERNAL = "external"  # the model of rows scored from another tool's heatmaps
# The paper's numbers, shipped as package data (benchmark/data/, with its README): read
# them only through published_numbers(), which finds them in a wheel, a zip or a checkout.
PAPER_CSV = "data/published_results.csv"
# Where a row's numbers come from, as opaque strings: ``context`` (a digest of the protocol's
# settings and the validation set's content) must be one value per page; ``source`` (what
# made the heatmaps: the classifier checkpoint and tomography settings) one value per model
# of the page, external rows aside (each states its own).
CONTEXT_COLUMNS = ("context", "source")
KEY = ["dataset", "model", "method"]
CASE_COLUMNS = ["dataset", "model", "method", "volume", "label", "max", "n_scored", "correct"]
STRIP_NAME = re.compile(r"\w[\w.+-]*")  # a family or "input": a file name in <dataset>.figure/


def published_numbers() -> pd.DataFrame:
    """The paper's result tables as stored, one row per method x dataset (x layer):
    ``table``, ``dataset``, ``method``, ``layer``, ``variant`` and the metrics
    (``benchmark/data/README.md``; read with :mod:`importlib.resources`, installed or not)."""
    with resources.files("benchmark").joinpath(PAPER_CSV).open("rb") as stream:
        return pd.read_csv(stream, dtype={"layer": str, "variant": str})


def paper_results() -> pd.DataFrame:
    """The published numbers as a results table (``dataset``, ``model``, ``method``, metrics).

    Tables 6-9 give every layer for the paper's classifier; Table 5 adds, without their
    layer, the methods Tables 6-9 lack; Table 4 adds ToNNO with the other classifiers.
    """
    raw = published_numbers().fillna({"layer": "", "variant": ""})
    families = paper_families()
    family = pd.Series(
        [
            families.get((m, v if v == "3axis" else ""), m)
            for m, v in zip(raw.method, raw.variant, strict=True)
        ]
    )
    per_layer = raw.table >= 6
    covered = set(zip(raw.dataset[per_layer], family[per_layer], strict=True))
    uncovered = np.array([key not in covered for key in zip(raw.dataset, family, strict=True)])
    models = {label: name for name, label in MODEL_NAMES.items()}
    keep = per_layer | ((raw.table == 5) & uncovered)
    keep |= (raw.table == 4) & (raw.variant != MODEL_NAMES[PAPER_MODEL])
    out = raw.assign(
        method=family + raw.layer.map(lambda v: f"@{v}" if v.isdigit() else ""),
        model=raw.variant.map(models).where(raw.table == 4, PAPER_MODEL),
    )
    return out.loc[keep, ["dataset", "model", "method", *KEYS]].reset_index(drop=True)


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Validated copy with ``model``, every metric, ``family``, ``layer``, ``name``, ``order``."""
    missing = {"dataset", "method"} - set(results.columns)
    if missing:
        raise ValueError(f"results lack the columns {sorted(missing)}")
    frame = results.reset_index(drop=True)
    frame = frame.assign(**{c: np.nan for c in KEYS if c not in frame})
    if "model" not in frame:
        frame["model"] = PAPER_MODEL
    repeated = frame[frame.duplicated(["dataset", "model", "method"])]
    if len(repeated):
        row = repeated.iloc[0]
        raise ValueError(
            f"results repeat {row.method!r} for model {row.model!r} on {row.dataset!r}"
        )
    names = [method_name(spec) for spec in frame.method]
    titles = frame.get("display_name", pd.Series([None] * len(frame)))
    shown = [
        f"{t if isinstance(t, str) and t else n.display} (external)" if m == EXTERNAL else n.display
        for n, t, m in zip(names, titles, frame.model, strict=True)
    ]
    return frame.assign(
        family=[n.family for n in names],
        layer=pd.array([n.layer for n in names], dtype="Int64"),
        name=shown,
        order=[n.order for n in names],
    )


def table_truth(frame: pd.DataFrame) -> str:
    """``"boxes"`` when the rows score boxes (MaxIoU and no Dice), else ``"mask"``."""
    return "boxes" if frame.dice.isna().all() and frame.maxiou.notna().any() else "mask"


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows best first: highest overlap, then F1, BA, lowest layer."""
    order = frame.assign(_overlap=frame.dice.fillna(frame.maxiou)).sort_values(
        ["_overlap", "f1", "balanced_accuracy", "layer"],
        ascending=[False, False, False, True],
        na_position="last",
        kind="stable",
    )
    return order.drop(columns="_overlap")


def best_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, family): its best by :func:`ranked`."""
    return ranked(frame).groupby(["dataset", "model", "family"], sort=False).head(1)


def _model_rank(model: str) -> tuple:
    return (
        model == EXTERNAL,
        model not in MODEL_NAMES,
        list(MODEL_NAMES).index(model) if model in MODEL_NAMES else 0,
        model,
    )


def shown_beside(frame: pd.DataFrame) -> set[str]:
    """Models whose rows are shown beside every other model's and compared with its
    reference: external rows, and 3D classifiers (their methods' kind is "3d"), which
    compete with the methods of a 2D classifier rather than explain one."""
    kinds = frame.groupby("model").method.agg(lambda m: {method_name(s).kind for s in m})
    return {EXTERNAL} | {model for model, found in kinds.items() if found == {"3d"}}


def page_models(frame: pd.DataFrame) -> list[str]:
    """The models that get their own tables, in order: the 2D classifiers (else whatever
    the page has)."""
    beside = shown_beside(frame)
    models = set(frame.model)
    return sorted(models - beside or models - {EXTERNAL} or models, key=_model_rank)


def reference_model(frame: pd.DataFrame) -> str:
    """The model whose reference row the rows shown beside (:func:`shown_beside`) are
    compared with: the paper's classifier when the page has it, else the first model."""
    models = page_models(frame)
    return PAPER_MODEL if PAPER_MODEL in models else models[0]


def reference_spec(frame: pd.DataFrame, model: str, reference: str = REFERENCE) -> str | None:
    """The spec of ``model``'s rows that the others are compared with: ``reference`` itself
    when a row has it (``layercam@2``), else the best layer of the family ``reference``
    names (``layercam``); None when the rows have neither."""
    rows = frame[frame.model == model]
    if reference in set(rows.method):
        return reference
    best = best_layers(rows[rows.family == reference])
    return str(best.method.iloc[0]) if len(best) else None


def _stat_columns(metric: str) -> list[str]:
    """The columns of one metric in a results table, in order."""
    tails = ("std", "seed_sd", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high")
    return [metric, *(f"{metric}_{t}" for t in tails)]


@dataclass(frozen=True)
class Intervals:
    """How a page's intervals and deltas are computed (:func:`with_intervals`)."""

    reference: str = REFERENCE  # a spec, or a family at its best layer
    n_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0


def with_intervals(
    results: pd.DataFrame, cases: pd.DataFrame, settings: Intervals = Intervals()
) -> pd.DataFrame:
    """``results`` with, per metric, ``_ci_low`` / ``_ci_high`` (percentile bootstrap over
    the volumes of ``cases``, :func:`benchmark.protocol.stats.case_intervals`) and the difference to
    the reference row of its model (:func:`reference_spec`; external rows: of
    :func:`reference_model`): ``_delta`` (of the means) with its paired interval
    ``_delta_ci_low`` / ``_delta_ci_high``. Rows without cases are left as they are."""
    frame = _prepare(results)
    out = results.reset_index(drop=True).copy()
    groups = {key: rows for key, rows in cases.groupby(KEY, sort=False)}
    for dataset, rows in frame.groupby("dataset", sort=False):
        anchors = {}
        beside = shown_beside(rows)
        for model in rows.model.unique():
            ref_model = reference_model(rows) if model in beside else model
            spec = reference_spec(rows, ref_model, settings.reference)
            anchors[model] = None if spec is None else (ref_model, spec)
        for i, row in rows.iterrows():
            mine = groups.get((dataset, row.model, row.method))
            if mine is None:
                continue
            metrics = [
                m for m in KEYS if pd.notna(row[m]) and (m == "balanced_accuracy" or m in mine)
            ]
            paired, anchor = None, anchors[row.model]
            if anchor is not None and (dataset, *anchor) in groups:
                aligned = _aligned_cases(mine, groups[(dataset, *anchor)])
                if aligned is not None:
                    mine, paired = aligned
                    base = rows[(rows.model == anchor[0]) & (rows.method == anchor[1])].iloc[0]
                    for m in metrics:
                        out.loc[i, f"{m}_delta"] = row[m] - base[m]
                else:
                    log.warning(
                        "%s: %s and its reference %s were not scored on the same volumes and "
                        "seeds: no delta",
                        dataset,
                        row.method,
                        anchor[1],
                    )
            found = case_intervals(
                mine,
                metrics,
                paired,
                n_resamples=settings.n_resamples,
                confidence=settings.confidence,
                seed=settings.seed,
            )
            for column, value in found.items():
                out.loc[i, column] = value
    ordered = [c for m in KEYS for c in _stat_columns(m) if c in out]
    rest = [c for c in out.columns if c not in ordered]
    first = [c for c in rest if c in ("dataset", "model", "method", "display_name")]
    return out[first + ordered + [c for c in rest if c not in first]]


def _aligned_cases(
    mine: pd.DataFrame, theirs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``mine`` and ``theirs`` row by row on the same (seed, volume), in ``mine``'s order; a
    side without seeds (external heatmaps: one per volume) stands for every seed of the
    other. None when they do not cover the same volumes and seeds."""
    if "seed" in theirs and "seed" not in mine:
        mine = pd.concat([mine.assign(seed=k) for k in theirs.seed.unique()], ignore_index=True)
    if "seed" in mine and "seed" not in theirs:
        theirs = pd.concat([theirs.assign(seed=k) for k in mine.seed.unique()], ignore_index=True)
    key = ["seed", "volume"] if "seed" in mine else ["volume"]
    if len(mine) != len(theirs):
        return None
    theirs = theirs.set_index(key).reindex(mine.set_index(key).index)
    if theirs.label.isna().any():
        return None
    return mine.reset_index(drop=True), theirs.reset_index()


def _in_order(frame: pd.DataFrame, by_model: bool = False) -> pd.DataFrame:
    """Rows in the paper's order (method, then layer; with ``by_model``, model before layer);
    external rows last."""
    keys = [
        (
            model == EXTERNAL,
            order,
            _model_rank(model) if by_model else (),
            0 if pd.isna(layer) else layer,
        )
        for order, model, layer in zip(frame.order, frame.model, frame.layer, strict=True)
    ]
    return frame.iloc[sorted(range(len(frame)), key=keys.__getitem__)].reset_index(drop=True)


def _aligned(ours: pd.DataFrame, paper: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The paper's rows matching ours on ``keys``, in our order (NaN where unpublished)."""
    index = pd.MultiIndex.from_frame(ours[keys])
    return paper.set_index(keys).reindex(index).reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
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
            values = _column(source, metric)
            mine = not suffix
            spreads = _column(source, f"{metric}_std") if std and mine else nan
            seed_sds = _column(source, f"{metric}_seed_sd") if std and mine else nan
            lows = _column(source, f"{metric}_ci_low") if intervals and mine else nan
            highs = _column(source, f"{metric}_ci_high") if intervals and mine else nan
            marked = (_column(ours, f"{metric}_delta_ci_low") > 0) | (
                _column(ours, f"{metric}_delta_ci_high") < 0
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


def _trivial(rows: pd.DataFrame) -> np.ndarray:
    """Which rows are trivial baselines (``intensity``, ``centre``: kind "baseline")."""
    return np.array([method_name(f).kind == "baseline" for f in rows.family], dtype=bool)


def _gain(rows: pd.DataFrame, overlap: str) -> list[str] | None:
    """Each row's overlap minus the better trivial baseline's, as shown; None without one."""
    trivial = _trivial(rows)
    values = np.array([np.nan if np.isnan(v) else shown(v) for v in _column(rows, overlap)])
    if not np.isfinite(values[trivial]).any():
        return None
    best = np.nanmax(values[trivial])
    return [MISSING if np.isnan(v) else f"{v - best:+.2f}" for v in values]


def _add_classifier_auc(
    cells: pd.DataFrame, bold: pd.DataFrame, rows: pd.DataFrame, metrics: Sequence[str]
) -> None:
    """The :data:`CLASSIFIER_AUC` column after our ``metrics``: each row's classifier's
    validation AUC (mean over seeds, :func:`benchmark.training.scoring.classifier_report`), so
    that a 3D classifier's rows show theirs beside the 2D one's; none when no row has one."""
    auc = _column(rows, "classifier_auc")
    if np.isfinite(auc).any():
        column = [MISSING if np.isnan(v) else f"{v:.2f}" for v in auc]
        cells.insert(len(metrics) + 1, CLASSIFIER_AUC, column)
        bold.insert(len(metrics) + 1, CLASSIFIER_AUC, False)


def _spread(rows: pd.DataFrame, metric: str) -> list[str] | None:
    """Each row's standard deviation of ``metric`` over classifier seeds; None without."""
    spread = _column(rows, f"{metric}_seed_sd")
    if not np.isfinite(spread).any():
        return None
    return [MISSING if np.isnan(v) else f"{v:.2f}" for v in spread]


def _sections(ours: pd.DataFrame, paper: pd.DataFrame, reference: str = REFERENCE) -> list[Section]:
    """Every table of one dataset: per 2D model (external and 3D classifiers' rows beside
    each, :func:`shown_beside`), then across models."""
    truth = table_truth(pd.concat([ours, paper]))
    overlap, metrics = overlap_key(truth), reported(truth)
    models, beside = page_models(ours), shown_beside(ours)
    best, paper_best = best_layers(ours), best_layers(paper)
    sections = []
    for model in models:
        rows = _in_order(best[best.model.isin([model, *beside])])
        published = _aligned(rows, paper_best, ["model", "family"])
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
        rows = _in_order(ours[ours.model.isin([model, *beside])])
        published = _aligned(rows, paper, ["model", "method"])
        cells, bold = _table(rows, published, metrics, rows.name, std=True, intervals=True)
        _add_classifier_auc(cells, bold, rows, metrics)
        title = f"Every method at every layer: {model} (Tables 6-9 layout)"
        sections.append(_section(title, rows, cells, bold))
    if len(set(ours.model) - {EXTERNAL}) > 1:
        rows = _in_order(best[best.model != EXTERNAL], by_model=True)
        labels = [
            f"{n}, {m} ({MODEL_NAMES[m]})" if m in MODEL_NAMES else f"{n}, {m}"
            for n, m in zip(rows.name, rows.model, strict=True)
        ]
        published = _aligned(rows, paper_best, ["model", "family"])
        cells, bold = _table(
            rows, published, ["f1", overlap, "balanced_accuracy"], labels, std=True, intervals=True
        )
        _add_classifier_auc(cells, bold, rows, ["f1", overlap, "balanced_accuracy"])
        sections.append(_section("Model comparison (Tables 1 and 4 layout)", rows, cells, bold))
    return sections


def _csv_table(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our rows at full precision, their best-layer flag and the paper's numbers beside."""
    rows = _in_order(ours, by_model=True)
    chosen = best_layers(rows).index
    published = _aligned(rows, paper, ["model", "method"])[list(KEYS)].add_prefix("paper_")
    scores = [c for m in KEYS for c in _stat_columns(m) if c in rows and rows[c].notna().any()]
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


def _document(
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


def _opening(rows: pd.DataFrame, overlap: str, reference: str, seeds: int) -> str:
    """The page's first paragraph (:func:`benchmark.publish.captions.verdict`) on its first
    best-layer table: that model's classifier, its best method by the ranking
    (:func:`ranked`), the reference and the better trivial baseline it is compared with."""
    model = reference_model(rows)
    best = best_layers(rows[rows.model.isin([model, *shown_beside(rows)])])
    trivial = _trivial(best)
    methods = ranked(best[~trivial & np.isfinite(_column(best, overlap))])
    baselines = ranked(best[trivial & np.isfinite(_column(best, overlap))])
    leader = methods.iloc[0] if len(methods) else None
    spec = reference_spec(rows, model, reference)
    ref = rows[(rows.model == model) & (rows.method == spec)]
    auc = rows[(rows.model == model) & np.isfinite(_column(rows, "classifier_auc"))]
    classifier = None
    if len(auc):
        first = auc.iloc[0]
        low, high = (first.get(f"classifier_auc_ci_{k}", np.nan) for k in ("low", "high"))
        classifier = Quote(model, first.classifier_auc, low, high)
    paired = (np.nan, np.nan)
    if leader is not None:
        paired = tuple(leader.get(f"{overlap}_delta_ci_{k}", np.nan) for k in ("low", "high"))
    return verdict(
        HEADERS[overlap],
        classifier,
        None if leader is None else _quote(leader, overlap),
        _quote(ref.iloc[0], overlap) if len(ref) else None,
        paired,
        _quote(baselines.iloc[0], overlap) if len(baselines) else None,
        seeds,
    )


def _quote(row: pd.Series, metric: str) -> Quote:
    """A row's ``metric`` with its interval, under the row's name."""
    low, high = (row.get(f"{metric}_ci_{k}", np.nan) for k in ("low", "high"))
    return Quote(row["name"], row[metric], low, high)


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
    _prepare(results)  # validate before reading or writing anything
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
    published = _prepare(paper_results() if paper else empty)
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
    rows = _prepare(table)
    theirs = published[published.dataset == plan.dataset]
    sections = _sections(rows, theirs, intervals.reference)
    overlap = overlap_key(table_truth(pd.concat([rows, theirs])))
    seeds = plan.cases.seed.nunique() if "seed" in plan.cases else 1
    header = [scores_note(seeds), *notes]
    opening = _opening(rows, overlap, intervals.reference, seeds)
    symbols = legend(sections, HEADERS[overlap], intervals.reference, seeds)
    figure = plan.folder / f"{plan.dataset}.figure"
    written = []
    for name, png in strips.items():
        written.append(figure / f"{name}.png")
        _write_bytes(written[-1], png)
    pages = {
        "md": _document(plan.dataset, header, sections, warning, opening, symbols),
        "html": html_page(
            plan.dataset, header, sections, warning, _stored_strips(figure), opening, symbols
        ),
        "csv": render(_csv_table(rows, theirs), "csv"),
    }
    if has_cases:
        pages["per_case.csv"] = render(plan.cases, "csv")
    for fmt, text in pages.items():
        written.append(plan.folder / f"{plan.dataset}.{fmt}")
        _write_bytes(written[-1], text.encode("utf-8"))
    return written, table
