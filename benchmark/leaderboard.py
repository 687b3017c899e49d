"""Leaderboards: a results table to ``leaderboards/<dataset>.md``, ``.csv`` and ``.html``.

Input: one row per (dataset, model, method spec), with the columns of
:meth:`benchmark.evaluation.EvaluationResult.row` (``precision``, ``recall``, ``f1``,
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
``context`` and ``checkpoint`` columns, see :data:`CONTEXT_COLUMNS`); otherwise the page is
left standing and the new tables go to a fallback folder, with a warning.

The best layer has the highest Dice (MaxIoU for boxes), then F1-score, then balanced
accuracy, then the lowest layer: on the paper's Tables 6-9 this rule picks every layer of
its Tables 2 and 5 (highest F1 first would not, for Duke). Deltas are differences of the
values as shown, rounded to two decimals like the paper.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from benchmark.io import atomic_write

log = logging.getLogger(__name__)

# Spec names to the paper's names: the one place.
METHOD_NAMES = {
    "gradcam": "GradCAM",
    "gradcampp": "GradCAM++",
    "layercam": "LayerCAM",
    "scorecam": "ScoreCAM",
    "tonno": "ToNNO",
}
PREFIXES = {"averaged": "Averaged", "tomographic": "Tomographic"}
TRIVIAL_BASELINES = {"intensity": "Intensity", "centre": "Centre prior"}  # methods.baselines: last
VARIANTS = {"3axis": "★"}  # CAM averaged over axial, coronal and sagittal slicing (Table 5)
MODEL_NAMES = {  # benchmark.models names to the paper's Table 4 rows
    "resnet10t": "R-10-T, FBN",
    "resnet10t_bn": "R-10-T, BN",
    "resnet10t_gn": "R-10-T, GN",
    "resnet10t_gn_np": "R-10-T, GN, NP",
    "resnet50_gn": "R-50, GN",
}
PAPER_MODEL = "resnet10t"  # the classifier of the paper's Tables 2 and 5-9
BASELINE = "layercam"  # deltas versus slice-wise LayerCAM (Table 2)
METRICS = ("precision", "recall", "f1", "dice", "maxiou", "balanced_accuracy")
HEADERS = {
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1-score",
    "dice": "Dice",
    "maxiou": "MaxIoU",
    "balanced_accuracy": "Balanced accuracy",
}
PAPER_CSV = (
    Path(__file__).resolve().parent.parent / "leaderboards" / "paper" / "published_results.csv"
)
MISSING = "–"
# Where a row's numbers come from, as opaque strings: ``context`` (a digest of the protocol
# and tomography settings and the validation set) must be one value per page; ``checkpoint``
# (the classifier checkpoint's hash) one value per model of the page.
CONTEXT_COLUMNS = ("context", "checkpoint")
KEY = ["dataset", "model", "method"]


@dataclass(frozen=True)
class MethodName:
    """A method spec read as the paper names it: ``tomographic_layercam@3``."""

    family: str  # the spec without its layer: "tomographic_layercam", "gradcam_3axis"
    layer: int | None
    paper: str  # "Tomographic LayerCAM" (the paper's ``method`` column); else the family
    variant: str  # "3axis" or ""
    order: tuple  # the paper's: slice-wise CAMs, ToNNO, Averaged, Tomographic; plugins, baselines

    @property
    def display(self) -> str:
        """``"LayerCAM ★ (layer 2)"``: the paper's row label."""
        star = f" {VARIANTS[self.variant]}" if self.variant else ""
        layer = f" (layer {self.layer})" if self.layer is not None else ""
        return f"{self.paper}{star}{layer}"


def method_name(spec: str) -> MethodName:
    """Parse ``NAME[@LAYER]`` into the paper's name, variant and row order."""
    family, _, layer = spec.partition("@")
    base, variant, prefix = family, "", ""
    for suffix in VARIANTS:
        if base.endswith(f"_{suffix}"):
            base, variant = base[: -len(suffix) - 1], suffix
    for head in PREFIXES:
        if base.startswith(f"{head}_") and base[len(head) + 1 :] in METHOD_NAMES:
            base, prefix = base[len(head) + 1 :], head
    if family in TRIVIAL_BASELINES:
        order = (len(PREFIXES) + 3, list(TRIVIAL_BASELINES).index(family), False, family)
        return MethodName(family, _layer(layer), TRIVIAL_BASELINES[family], "", order)
    if base not in METHOD_NAMES:
        return MethodName(family, _layer(layer), family, "", (len(PREFIXES) + 2, 0, False, family))
    group = 2 + list(PREFIXES).index(prefix) if prefix else int(base == "tonno")
    paper = f"{PREFIXES[prefix]} {METHOD_NAMES[base]}" if prefix else METHOD_NAMES[base]
    order = (group, list(METHOD_NAMES).index(base), bool(variant), family)
    return MethodName(family, _layer(layer), paper, variant, order)


