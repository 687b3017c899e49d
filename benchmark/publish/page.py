"""The HTML leaderboard: one self-contained page that sorts, filters and links to Figure 6.

It opens with a plain-language paragraph and a legend (:mod:`benchmark.publish.captions`). Inline
CSS and JavaScript, nothing fetched; each table scrolls sideways with its method column
kept in view (readable at 1400 px). A click on a column's header sorts every row of
that table by it (numbers first, best first; again: reversed; a third time: the paper's
order); a family and a layer filter hide rows in every table; each method's name links to
its strip of the Figure 6 layout, embedded at the end as PNG data. The query string does the
same on load, for links and tests: ``autopet.html?family=layercam&layer=2&sort=Dice&dir=asc``
(``dir``: ``asc``, ``desc`` or ``paper``; without it, one click).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

import pandas as pd

from benchmark.publish.captions import BOLD
from benchmark.publish.section import Section

INPUT = "input"  # the strip of the input and its ground truth
WARNING_STYLE = (
    "border: 2px solid #b00; background: #fdd; color: #600; padding: 0.6em 1em; "
    "margin: 1em 0; font-weight: bold"
)
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 2em; }
ul, p { max-width: 60em; }
h2 { font-size: 1.15em; margin: 2em 0 0.5em; }
code { background: #f2f2f2; padding: 0 0.25em; border-radius: 3px; }
.controls { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; align-items: center;
  padding: 0.6em 0; border-top: 1px solid #ddd; border-bottom: 1px solid #ddd; }
.hint { color: #666; }
.verdict { font-size: 1.1em; max-width: 60em; }
.legend { display: grid; grid-template-columns: max-content 1fr; gap: 0.1em 1em;
  max-width: 70em; margin: 0.5em 0 1em; color: #444; }
.legend dt { font-weight: 600; white-space: nowrap; }
.legend dd { margin: 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: separate; border-spacing: 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3em 0.8em; text-align: left; white-space: nowrap;
  border-bottom: 1px solid #e4e4e4; background: #fff; }
th { background: #f5f5f5; vertical-align: bottom; white-space: normal; min-width: 4em; }
th:first-child, td:first-child { position: sticky; left: 0; z-index: 1;
  border-right: 1px solid #ddd; }
tbody tr:hover td { background: #f3f7ff; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid #36c; }
th button::after { content: " \\2195"; opacity: 0.3; }
th[aria-sort=ascending] button::after { content: " \\25B2"; opacity: 1; }
th[aria-sort=descending] button::after { content: " \\25BC"; opacity: 1; }
.ci { color: #888; font-size: 0.85em; }
a { color: #2456b3; }
.strip { display: flex; align-items: center; gap: 1em; margin: 0.25em 0; }
.strip .name { flex: none; width: 16em; text-align: right; }
.strip:target { background: #fff6cc; }
.strip img { max-width: 100%; height: auto; }
"""
SCRIPT = """
"use strict";
const tables = [...document.querySelectorAll("table")];
const family = document.getElementById("family");
const layer = document.getElementById("layer");

function value(row, column, text) {
  const cell = row.cells[column].textContent.trim();
  if (text) return cell;
  const number = cell.match(/^[+-]?\\d+(?:\\.\\d+)?/);
  return number ? parseFloat(number[0]) : null;
}

// Rows by `column` ("ascending", "descending", or "" for the paper's order); no number: last.
function sortTable(table, column, direction) {
  const head = table.tHead.rows[0].cells;
  const text = head[column].dataset.sort === "text";
  const sign = direction === "descending" ? -1 : 1;
  const order = (a, b) => a.dataset.order - b.dataset.order;
  const rows = [...table.tBodies[0].rows].sort((a, b) => {
    if (!direction) return order(a, b);
    const x = value(a, column, text), y = value(b, column, text);
    if (x === null || y === null) return (x === null) - (y === null) || order(a, b);
    return sign * (text ? x.localeCompare(y) : x - y) || order(a, b);
  });
  table.tBodies[0].append(...rows);
  for (const th of head) th.removeAttribute("aria-sort");
  if (direction) head[column].setAttribute("aria-sort", direction);
}

function filter() {
  for (const row of document.querySelectorAll("tbody tr")) {
    row.hidden = (family.value !== "" && row.dataset.family !== family.value)
      || (layer.value !== "" && row.dataset.layer !== layer.value);
  }
}

for (const table of tables) {
  [...table.tHead.rows[0].cells].forEach((th, column) => {
    th.querySelector("button").addEventListener("click", () => {
      const first = th.dataset.sort === "text" ? "ascending" : "descending";
      const other = first === "ascending" ? "descending" : "ascending";
      const next = {[first]: other, [other]: ""}[th.getAttribute("aria-sort")];
      sortTable(table, column, next ?? first);
    });
  });
}
family.addEventListener("change", filter);
layer.addEventListener("change", filter);
document.getElementById("reset").addEventListener("click", () => {
  family.value = layer.value = "";
  filter();
  for (const table of tables) sortTable(table, 0, "");
});

const query = new URLSearchParams(location.search);
if (query.has("family")) family.value = query.get("family");
if (query.has("layer")) layer.value = query.get("layer");
filter();
// sort=HEADER clicks that header of every table (dir=asc, desc or paper: until so)
const wanted = {asc: "ascending", desc: "descending", paper: null}[query.get("dir")];
for (const table of query.has("sort") ? tables : []) {
  const th = [...table.tHead.rows[0].cells].find((h) => h.textContent.trim() === query.get("sort"));
  for (let n = 0; th && n < 3; n++) {
    th.querySelector("button").click();
    if (wanted === undefined || th.getAttribute("aria-sort") === wanted) break;
  }
}
"""


