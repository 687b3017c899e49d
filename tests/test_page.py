"""The HTML leaderboard: structure, escaping, Figure 6 strips, and sorting in Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
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

from benchmark.publish.figures import MethodMaps, figure_row, method_strips
from benchmark.publish.leaderboard import write_leaderboards
from benchmark.publish.page import html_page
from benchmark.publish.section import Section


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


# --- the words: a verdict first, a legend of what the tables show ----------------------------

VERDICT = {  # spec: (precision, recall, f1, dice, balanced accuracy), dice's interval
    "layercam@1": ((0.40, 0.30, 0.29, 0.28, 0.70), (0.22, 0.34)),
    "layercam@2": ((0.59, 0.29, 0.35, 0.31, 0.80), (0.25, 0.37)),
    "tonno": ((0.65, 0.41, 0.41, 0.45, 0.74), (0.38, 0.52)),
    "intensity": ((0.30, 0.30, 0.30, 0.40, 0.60), (0.33, 0.47)),
    "centre": ((0.10, 0.10, 0.10, 0.20, 0.50), (0.15, 0.25)),
}


def verdict_rows(auc=(0.91, 0.80, 0.98), tonno_delta=(0.06, 0.22), **dice) -> pd.DataFrame:
    """Made-up rows with Dice intervals, ToNNO's paired interval against LayerCAM and the
    classifier's AUC; ``dice``: other Dice values by spec."""
    frame = results({spec: scores for spec, (scores, _) in VERDICT.items()}, dataset="synthetic")
    frame["dice"] = [dice.get(spec, d) for spec, d in zip(frame.method, frame.dice, strict=True)]
    frame["dice_ci_low"] = [VERDICT[spec][1][0] for spec in frame.method]
    frame["dice_ci_high"] = [VERDICT[spec][1][1] for spec in frame.method]
    tonno = frame.method == "tonno"
    frame["dice_delta_ci_low"] = np.where(tonno, tonno_delta[0], np.nan)
    frame["dice_delta_ci_high"] = np.where(tonno, tonno_delta[1], np.nan)
    return frame.assign(
        classifier_auc=auc[0], classifier_auc_ci_low=auc[1], classifier_auc_ci_high=auc[2]
    )


def opening(folder) -> tuple[str, str]:
    """(the Markdown page's paragraph after its title, the HTML page's verdict markup)."""
    md = (folder / "synthetic.md").read_text().split("\n\n")[1]
    [page] = re.findall(r'<p class="verdict">(.*?)</p>', (folder / "synthetic.html").read_text())
    return md, page


def test_the_page_opens_with_who_learned_who_won_and_by_how_much(tmp_path):
    write_leaderboards(verdict_rows(), tmp_path)
    md, page = opening(tmp_path)
    assert md == (
        "The classifier `resnet10t` learned: validation AUC 0.91 [0.80, 0.98], above chance "
        "(the interval's lower bound exceeds 0.5). The best method by Dice is ToNNO at 0.45 "
        "[0.38, 0.52]: 0.14 above the reference, LayerCAM (layer 2) at 0.31 [0.25, 0.37] (the "
        "paired 95% interval of the difference, [0.06, 0.22], excludes 0), and 0.05 above the "
        "better trivial baseline, Intensity at 0.40 [0.33, 0.47]."
    )
    assert page == md.replace("`resnet10t`", "<code>resnet10t</code>").replace("'", "&#x27;")
    after_title = (tmp_path / "synthetic.html").read_text().split("</h1>")[1]
    assert after_title.lstrip().startswith(f'<p class="verdict">{page}</p>')


def test_the_verdict_says_a_classifier_at_chance_and_a_method_that_loses(tmp_path):
    write_leaderboards(
        verdict_rows(auc=(0.55, 0.40, 0.70), tonno_delta=(-0.02, 0.30), intensity=0.5), tmp_path
    )
    md, _ = opening(tmp_path)
    assert md == (
        "The classifier `resnet10t` has not been shown to learn: validation AUC 0.55 [0.40, 0.70], "
        "an interval that does not lie above chance (0.5), so its heatmaps may explain nothing. "
        "The best method by Dice is ToNNO at 0.45 [0.38, 0.52]: 0.14 above the reference, "
        "LayerCAM (layer 2) at 0.31 [0.25, 0.37] (the paired 95% interval of the difference, "
        "[-0.02, 0.30], includes 0), and 0.05 below the better trivial baseline, Intensity at "
        "0.50 [0.33, 0.47]."
    )