def _layer(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def paper_results(path: str | Path = PAPER_CSV) -> pd.DataFrame:
    """The published numbers as a results table (``dataset``, ``model``, ``method``, metrics).

    Tables 6-9 give every layer for the paper's classifier; Table 5 adds, without their
    layer, the methods Tables 6-9 lack; Table 4 adds ToNNO with the other classifiers.
    """
    raw = pd.read_csv(path, dtype={"layer": str, "variant": str})
    raw = raw.fillna({"layer": "", "variant": ""})
    families = {method_name(f"{p}_{b}").paper: f"{p}_{b}" for p in PREFIXES for b in METHOD_NAMES}
    families.update({name: base for base, name in METHOD_NAMES.items()})
    family = raw.method.map(families) + raw.variant.map(lambda v: f"_{v}" if v in VARIANTS else "")
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
    return out.loc[keep, ["dataset", "model", "method", *METRICS]].reset_index(drop=True)


def _prepare(results: pd.DataFrame) -> pd.DataFrame:
    """Validated copy with ``model``, every metric, ``family``, ``layer``, ``name``, ``order``."""
    missing = {"dataset", "method"} - set(results.columns)
    if missing:
        raise ValueError(f"results lack the columns {sorted(missing)}")
    frame = results.reset_index(drop=True)
    frame = frame.assign(**{c: np.nan for c in METRICS if c not in frame})
    if "model" not in frame:
        frame["model"] = PAPER_MODEL
    repeated = frame[frame.duplicated(["dataset", "model", "method"])]
    if len(repeated):
        row = repeated.iloc[0]
        raise ValueError(
            f"results repeat {row.method!r} for model {row.model!r} on {row.dataset!r}"
        )
    names = [method_name(spec) for spec in frame.method]
    return frame.assign(
        family=[n.family for n in names],
        layer=pd.array([n.layer for n in names], dtype="Int64"),
        name=[n.display for n in names],
        order=[n.order for n in names],
    )


def overlap_metric(frame: pd.DataFrame) -> str:
    """``"maxiou"`` when the rows score boxes (MaxIoU and no Dice), else ``"dice"``."""
    return "maxiou" if frame.dice.isna().all() and frame.maxiou.notna().any() else "dice"


def best_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, model, family): highest overlap, then F1, BA, lowest layer."""
    ranked = frame.assign(_overlap=frame.dice.fillna(frame.maxiou)).sort_values(
        ["_overlap", "f1", "balanced_accuracy", "layer"],
        ascending=[False, False, False, True],
        na_position="last",
        kind="stable",
    )
    best = ranked.groupby(["dataset", "model", "family"], sort=False).head(1)
    return best.drop(columns="_overlap")


def _model_rank(model: str) -> tuple:
    return (
        model not in MODEL_NAMES,
        list(MODEL_NAMES).index(model) if model in MODEL_NAMES else 0,
        model,
    )


def _in_order(frame: pd.DataFrame, by_model: bool = False) -> pd.DataFrame:
    """Rows in the paper's order (method, then layer; with ``by_model``, model before layer)."""
    keys = [
        (order, _model_rank(model) if by_model else (), 0 if pd.isna(layer) else layer)
        for order, model, layer in zip(frame.order, frame.model, frame.layer, strict=True)
    ]
    return frame.iloc[sorted(range(len(frame)), key=keys.__getitem__)].reset_index(drop=True)