def html_page(
    dataset: str,
    notes: Sequence[str],
    sections: Sequence[Section],
    warning: str | None = None,
    strips: Mapping[str, bytes] | None = None,
    opening: str = "",
    legend: Sequence[tuple[str, str]] = (),
) -> str:
    """The page: title, the warning, the ``opening`` paragraph, notes, the ``legend``
    ((symbol, meaning) pairs), filters, each section's table, then the Figure 6 strips
    (``strips``: family or ``"input"`` to PNG bytes) of the families on the page."""
    rows = pd.concat([x.rows for x in sections], ignore_index=True)
    names = dict(zip(rows.family, rows.family_name, strict=True))
    strips = strips or {}
    shown = {f: strips[f] for f in names if f in strips}  # in the paper's order
    title = f"Leaderboard: {html.escape(dataset)}"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        f"<h1>{title}</h1>",
        *_warning(warning),
        *([f'<p class="verdict">{_markup(opening)}</p>'] if opening else []),
        "<ul>" + "".join(f"<li>{_markup(n)}</li>" for n in notes) + "</ul>",
        *([_legend(legend)] if legend else []),
        _controls(names, rows.layer),
    ]
    for section in sections:
        parts += [f"<h2>{html.escape(section.title)}</h2>", _table(section, set(shown))]
    if shown:
        first = {INPUT: strips[INPUT]} if INPUT in strips else {}
        parts.append(_figure(names, first | shown))
    return "\n".join([*parts, f"<script>{SCRIPT}</script>", "</body>\n</html>\n"])


def _markup(note: str) -> str:
    """A note as HTML: escaped, Markdown's `code` as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(note))


def _legend(legend: Sequence[tuple[str, str]]) -> str:
    """The legend: each symbol or column, then its meaning (``bold`` set in bold)."""
    items = "".join(
        f"<dt>{'<b>bold</b>' if symbol == BOLD else html.escape(symbol)}</dt>"
        f"<dd>{_markup(meaning)}</dd>"
        for symbol, meaning in legend
    )
    return f'<dl class="legend">{items}</dl>'


def _warning(warning: str | None) -> list[str]:
    """The page's first block, a red box; nothing without a warning."""
    if not warning:
        return []
    text = html.escape(warning.strip()).replace("\n", "<br>")
    return [f'<div class="warning" style="{WARNING_STYLE}">Warning: {text}</div>']