def test_the_verdict_without_a_classifier_a_reference_or_baselines():
    from benchmark.publish.captions import Quote, verdict

    leader = Quote("ToNNO", 0.454)
    assert verdict("Dice", None, leader) == "The best method by Dice is ToNNO at 0.45."
    assert verdict("MaxIoU", None, leader, Quote("ToNNO", 0.454)) == (
        "The best method by MaxIoU is ToNNO at 0.45: it is the reference."
    )
    assert verdict("Dice", None, leader, baseline=Quote("Centre prior", 0.446)) == (
        "The best method by Dice is ToNNO at 0.45: level with the better trivial baseline, "
        "Centre prior at 0.45."
    )
    assert verdict("Dice", None, None) == "No method besides the trivial baselines has a Dice."


LEGEND_ROWS = {**SYNTHETIC, "scorecam@3": (0.2, 0.2, 0.2, np.nan, 0.6)}
LEGEND_ROWS["intensity"] = (0.3, 0.3, 0.3, 0.2, 0.6)
HEADER_NAMES = ("Method", "Precision", "Recall", "F1-score", "Dice", "Balanced accuracy")


def legend_of(page: str) -> dict[str, str]:
    """The HTML legend: {symbol or column: meaning}."""
    [block] = re.findall(r'<dl class="legend">(.*?)</dl>', page)
    pairs = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", block)
    return {re.sub(r"</?b>", "", html.unescape(k)): v for k, v in pairs}


def test_the_legend_explains_each_symbol_and_derived_column_the_tables_show(tmp_path):
    frame = results(LEGEND_ROWS).assign(dice_seed_sd=0.05, classifier_auc=0.9)
    frame["dice_ci_low"], frame["dice_ci_high"] = frame.dice - 0.05, frame.dice + 0.05
    frame["dice_delta_ci_low"] = np.where(frame.method == "tonno", 0.01, -0.1)
    frame["dice_delta_ci_high"] = 0.2
    write_leaderboards(frame, tmp_path)
    page = (tmp_path / "autopet.html").read_text()
    shown = Tables(page)
    cells = [c for t in shown.found for row in t.cells for c in row[1:]]
    names = [row[0] for t in shown.found for row in t.cells]
    headers = {h for t in shown.found for h in t.headers}
    assert "†" in "".join(cells) and "★" in "".join(names) and "–" in cells  # the test's premise
    legend = legend_of(page)
    expected = {
        "bold",
        "±",
        "(seeds ± s)",
        "[low, high]",
        "(+0.06), (=)",
        "†",
        "★",
        "(layer N)",
        "Dice gain over baselines",
        "Dice sd over seeds",
        "Classifier AUC",
        "(paper)",
        "Layer (paper)",
        "–",
    }
    assert set(legend) == expected
    assert {h for h in headers if h.removesuffix(" (paper)") not in HEADER_NAMES} == {
        "Dice gain over baselines",
        "Dice sd over seeds",
        "Classifier AUC",
        "Layer (paper)",
    }  # every derived column is in the legend
    assert "A.8" in legend["★"] and "excludes 0" in legend["†"]
    assert "the better trivial baseline" in legend["Dice gain over baselines"]
    notes = page.split('<dl class="legend">')[0].split("<ul>")[1]
    assert not any(symbol in notes for symbol in ("†", "★", "±", "[low"))  # explained once
    md = (tmp_path / "autopet.md").read_text()
    assert "- `†`: after a difference: its paired bootstrap interval" in md

    plain = results({"tonno": SYNTHETIC["tonno"]}, dataset="synthetic", std=np.nan)
    write_leaderboards(plain, tmp_path)
    assert set(legend_of((tmp_path / "synthetic.html").read_text())) == {"bold"}


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


# scrolls the first wide table to its end and records where its first body cell is
PROBE = """<script>
const wrap = [...document.querySelectorAll(".scroll")].find((w) => w.scrollWidth > w.clientWidth);
const cell = wrap.querySelector("tbody td");
const before = cell.getBoundingClientRect().left;
wrap.scrollLeft = wrap.scrollWidth;
document.body.dataset.probe = JSON.stringify({
  page: document.documentElement.scrollWidth, scrolled: wrap.scrollLeft,
  before, after: cell.getBoundingClientRect().left,
});
</script>"""


def test_chromium_at_1400_px_keeps_the_method_column_in_view(chromium, tmp_path):
    frame = results(WITH_MISSING).assign(classifier_auc=0.9)
    for metric in ("precision", "recall", "f1", "dice", "balanced_accuracy"):
        frame[f"{metric}_seed_sd"] = 0.05
        frame[f"{metric}_ci_low"], frame[f"{metric}_ci_high"] = 0.11, 0.99
    write_leaderboards(frame, tmp_path)
    page = tmp_path / "probed.html"
    page.write_text((tmp_path / "autopet.html").read_text().replace("</body>", PROBE + "</body>"))
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"]
    done = subprocess.run(
        [*args, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [probe] = re.findall(r'data-probe="([^"]*)"', done.stdout)
    probe = json.loads(html.unescape(probe))
    assert probe["page"] <= 1400  # only the tables scroll, not the page
    assert probe["scrolled"] > 100 and probe["after"] == probe["before"]
