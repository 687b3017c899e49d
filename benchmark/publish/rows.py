"""The rows of a leaderboard: the paper's published numbers beside ours, their order (best
layer, models, the reference method) and their bootstrap intervals over the cases."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from benchmark.config import RunConfig
from benchmark.protocol.metrics import KEYS
from benchmark.protocol.stats import case_intervals
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


def prepare(results: pd.DataFrame) -> pd.DataFrame:
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


def model_rank(model: str) -> tuple:
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
    return sorted(models - beside or models - {EXTERNAL} or models, key=model_rank)


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


def stat_columns(metric: str) -> list[str]:
    """The columns of one metric in a results table, in order."""
    tails = (
        "std",
        "seed_sd",
        "ci_low",
        "ci_high",
        "delta",
        "delta_ci_low",
        "delta_ci_high",
        "gain_ci_low",
        "gain_ci_high",
    )
    return [metric, *(f"{metric}_{t}" for t in tails)]


def trivial(frame: pd.DataFrame) -> np.ndarray:
    """Which rows are trivial baselines (``intensity``, ``centre``: kind "baseline")."""
    return np.array([method_name(f).kind == "baseline" for f in frame.family], dtype=bool)


def better_baseline(frame: pd.DataFrame, model: str) -> str | None:
    """The spec of ``model``'s better trivial baseline, the first by :func:`ranked`; None
    when the rows have none."""
    rows = frame[frame.model == model]
    rows = rows[trivial(rows)]
    return str(ranked(rows).method.iloc[0]) if len(rows) else None


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
    ``_delta_ci_low`` / ``_delta_ci_high``, and the paired interval of its difference to
    the better trivial baseline (:func:`better_baseline`), ``_gain_ci_low`` /
    ``_gain_ci_high``. Rows without cases are left as they are."""
    frame = prepare(results)
    out = results.reset_index(drop=True).copy()
    groups = {key: rows for key, rows in cases.groupby(KEY, sort=False)}
    bootstrap = {
        "n_resamples": settings.n_resamples,
        "confidence": settings.confidence,
        "seed": settings.seed,
    }
    for dataset, rows in frame.groupby("dataset", sort=False):
        anchors, floors = {}, {}
        beside = shown_beside(rows)
        for model in rows.model.unique():
            ref_model = reference_model(rows) if model in beside else model
            spec = reference_spec(rows, ref_model, settings.reference)
            anchors[model] = None if spec is None else (ref_model, spec)
            floor = better_baseline(rows, ref_model)
            floors[model] = None if floor is None else (ref_model, floor)
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
            found = case_intervals(mine, metrics, paired, **bootstrap)
            floor = floors[row.model]
            if floor is not None and floor[1] != row.method and (dataset, *floor) in groups:
                pair = _aligned_cases(mine, groups[(dataset, *floor)])
                if pair is not None:
                    gains = case_intervals(pair[0], metrics, pair[1], **bootstrap)
                    for m in metrics:
                        for tail in ("low", "high"):
                            found[f"{m}_gain_ci_{tail}"] = gains[f"{m}_delta_ci_{tail}"]
            for column, value in found.items():
                out.loc[i, column] = value
    ordered = [c for m in KEYS for c in stat_columns(m) if c in out]
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


def in_order(frame: pd.DataFrame, by_model: bool = False) -> pd.DataFrame:
    """Rows in the paper's order (method, then layer; with ``by_model``, model before layer);
    external rows last."""
    keys = [
        (
            model == EXTERNAL,
            order,
            model_rank(model) if by_model else (),
            0 if pd.isna(layer) else layer,
        )
        for order, model, layer in zip(frame.order, frame.model, frame.layer, strict=True)
    ]
    return frame.iloc[sorted(range(len(frame)), key=keys.__getitem__)].reset_index(drop=True)


def aligned(ours: pd.DataFrame, paper: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The paper's rows matching ours on ``keys``, in our order (NaN where unpublished)."""
    index = pd.MultiIndex.from_frame(ours[keys])
    return paper.set_index(keys).reindex(index).reset_index(drop=True)
