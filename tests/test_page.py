"""The HTML leaderboard: structure, escaping, Figure 6 strips, and sorting in Chromium."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from test_leaderboard import SYNTHETIC, TWO, UPDATE, results, with_context

from benchmark.figures import MethodMaps, figure_row, method_strips
from benchmark.leaderboard import Section, write_leaderboards
from benchmark.page import html_page


@dataclass
class Table:
    title: str  # the <h2> above it
    headers: list[str] = field(default_factory=list)
    sorted_by: dict[str, str] = field(default_factory=dict)  # header: its aria-sort
    rows: list[dict[str, str]] = field(default_factory=list)  # a body row's attributes
    cells: list[list[str]] = field(default_factory=list)  # its cells' text
    html: list[list[str]] = field(default_factory=list)  # its cells' markup


class Tables(HTMLParser):
    """The tables of a page, each body row with its attributes, cell texts and markup."""

    def __init__(self, page: str):
        super().__init__()
        self.found: list[Table] = []
        self.title, self.text, self.markup = "", None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if self.markup is not None:
            self.markup.append(self.get_starttag_text())
        if tag == "h2":
            self.text = []
        elif tag == "table":
            self.found.append(Table(self.title))
        elif tag == "tr" and attrs:
            self.found[-1].rows.append(dict(attrs))
            self.found[-1].cells.append([])
            self.found[-1].html.append([])
        elif tag in ("th", "td"):
            self.text, self.markup = [], [] if tag == "td" else None
            self.sort = dict(attrs).get("aria-sort")

    def handle_endtag(self, tag):
        if tag == "h2":
            self.title, self.text = "".join(self.text), None
        elif tag == "th":
            self.found[-1].headers.append("".join(self.text).strip())
            if self.sort:
                self.found[-1].sorted_by[self.found[-1].headers[-1]] = self.sort
        elif tag == "td":
            self.found[-1].cells[-1].append("".join(self.text).strip())
            self.found[-1].html[-1].append("".join(self.markup))
        elif self.markup is not None:
            self.markup.append(f"</{tag}>")

    def handle_data(self, data):
        for parts in (self.text, self.markup):
            if parts is not None:
                parts.append(data)

    def table(self, title: str) -> Table:
        [found] = [t for t in self.found if title in t.title]
        return found


def test_the_page_is_one_file_with_rows_that_say_what_they_are(tmp_path):
    warning = "classifier at chance <b>really</b>"
    notes = ["Left out: `scorecam@1` & <i>co</i>."]
    write_leaderboards(results(SYNTHETIC), tmp_path, notes=notes, warning=warning)
    page = (tmp_path / "autopet.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    _, rest = page.split("</h1>", 1)
    box, rest = rest.split("<ul>", 1)
    assert "classifier at chance &lt;b&gt;really&lt;/b&gt;" in box
    assert "<code>scorecam@1</code> &amp; &lt;i&gt;co&lt;/i&gt;." in rest.split("</ul>")[0]
    every = Tables(page).table("Every method at every layer")
    assert every.headers[:5] == ["Method", "Precision", "Recall", "F1-score", "Dice"]
    rows = {r["data-method"]: r for r in every.rows}
    assert set(rows) == set(SYNTHETIC)
    assert rows["tomographic_layercam@2"] == {
        "data-order": "5",
        "data-method": "tomographic_layercam@2",
        "data-family": "tomographic_layercam",
        "data-layer": "2",
        "data-model": "resnet10t",
    }
    assert rows["tonno"]["data-layer"] == "none"
    options = re.findall(r'<option value="([^"]*)">([^<]*)</option>', page)
    assert options == [
        ("", "all methods"),
        ("gradcam_3axis", "GradCAM ★"),
        ("layercam", "LayerCAM"),
        ("tonno", "ToNNO"),
        ("tomographic_layercam", "Tomographic LayerCAM"),
        ("", "all layers"),
        ("1", "1"),
        ("2", "2"),
        ("none", "no layer"),
    ]
    assert not re.search(r"<(link|script|img)\b[^>]*\b(src|href)=", page)
    assert page.count("<script>") == 1  # ours, inline


def test_names_and_cells_are_escaped(tmp_path):
    hostile = {
        "<script>alert(1)</script>@1": (0.1, 0.2, 0.3, 0.4, 0.5),
        "tonno": SYNTHETIC["tonno"],
    }
    write_leaderboards(results(hostile), tmp_path)
    page = (tmp_path / "autopet.html").read_text()
    assert "<script>alert" not in page and page.count("<script>") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (layer 1)" in page
    every = Tables(page).table("Every method at every layer")
    assert every.rows[-1]["data-family"] == "<script>alert(1)</script>"  # unescaped by the parser


def test_intervals_are_set_apart_and_bold_kept():
    cells = pd.DataFrame({"Method": ["ToNNO [v2]"], "Dice": ["0.64 ± 0.03 [0.58, 0.70]"]})
    bold = pd.DataFrame({"Method": [False], "Dice": [True]})
    rows = pd.DataFrame(
        {
            "method": ["tonno"],
            "family": ["tonno"],
            "family_name": ["ToNNO"],
            "layer": pd.array([None], dtype="Int64"),
            "model": ["resnet10t"],
            "external": [False],
        }
    )
    page = html_page("x", [], [Section("Scores", cells, bold, rows)])
    [table] = Tables(page).found
    assert table.html == [["ToNNO [v2]", '<b>0.64 ± 0.03 <span class="ci">[0.58, 0.70]</span></b>']]


def test_strips_are_kept_beside_the_page_and_linked_from_its_methods(tmp_path):
    strips = {"input": b"in", "layercam": b"lc", "scorecam": b"sc"}
    first = with_context(results(TWO, dataset="synthetic"))
    written = write_leaderboards(first, tmp_path, strips=strips)
    folder = tmp_path / "synthetic.figure"
    assert {p for p in written if p.suffix == ".png"} == {folder / f"{k}.png" for k in strips}
    later = with_context(results(UPDATE, dataset="synthetic"))
    assert write_leaderboards(later, tmp_path).merged == ("synthetic",)  # without strips
    page = (tmp_path / "synthetic.html").read_text()
    shown = re.findall(r'id="figure-([^"]+)".*?base64,([^"]*)"', page)
    assert [(f, base64.b64decode(d)) for f, d in shown] == [("input", b"in"), ("layercam", b"lc")]
    every = Tables(page).table("Every method at every layer")
    methods = dict(zip((r["data-method"] for r in every.rows), every.html, strict=True))
    assert methods["layercam@2"][0] == '<a href="#figure-layercam">LayerCAM (layer 2)</a>'
    assert methods["tonno"][0] == "ToNNO"  # no strip: no link
    with pytest.raises(ValueError, match="'../x'"):
        write_leaderboards(first, tmp_path, strips={"../x": b""})


def test_method_strips_line_up_and_show_each_heatmaps_sign():
    image = np.random.default_rng(0).normal(size=(3, 16, 16))
    truth = np.zeros((3, 16, 16), bool)
    truth[1, 4:12, 4:12] = True
    up = MethodMaps("up", np.ones((3, 16, 16)), truth)
    down = MethodMaps("down", -np.ones((3, 16, 16)), truth)
    rows = [figure_row(f"v{i}", image, truth, [up, down]) for i in range(2)]
    strips = method_strips(rows, ["layercam@2", "tonno"])
    assert list(strips) == ["input", "layercam", "tonno"]
    pictures = {k: imread(io.BytesIO(png))[..., :3] for k, png in strips.items()}
    assert len({p.shape for p in pictures.values()}) == 1
    height, width, _ = pictures["input"].shape
    y, panel = int(0.59 * height), width / 4  # two volumes, two panels each

    def centre(name, k):
        return pictures[name][y, int((k + 0.5) * panel)]

    np.testing.assert_allclose(centre("layercam", 0), [1, 0, 0], atol=0.02)  # bwr at +max
    np.testing.assert_allclose(centre("tonno", 2), [0, 0, 1], atol=0.02)  # bwr at -max
    green, red = centre("input", 1), centre("tonno", 3)  # the truth and a mask, over the input
    assert green[1] > max(green[0], green[2]) and red[0] > max(red[1], red[2])


# --- in Chromium -----------------------------------------------------------------------------

WITH_MISSING = {**SYNTHETIC, "scorecam@3": (0.2, 0.2, 0.2, np.nan, 0.6)}


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("TONNO_REQUIRE_BROWSER") == "1":
            pytest.fail("TONNO_REQUIRE_BROWSER=1 but chromium is not installed")
        pytest.skip("chromium is not installed (.ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("board")
    write_leaderboards(results(WITH_MISSING), folder)
    return folder / "autopet.html"


def rendered(chromium, page, query: str, profile) -> Tables:
    """The page's DOM after its script ran on ``page.html?query``."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    done = subprocess.run(
        [*args, "--dump-dom", f"{page.as_uri()}?{query}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Tables(done.stdout)


PAPER = ["gradcam_3axis@2", "layercam@1", "layercam@2", "scorecam@3", "tonno"]
PAPER += ["tomographic_layercam@1", "tomographic_layercam@2"]
DICE_DOWN = ["tomographic_layercam@1", "tomographic_layercam@2", "layercam@2", "tonno"]
DICE_DOWN += ["layercam@1", "gradcam_3axis@2", "scorecam@3"]
DICE_UP = ["gradcam_3axis@2", "layercam@1", "layercam@2", "tonno", "tomographic_layercam@1"]
DICE_UP += ["tomographic_layercam@2", "scorecam@3"]  # ties in the paper's order, "–" last
BY_NAME = ["gradcam_3axis@2", "layercam@1", "layercam@2", "scorecam@3"]
BY_NAME += ["tomographic_layercam@1", "tomographic_layercam@2", "tonno"]
BEST = ["gradcam_3axis@2", "layercam@2", "scorecam@3", "tonno", "tomographic_layercam@2"]
BEST_DOWN = ["tomographic_layercam@2", "layercam@2", "tonno", "gradcam_3axis@2", "scorecam@3"]
BEST_UP = ["gradcam_3axis@2", "layercam@2", "tonno", "tomographic_layercam@2", "scorecam@3"]
BEST_BY_NAME = ["gradcam_3axis@2", "layercam@2", "scorecam@3", "tomographic_layercam@2", "tonno"]


@pytest.mark.parametrize(
    "query, sorted_by, order, best, shown",
    [
        ("sort=Dice&dir=paper&layer=none", {}, PAPER, BEST, ["tonno"]),
        ("sort=Dice&dir=desc", {"Dice": "descending"}, DICE_DOWN, BEST_DOWN, PAPER),
        (
            "sort=Dice&dir=asc&family=layercam&layer=2",
            {"Dice": "ascending"},
            DICE_UP,
            BEST_UP,
            ["layercam@2"],
        ),
        ("sort=Method", {"Method": "ascending"}, BY_NAME, BEST_BY_NAME, PAPER),
    ],
    ids=["three-clicks", "dice-down", "dice-up-filtered", "by-name"],
)
def test_chromium_sorts_and_filters_every_table(
    chromium, page, tmp_path, query, sorted_by, order, best, shown
):
    tables = rendered(chromium, page, query, tmp_path / "profile")
    every, table_2 = tables.table("Every method"), tables.table("Table 2 layout")
    assert every.sorted_by == table_2.sorted_by == sorted_by
    assert [r["data-method"] for r in every.rows] == order
    assert [r["data-method"] for r in table_2.rows] == best
    visible = [r["data-method"] for r in every.rows if "hidden" not in r]
    assert visible == [m for m in order if m in shown]
    assert [r["data-method"] for r in table_2.rows if "hidden" not in r] == [
        m for m in best if m in shown
    ]
    cells = dict(zip((r["data-method"] for r in every.rows), every.cells, strict=True))
    dice = every.headers.index("Dice")
    assert cells["tomographic_layercam@2"][dice] == "0.40 ± 0.01"
    assert cells["scorecam@3"][dice] == "–"