def _aligned(ours: pd.DataFrame, paper: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The paper's rows matching ours on ``keys``, in our order (NaN where unpublished)."""
    index = pd.MultiIndex.from_frame(ours[keys])
    return paper.set_index(keys).reindex(index).reset_index(drop=True)


def _shown(value: float) -> float:
    return float(f"{value:.2f}")


def _cell(value: float, std: float = np.nan, base: float = np.nan) -> str:
    """``"0.52"``, ``"0.52 ± 0.03"`` or ``"0.52 (+0.06)"`` / ``"0.52 (=)"``; NaN: a dash."""
    if np.isnan(value):
        return MISSING
    text = f"{value:.2f}"
    if not np.isnan(std):
        text += f" ± {std:.2f}"
    if not np.isnan(base):
        delta = round(_shown(value) - _shown(base), 2)
        text += f" ({delta:+.2f})" if delta else " (=)"
    return text


def _table(
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    metrics: Sequence[str],
    labels: Sequence[str],
    *,
    std: bool = False,
    delta: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, bold) of our rows and, where published, the paper's aligned rows beside them.

    With ``delta``, each value is followed by its difference to the BASELINE row of the
    same source; bold marks our best value of each column, as shown.
    """
    cells, bold = {"Method": list(labels)}, {"Method": [False] * len(ours)}
    baseline = (ours.family == BASELINE).to_numpy()
    for source, suffix in ((ours, ""), (paper, " (paper)")):
        if suffix and source[list(metrics)].isna().all().all():
            continue
        for metric in metrics:
            values = source[metric].to_numpy(dtype=float)
            spread = source.get(f"{metric}_std") if std and not suffix else None
            spreads = np.full(len(values), np.nan) if spread is None else spread.to_numpy(float)
            base = values[baseline][0] if delta and baseline.any() else np.nan
            cells[HEADERS[metric] + suffix] = [
                _cell(v, s, np.nan if b else base)
                for v, s, b in zip(values, spreads, baseline, strict=True)
            ]
            shown = np.array([np.nan if np.isnan(v) else _shown(v) for v in values])
            best = np.nanmax(shown) if not suffix and np.isfinite(shown).any() else np.nan
            bold[HEADERS[metric] + suffix] = list(shown == best)
    return pd.DataFrame(cells), pd.DataFrame(bold)


def render(table: pd.DataFrame, fmt: str, bold: pd.DataFrame | None = None) -> str:
    """The one table formatter: ``"md"`` (GitHub Markdown), ``"html"`` or ``"csv"``."""
    if fmt == "csv":
        return table.to_csv(index=False)
    cells = table.map(str)
    if fmt == "html":
        cells = cells.map(html.escape)
    if bold is not None:
        wrap = "**{}**" if fmt == "md" else "<b>{}</b>"
        cells = cells.where(~bold.to_numpy(bool), cells.map(wrap.format))
    tablefmt = {"md": "github", "html": "unsafehtml"}[fmt]
    return tabulate(
        cells, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True
    )


def _sections(
    ours: pd.DataFrame, paper: pd.DataFrame
) -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(title, cells, bold) of every table of one dataset: per model, then across models."""
    overlap = overlap_metric(pd.concat([ours, paper]))
    metrics = ["precision", "recall", "f1", overlap, "balanced_accuracy"]
    models = sorted(ours.model.unique(), key=_model_rank)
    best, paper_best = best_layers(ours), best_layers(paper)
    sections = []
    for model in models:
        rows = _in_order(best[best.model == model])
        published = _aligned(rows, paper_best, ["model", "family"])
        cells, bold = _table(rows, published, metrics, rows.name, delta=True)
        if published[metrics].notna().any().any():
            layer = [MISSING if pd.isna(v) else str(v) for v in published.layer]
            cells.insert(len(metrics) + 1, "Layer (paper)", layer)
            bold.insert(len(metrics) + 1, "Layer (paper)", False)
        sections.append((f"Best layer per method: {model} (Table 2 layout)", cells, bold))
        rows = _in_order(ours[ours.model == model])
        published = _aligned(rows, paper, ["model", "method"])
        cells, bold = _table(rows, published, metrics, rows.name, std=True)
        sections.append((f"Every method at every layer: {model} (Tables 6-9 layout)", cells, bold))
    if len(models) > 1:
        rows = _in_order(best, by_model=True)
        labels = [
            f"{n}, {m} ({MODEL_NAMES[m]})" if m in MODEL_NAMES else f"{n}, {m}"
            for n, m in zip(rows.name, rows.model, strict=True)
        ]
        published = _aligned(rows, paper_best, ["model", "family"])
        cells, bold = _table(
            rows, published, ["f1", overlap, "balanced_accuracy"], labels, std=True
        )
        sections.append(("Model comparison (Tables 1 and 4 layout)", cells, bold))
    return sections


def _csv_table(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our rows at full precision, their best-layer flag and the paper's numbers beside."""
    rows = _in_order(ours, by_model=True)
    chosen = best_layers(rows).index
    published = _aligned(rows, paper, ["model", "method"])[list(METRICS)].add_prefix("paper_")
    scores = [c for m in METRICS for c in (m, f"{m}_std") if c in rows and rows[c].notna().any()]
    table = rows[["dataset", "model", "method", "name", "layer"]].assign(
        best_layer=rows.index.isin(chosen)
    )
    context = [c for c in CONTEXT_COLUMNS if c in rows]
    parts = [table, rows[scores], rows[context], published.dropna(axis=1, how="all")]
    return pd.concat(parts, axis=1)


def _notes(overlap: str, with_paper: bool) -> list[str]:
    notes = [
        "Scores: mean ± standard deviation over the Monte-Carlo folds of the paper's protocol "
        "(A.7, `benchmark/evaluation.py`); bold: our best per column.",
        f"Best layer: highest {HEADERS[overlap]}, then F1-score, then balanced accuracy; "
        "deltas versus slice-wise LayerCAM at its best layer, from the values as shown.",
    ]
    if with_paper:
        notes.append(
            "(paper): Schmidt-Mengin et al., CVPR 2024, CC BY-NC-SA 4.0 "
            "(`leaderboards/paper/README.md`): Tables 2 and 5-9 with R-10-T and frozen batch "
            "norm (our `resnet10t`), Table 4 for ToNNO with the other classifiers."
        )
    return notes


WARNING_STYLE = (
    "border: 2px solid #b00; background: #fdd; color: #600; padding: 0.6em 1em; "
    "margin: 1em 0; font-weight: bold"
)


def _warning_block(warning: str | None, fmt: str) -> list[str]:
    """The page's first block: a Markdown quote or an HTML box; nothing without a warning."""
    if not warning:
        return []
    if fmt == "md":
        lines = warning.strip().splitlines() or [""]
        return ["\n".join(["> **Warning:** " + lines[0], *(f"> {line}" for line in lines[1:])])]
    text = html.escape(warning.strip()).replace("\n", "<br>")
    return [f'<div class="warning" style="{WARNING_STYLE}">Warning: {text}</div>']


def _document(
    dataset: str, notes: list[str], sections: list, fmt: str, warning: str | None = None
) -> str:
    """A Markdown or HTML page: title, the warning, notes, then each section's table."""
    if fmt == "md":
        parts = [f"# Leaderboard: {dataset}", *_warning_block(warning, fmt)]
        parts.append("\n".join(f"- {n}" for n in notes))
        parts += [f"## {title}\n\n{render(cells, 'md', bold)}" for title, cells, bold in sections]
        return "\n\n".join(parts) + "\n"
    code = [re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(n)) for n in notes]
    items = "".join(f"<li>{n}</li>" for n in code)
    parts = [
        '<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8">'
        f"<title>Leaderboard: {html.escape(dataset)}</title></head>\n<body>",
        f"<h1>Leaderboard: {html.escape(dataset)}</h1>",
        *_warning_block(warning, fmt),
        f"<ul>{items}</ul>",
    ]
    parts += [
        f"<h2>{html.escape(title)}</h2>\n{render(cells, 'html', bold)}"
        for title, cells, bold in sections
    ]
    return "\n".join([*parts, "</body>\n</html>\n"])


@dataclass(frozen=True)
class Written:
    """What :func:`write_leaderboards` wrote; iterates over (and adds to a list as) ``paths``."""

    paths: tuple[Path, ...]
    merged: tuple[str, ...] = ()  # datasets whose page kept rows that this call did not compute
    fell_back: tuple[str, ...] = ()  # datasets whose page was left standing (tables: fallback)

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

    They can when both state one and the same ``context``, and, for every model in both,
    one and the same ``checkpoint``. Rows without these columns (older files) state none.
    """
    if _one_value(new, "context") is None:
        return "the new rows state no single evaluation context (column 'context')"
    old = _one_value(existing, "context")
    if old is None:
        return "its rows state no single evaluation context (an older file?)"
    if old != _one_value(new, "context"):
        return f"its evaluation context is {old}, the new rows' {_one_value(new, 'context')}"
    for model in sorted(set(existing.model) & set(new.model)):
        ours = _one_value(new[new.model == model], "checkpoint")
        theirs = _one_value(existing[existing.model == model], "checkpoint")
        if ours is None or ours != theirs:
            return f"its {model} rows come from checkpoint {theirs}, the new ones from {ours}"
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
    folder: Path
    merged: bool = False
    reason: str | None = None  # why the page in out_dir was left standing


def _plan(dataset: str, new: pd.DataFrame, out_dir: Path, fallback_dir: Path | None) -> _Plan:
    """Merge ``new`` into ``out_dir/<dataset>.csv`` when the contexts match, else fall back."""
    path = out_dir / f"{dataset}.csv"
    if not path.is_file():
        return _Plan(dataset, new, out_dir)
    existing = read_rows(path)
    existing = existing[existing.dataset.astype(str) == dataset]
    if existing.empty:
        return _Plan(dataset, new, out_dir)
    reason = context_mismatch(existing, new)
    if reason is None:
        return _Plan(dataset, merge_rows(existing, new), out_dir, merged=True)
    if fallback_dir is None:
        raise ValueError(
            f"{path} holds results of another evaluation context ({reason}): not overwriting "
            "them; pass a fallback folder for the new tables"
        )
    return _Plan(dataset, new, fallback_dir, reason=reason)


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as file:
        file.write(text.encode("utf-8"))


def write_leaderboards(
    results: pd.DataFrame,
    out_dir: str | Path = "leaderboards",
    paper: str | Path | None = PAPER_CSV,
    notes: Sequence[str] = (),
    *,
    fallback_dir: str | Path | None = None,
    warning: str | None = None,
) -> Written:
    """Write ``<dataset>.md``, ``.csv`` and ``.html`` per dataset of ``results`` into ``out_dir``.

    The page of a dataset shows the rows already in ``out_dir/<dataset>.csv`` with those of
    ``results`` replacing the ones with the same (dataset, model, method), when both come
    from the same evaluation context (:func:`context_mismatch`, on the optional columns
    :data:`CONTEXT_COLUMNS`). Otherwise the existing page is left untouched and this call's
    tables are written to ``fallback_dir`` instead, with a WARNING saying why and where
    (without ``fallback_dir``: a ValueError, before anything is written).

    ``paper``: the published numbers (``leaderboards/paper/published_results.csv``), shown
    beside ours where the dataset and model match; ``None`` leaves them out. ``notes``: more
    lines for the pages' header (e.g. the specs a preset left out). ``warning``: shown as the
    pages' first block, prominently (e.g. a classifier at chance).
    """
    _prepare(results)  # validate before reading or writing anything
    out_dir = Path(out_dir)
    fallback = Path(fallback_dir) if fallback_dir is not None else None
    frame = results if "model" in results else results.assign(model=PAPER_MODEL)
    plans = [
        _plan(str(dataset), rows, out_dir, fallback)
        for dataset, rows in frame.groupby("dataset", sort=True)
    ]
    empty = pd.DataFrame(columns=["dataset", "model", "method", *METRICS])
    published = _prepare(paper_results(paper) if paper is not None else empty)
    written = []
    for plan in plans:
        written += _write_pages(plan, published, list(notes), warning)
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
    )


def _write_pages(
    plan: _Plan, published: pd.DataFrame, notes: list[str], warning: str | None
) -> list[Path]:
    """The Markdown, HTML and CSV pages of one dataset, into ``plan.folder``."""
    rows = _prepare(plan.rows)
    theirs = published[published.dataset == plan.dataset]
    sections = _sections(rows, theirs)
    with_paper = any(" (paper)" in c for _, cells, _ in sections for c in cells.columns)
    header = _notes(overlap_metric(pd.concat([rows, theirs])), with_paper) + notes
    pages = {fmt: _document(plan.dataset, header, sections, fmt, warning) for fmt in ("md", "html")}
    pages["csv"] = render(_csv_table(rows, theirs), "csv")
    plan.folder.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, text in pages.items():
        path = plan.folder / f"{plan.dataset}.{fmt}"
        _write_text(path, text)
        written.append(path)
    return written
