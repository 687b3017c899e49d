"""One table of a leaderboard page, as :mod:`benchmark.publish.leaderboard` makes it and the page's
words (:mod:`benchmark.publish.captions`) and HTML (:mod:`benchmark.publish.page`) read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Section:
    """One table of a page: its title, the cells as shown, which are bold, and what each
    row is (``method``, ``family``, ``family_name``, ``layer``, ``model``, ``external``:
    for filters and links)."""

    title: str
    cells: pd.DataFrame
    bold: pd.DataFrame
    rows: pd.DataFrame
