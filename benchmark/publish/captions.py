"""The words of a leaderboard page: the paragraph it opens with (:func:`verdict`), its
note on what the scores are (:func:`scores_note`) and the legend of every symbol and
derived column its tables show (:func:`legend`).

:mod:`benchmark.publish.leaderboard` makes the tables and picks the rows the paragraph quotes;
the Markdown and HTML pages (:mod:`benchmark.publish.page`) lay these words out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from benchmark.publish.section import Section

MISSING = "–"  # a cell without a value
SIGNIFICANT = "†"  # after a delta whose paired 95% interval excludes 0
THREE_AXES = "★"  # in the names of the 3-axis CAMs (methods.cam_methods)
CLASSIFIER_AUC = "Classifier AUC"  # each row's classifier's validation AUC
GAIN = "gain over baselines"  # after the overlap's header: "Dice gain over baselines"
SEED_SD = "sd over seeds"  # after the overlap's header: "Dice sd over seeds"
PAPER = " (paper)"  # after the header of a column of published numbers
PAPER_LAYER = "Layer (paper)"
BOLD = "bold"


@dataclass(frozen=True)
class Quote:
    """A number the paragraph quotes: whose, its value and its 95% interval (NaN: none)."""

    name: str
    value: float
    low: float = math.nan
    high: float = math.nan


def shown(value: float) -> float:
    """``value`` as the tables show it, two decimals; deltas are differences of these."""
    return float(f"{value:.2f}")


def verdict(
    metric: str,
    classifier: Quote | None,
    leader: Quote | None,
    reference: Quote | None = None,
    paired: tuple[float, float] = (math.nan, math.nan),
    baseline: Quote | None = None,
    seeds: int = 1,
    gained: tuple[float, float] = (math.nan, math.nan),
) -> str:
    """The page's first paragraph: did the ``classifier`` learn (its AUC interval lies above
    0.5), which method leads by ``metric`` (the page's ranking) and by how much it beats the
    ``reference`` (``paired``: the 95% interval of their difference) and the better trivial
    ``baseline`` (``gained``: the same), each margin a difference of the values as shown."""
    sentences = []
    if classifier is not None:
        means = " (means over the seeds)" if seeds > 1 else ""
        auc = f"validation AUC {_quoted(classifier)}{means}"
        if classifier.low > 0.5:
            sentences.append(
                f"The classifier `{classifier.name}` learned: {auc}, above chance (the "
                "interval's lower bound exceeds 0.5)."
            )
        else:
            sentences.append(
                f"The classifier `{classifier.name}` has not been shown to learn: {auc}, an "
                "interval that does not lie above chance (0.5), so its heatmaps may explain "
                "nothing."
            )
    if leader is None:
        sentences.append(f"No method besides the trivial baselines has a {metric}.")
        return " ".join(sentences)
    clauses = []
    if reference is not None and reference.name == leader.name:
        clauses.append("it is the reference")
    elif reference is not None:
        clauses.append(
            f"{_margin(leader, reference)} the reference, {reference.name} at "
            f"{_quoted(reference)}{_paired(paired)}"
        )
    if baseline is not None:
        clauses.append(
            f"{_margin(leader, baseline)} the better trivial baseline, {baseline.name} at "
            f"{_quoted(baseline)}{_paired(gained)}"
        )
    lead = f"The best method by {metric} is {leader.name} at {_quoted(leader)}"
    sentences.append(lead + (": " + ", and ".join(clauses) if clauses else "") + ".")
    return " ".join(sentences)


def _paired(interval: tuple[float, float]) -> str:
    """`` (the paired 95% interval of the difference, [0.13, 0.33], excludes 0)``, or
    nothing without an interval."""
    low, high = interval
    if math.isnan(low):
        return ""
    holds = "excludes" if low > 0 or high < 0 else "includes"
    return f" (the paired 95% interval of the difference, [{low:.2f}, {high:.2f}], {holds} 0)"


def _quoted(quote: Quote) -> str:
    """``0.62 [0.55, 0.68]``, or ``0.62`` without an interval."""
    if math.isnan(quote.low):
        return f"{quote.value:.2f}"
    return f"{quote.value:.2f} [{quote.low:.2f}, {quote.high:.2f}]"


def _margin(leader: Quote, other: Quote) -> str:
    """``0.23 above``, ``0.05 below`` or ``level with``: ``leader`` against ``other``."""
    margin = round(shown(leader.value) - shown(other.value), 2)
    if margin == 0:
        return "level with"
    return f"{abs(margin):.2f} {'above' if margin > 0 else 'below'}"


def scores_note(seeds: int = 1) -> str:
    """What every score is a mean of."""
    over = (
        f", and over {seeds} classifiers that differ only in their training seed"
        if seeds > 1
        else ""
    )
    # the pages' words, kept as they were written: the protocol has moved to
    # benchmark/protocol/evaluation.py, and a new path here would change every page
    return (
        "Scores: means over the Monte-Carlo folds of the paper's protocol (A.7, "
        f"`benchmark/evaluation.py`){over}."
    )


def legend(
    sections: Sequence[Section], metric: str, reference: str, seeds: int = 1
) -> list[tuple[str, str]]:
    """(symbol or column, meaning) for each one the tables of ``sections`` show, in the
    order a reader meets them; ``metric``: the header of the page's ranking metric."""
    names = [str(n) for x in sections for n in x.cells.iloc[:, 0]]
    cells = [str(c) for x in sections for column in x.cells.columns[1:] for c in x.cells[column]]
    headers = {str(h) for x in sections for h in x.cells.columns}
    text = "\n".join(cells)
    volumes = "the validation volumes and the seeds" if seeds > 1 else "the validation volumes"
    fixed = (
        "" if seeds > 1 else "; like ±, it holds the classifier fixed: `run --seeds N` varies it"
    )
    entries = [
        (
            any(x.bold.iloc[:, 1:].to_numpy().any() for x in sections),
            BOLD,
            "our best value of the column",
        ),
        (
            re.search(r"\d ± \d", text),
            "±",
            "standard deviation over the Monte-Carlo folds",
        ),
        (
            "(seeds ± " in text,
            "(seeds ± s)",
            "standard deviation over the classifiers' training seeds",
        ),
        (
            re.search(r"\[-?\d", text),
            "[low, high]",
            f"95% percentile bootstrap interval over {volumes} (each volume's scores averaged "
            f"over the folds that scored it, `<dataset>.per_case.csv`){fixed}",
        ),
        (
            re.search(r"\([+-]\d|\(=\)", text),
            "(+0.06), (=)",
            f"difference to the reference, `{reference}` (at its best layer unless a layer is "
            "named), of the values as shown; (=): none",
        ),
        (
            SIGNIFICANT in text,
            SIGNIFICANT,
            "after a difference: its paired bootstrap interval (the same resampled "
            f"{'volumes and seeds' if seeds > 1 else 'volumes'} for both methods) excludes 0",
        ),
        (
            any(THREE_AXES in n for n in names),
            THREE_AXES,
            "the slice-wise CAM along the depth, height and width axes, averaged (the paper's "
            "A.8); without it, axial slices only",
        ),
        (
            any("(layer " in n for n in names),
            "(layer N)",
            "the classifier stage (1-4) the CAM reads; the best-layer table keeps each "
            f"method's best: highest {metric}, then F1-score, then balanced accuracy",
        ),
        (
            any(n.endswith(" (external)") for n in names),
            "(external)",
            "heatmaps of another tool, scored like ours by `python -m benchmark evaluate`",
        ),
        (
            f"{metric} {GAIN}" in headers,
            f"{metric} {GAIN}",
            f"the row's {metric} minus the better trivial baseline's (`intensity`: the image "
            "itself; `centre`: a blob where lesions usually are), as shown; below 0, the "
            "method loses to a guess that needs no classifier; †: the paired bootstrap "
            "interval of the difference excludes 0",
        ),
        (
            f"{metric} {SEED_SD}" in headers,
            f"{metric} {SEED_SD}",
            f"standard deviation of {metric} over the classifiers' training seeds",
        ),
        (
            CLASSIFIER_AUC in headers,
            CLASSIFIER_AUC,
            "validation AUC of the classifier the row's method explains (1: perfect, 0.5: chance)",
        ),
        (
            any(h.endswith(PAPER) for h in headers),
            PAPER.strip(),
            "the published numbers: Schmidt-Mengin et al., CVPR 2024, CC BY-NC-SA 4.0 "
            "(`benchmark/data/README.md`), Tables 2 and 5-9 with R-10-T and frozen batch "
            "norm (our `resnet10t`), Table 4 for ToNNO with the other classifiers",
        ),
        (PAPER_LAYER in headers, PAPER_LAYER, "the layer of the paper's row"),
        (
            MISSING in cells or MISSING in names,
            MISSING,
            "no value: not computed, not published or not defined",
        ),
    ]
    return [(symbol, meaning) for found, symbol, meaning in entries if found]
