"""The paper's Figure 6 for one data set: input, ground truth, each method's heatmap and mask.

One row per validation volume, shown on its axial slice (``image[:, d]``) with the most
ground-truth voxels; columns: the input, the ground truth over it, then for each method
its heatmap (blue negative, red positive, colours symmetric about 0 and scaled to the
volume's largest absolute value) and its binarised mask over the input (A.7 hysteresis).
The same panels also come as one strip per method for the HTML page (:func:`method_strips`).
A run assembles its rows (:func:`benchmark.run.outputs.figure_rows`: which volumes, which methods
at which layer, binarised with which thresholds) from :func:`figure_specs` and
:func:`figure_ids`. matplotlib's object API on the Agg canvas: no display and no pyplot
state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from benchmark.protocol.evaluation import GroundTruth
from benchmark.protocol.metrics import KEYS
from benchmark.publish.rows import best_layers
from benchmark.specs import matches
from foundation.io import atomic_write
from methods.registry import method_name

TRUTH_COLOUR = (0.1, 0.8, 0.2)
MASK_COLOUR = (1.0, 0.15, 0.1)
PANEL_INCHES = 1.5
STRIP_INCHES = 1.2  # a strip's panel, at STRIP_DPI
STRIP_DPI = 80


@dataclass(frozen=True)
class MethodMaps:
    """One method on one volume: its heatmap and binarised mask, both [D,H,W]."""

    label: str
    heatmap: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class FigureRow:
    """One volume's panels: 2D slices of the input, ground truth, heatmaps and masks."""

    volume_id: str
    index: int  # the axial slice shown
    image: np.ndarray  # [H,W]
    truth: np.ndarray  # bool [H,W]
    maps: list[tuple[str, np.ndarray, float, np.ndarray]]  # label, heatmap, |max|, mask


def truth_mask(truth: GroundTruth, shape: tuple[int, int, int]) -> np.ndarray:
    """Bool [D,H,W] of a ground-truth mask or half-open boxes; all False for None."""
    if isinstance(truth, np.ndarray) and truth.ndim == 3:
        return truth.astype(bool)
    mask = np.zeros(shape, dtype=bool)
    for d0, d1, h0, h1, w0, w1 in truth or ():
        mask[d0:d1, h0:h1, w0:w1] = True
    return mask


def figure_row(
    volume_id: str, image: np.ndarray, truth: np.ndarray, methods: Sequence[MethodMaps]
) -> FigureRow:
    """The panels of one volume (``image`` [D,H,W]) on its slice with the most ground truth."""
    area = truth.sum(axis=(1, 2))
    index = int(area.argmax()) if area.any() else image.shape[0] // 2
    maps = [
        (m.label, m.heatmap[index], float(np.abs(m.heatmap).max()) or 1.0, m.mask[index])
        for m in methods
    ]
    return FigureRow(volume_id, index, np.asarray(image[index]), truth[index], maps)


def _overlay(mask: np.ndarray, colour: tuple[float, float, float]) -> np.ndarray:
    """RGBA [H,W,4]: ``colour`` where ``mask``, transparent elsewhere."""
    rgba = np.zeros((*mask.shape, 4))
    rgba[mask] = (*colour, 0.6)
    return rgba


def _show(ax, image: np.ndarray, overlay: np.ndarray | None = None) -> None:
    """``image`` in grey (1st-99th percentile), with an RGBA ``overlay`` on top."""
    low, high = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, interpolation="nearest")


def _heatmap(ax, heatmap: np.ndarray, limit: float) -> None:
    """``heatmap`` blue to red, symmetric about 0 up to ``limit``."""
    ax.imshow(heatmap, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")


def draw(rows: Sequence[FigureRow], title: str) -> Figure:
    """The figure: one row per volume, input | truth | (heatmap | mask) per method."""
    n_cols = 2 + 2 * len(rows[0].maps)
    fig = Figure(
        figsize=(PANEL_INCHES * n_cols, PANEL_INCHES * len(rows) + 0.7), layout="constrained"
    )
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    names = ["input", "ground truth"]
    labels = [label.replace(" (", "\n(") for label, *_ in rows[0].maps]  # "(layer k)" below
    names += [f"{label}\n{kind}" for label in labels for kind in ("heatmap", "mask")]
    for ax, name in zip(axes[0], names, strict=True):
        ax.set_title(name, fontsize=7)
    for ax, row in zip(axes, rows, strict=True):
        _show(ax[0], row.image)
        _show(ax[1], row.image, _overlay(row.truth, TRUTH_COLOUR))
        for k, (_, heatmap, limit, mask) in enumerate(row.maps):
            _heatmap(ax[2 + 2 * k], heatmap, limit)
            _show(ax[3 + 2 * k], row.image, _overlay(mask, MASK_COLOUR))
        ax[0].set_ylabel(f"{row.volume_id}\nslice {row.index}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    path = Path(path)
    with atomic_write(path) as file:
        fig.savefig(file, format="png", dpi=dpi)
    return path


def method_strips(rows: Sequence[FigureRow], specs: Sequence[str]) -> dict[str, bytes]:
    """PNG strips for the HTML page, by family: ``"input"`` (input | ground truth per
    volume), then per method (``specs``, one per column of ``rows[i].maps``) its heatmap |
    mask per volume; one row of equal panels each, so that the strips line up."""
    strips = {"input": _strip(rows, None)}
    for k, spec in enumerate(specs):
        strips[spec.partition("@")[0]] = _strip(rows, k)
    return strips


def _strip(rows: Sequence[FigureRow], column: int | None) -> bytes:
    """One strip: two panels per volume, of the input (``column`` None) or of a method."""
    fig = Figure(figsize=(STRIP_INCHES * 2 * len(rows), STRIP_INCHES * 1.3))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.06)
    axes = fig.subplots(1, 2 * len(rows), squeeze=False)[0]
    for i, row in enumerate(rows):
        first, second = axes[2 * i], axes[2 * i + 1]
        if column is None:
            _show(first, row.image)
            _show(second, row.image, _overlay(row.truth, TRUTH_COLOUR))
            titles = (f"{row.volume_id}\nslice {row.index}", "ground truth")
        else:
            _, heatmap, limit, mask = row.maps[column]
            _heatmap(first, heatmap, limit)
            _show(second, row.image, _overlay(mask, MASK_COLOUR))
            titles = ("heatmap", "mask")
        for ax, title in zip((first, second), titles, strict=True):
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=STRIP_DPI)
    return buffer.getvalue()


# --- the figure of a run -----------------------------------------------------------------


def figure_specs(results: pd.DataFrame, patterns: Sequence[str]) -> list[str]:
    """The best layer of each method family matching ``patterns``, in the paper's order.

    Families are specs without their layer (``layercam``, ``tomographic_layercam``); when
    no family matches, every family is shown.
    """
    frame = results.assign(**{m: np.nan for m in KEYS if m not in results})
    names = [method_name(spec) for spec in frame.method]
    frame = frame.assign(
        family=[n.family for n in names],
        layer=pd.array([n.layer for n in names], dtype="Int64"),
    )
    best = best_layers(frame)
    chosen = [s for s, f in zip(best.method, best.family, strict=True) if matches(f, patterns)]
    return sorted(chosen or list(best.method), key=lambda spec: method_name(spec).order)


def figure_ids(dataset: Any, volume_ids: Sequence[str], unscored: set[str], n: int) -> list[str]:
    """The validation volumes the figure shows: the first ``n`` annotated positives."""
    shown = [v for v in volume_ids if dataset.label(v) == 1 and dataset.has_annotation(v)]
    return [v for v in shown if v not in unscored][:n]