def _layer(value) -> str:
    """A row's ``data-layer``: the layer, or ``none`` for layerless methods."""
    return "none" if pd.isna(value) else str(int(value))


def _controls(names: Mapping[str, str], layers: pd.Series) -> str:
    """The family and layer filters, the reset button and how to sort."""
    families = "".join(
        f'<option value="{html.escape(f)}">{html.escape(n)}</option>' for f, n in names.items()
    )
    values = sorted({int(v) for v in layers.dropna()})
    options = [(str(v), str(v)) for v in values]
    if layers.isna().any():
        options.append(("none", "no layer"))
    layer = "".join(f'<option value="{v}">{label}</option>' for v, label in options)
    return (
        '<form class="controls" onsubmit="return false">\n'
        '<label>Method <select id="family"><option value="">all methods</option>'
        f"{families}</select></label>\n"
        f'<label>Layer <select id="layer"><option value="">all layers</option>{layer}'
        "</select></label>\n"
        '<button type="button" id="reset">Show all, paper order</button>\n'
        '<span class="hint">Click a column\'s header to sort by it; again to reverse; '
        "a third time for the paper's order.</span>\n</form>"
    )


def _table(section: Section, linked: set[str]) -> str:
    """One sortable table; each row states its method, family, layer and model."""
    button = '<button type="button">{}</button></th>'
    heads = [
        ('<th data-sort="text">' if i == 0 else "<th>") + button.format(html.escape(str(c)))
        for i, c in enumerate(section.cells.columns)
    ]
    body = []
    for i, (cells, bold, row) in enumerate(
        zip(
            section.cells.itertuples(index=False),
            section.bold.itertuples(index=False),
            section.rows.itertuples(index=False),
            strict=True,
        )
    ):
        link = row.family if row.family in linked and not row.external else None  # our strips
        shown = [_name(str(cells[0]), link), *(_score(str(text)) for text in cells[1:])]
        tds = "".join(
            f"<td><b>{text}</b></td>" if b else f"<td>{text}</td>"
            for text, b in zip(shown, bold, strict=True)
        )
        data = {
            "order": i,
            "method": row.method,
            "family": row.family,
            "layer": _layer(row.layer),
            "model": row.model,
        }
        attributes = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in data.items())
        body.append(f"<tr{attributes}>{tds}</tr>")
    return (
        '<div class="scroll"><table>\n<thead><tr>'
        + "".join(heads)
        + "</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )


def _name(text: str, link: str | None) -> str:
    """A method's name, linked to the Figure 6 strip of family ``link`` (None: no link)."""
    if link is None:
        return html.escape(text)
    return f'<a href="#figure-{html.escape(link)}">{html.escape(text)}</a>'


def _score(text: str) -> str:
    """A score cell's text with its bootstrap interval ``[low, high]`` set apart."""
    return re.sub(r"\[[^\]]*\]", r'<span class="ci">\g<0></span>', html.escape(text))


def _figure(names: Mapping[str, str], strips: Mapping[str, bytes]) -> str:
    """The Figure 6 layout: one strip per family (the input's first), PNG data inline."""
    lines = [
        '<h2 id="figure">Figure 6 layout: heatmaps and masks</h2>',
        "<p>Each method at its best layer (in the run that drew it) on the same validation "
        "volumes, two panels per volume: its heatmap (blue negative, red positive, symmetric "
        "about 0) and its binarised mask over the input.</p>",
    ]
    for family, png in strips.items():
        name = "Input and ground truth" if family == INPUT else names[family]
        data = base64.b64encode(png).decode("ascii")
        lines.append(
            f'<div class="strip" id="figure-{html.escape(family)}">'
            f'<span class="name">{html.escape(name)}</span>'
            f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></div>'
        )
    return "\n".join(lines)
