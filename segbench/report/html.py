"""report.html (and leaderboard.html): the report's tables as one self-contained page that opens from disk offline.

Nothing is fetched: the CSS and a small sorter are inline, the figures are base64 PNG data URIs, and the only links
are relative paths to each cell's files (record.json, launcher.log, train_log.csv). The tables are the markdown's
(tables.Layout: same entries, same notes); clicking a header sorts by it (entry columns by the mean each entry
starts with, highest first, label columns by text; again reverses). Each row label opens, as a `<details>`, the
protocol card and configuration its numbers were measured under and links to the cells behind them. Every text
taken from records goes through html.escape.
"""
from __future__ import annotations

import base64
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import yaml

from ..cells import LAUNCHER_LOG, RECORD, TRAIN_LOG
from .protocols import readable_card
from .records import Score
from .tables import Layout, Table

#: the files of a cell a row links to, when present (the record always is)
CELL_FILES = (RECORD, LAUNCHER_LOG, TRAIN_LOG)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; }
summary { cursor: pointer; } details[open] > summary { font-weight: bold; }
details pre { background: #f6f6f6; padding: .5em; max-width: 60em; overflow-x: auto; font-size: 12px; }
p.note { margin: .2em 0; color: #444; font-size: 13px; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #444; }
"""

# Sorts a table by the clicked header: data-type="number" columns by the number each entry starts with (the mean
# of "mean ± spread"), others by text; entries with no number (the dash) stay last in both directions.
SORTER_JS = r"""
(function () {
  function key(cell) {
    var k = cell.getAttribute("data-sort");
    return k === null ? cell.textContent.trim() : k;
  }
  function number(text) {
    var m = /^[+-]?\d+(?:\.\d+)?/.exec(text);
    return m ? parseFloat(m[0]) : null;
  }
  function sortBy(table, th, col) {
    var numeric = th.getAttribute("data-type") === "number";
    var now = th.getAttribute("aria-sort");
    var dir = now ? (now === "ascending" ? "descending" : "ascending") : (numeric ? "descending" : "ascending");
    var sign = dir === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.map.call(body.rows, function (row, i) {
      var k = key(row.cells[col]);
      return {row: row, i: i, k: numeric ? number(k) : k};
    });
    rows.sort(function (a, b) {
      if (a.k === null || b.k === null) {
        return (a.k === null) - (b.k === null) || a.i - b.i;
      }
      var c = numeric ? a.k - b.k : a.k.localeCompare(b.k);
      return sign * c || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, th, col); });
    });
  });
})();
"""


def relative_href(path: Path, base: Path) -> str:
    """A link from a page in `base` to `path`: a relative, URL-quoted POSIX path (works from file://)."""
    rel = os.path.relpath(path, base)  # lexical, as the browser resolves "..": symlinked folders stay as named
    return quote(Path(rel).as_posix())


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def _yaml(value) -> str:
    return yaml.safe_dump(json.loads(json.dumps(value, default=str)), sort_keys=False, default_flow_style=None,
                          width=110)


class RowDetails:
    """What a table row was computed from: its protocol card(s), its records' configurations (each distinct one once,
    with its seeds) and links to its cells' files, relative to the page's folder `base`."""

    def __init__(self, records: list[dict], items: list[Score], cards: dict[str, dict], base: Path):
        self.items, self.cards, self.base = items, cards, Path(base)
        self.by_cell: dict[tuple, list[dict]] = defaultdict(list)
        for rec in records:
            self.by_cell[self._key(rec.get("cell_id", ""), rec.get("source"), rec.get("backbone"), rec.get("head", ""),
                                   rec.get("seed"))].append(rec)

    @staticmethod
    def _key(cell_id, source, backbone, head, seed) -> tuple:
        """What a Score knows of its record (hand-built records may share a cell id, real ones never)."""
        return cell_id, str(source), str(backbone), str(head), str(seed)

    def html(self, row: str, source: str = "", target: str = "") -> str:
        mine = [s for s in self.items
                if s.row == row and source in ("", s.source) and target in ("", s.target)]
        parts = []
        for h in dict.fromkeys(s.card for s in mine if s.card):
            parts.append(f"<p>protocol card {escape(h)}</p>" + _pre(_yaml(readable_card(self.cards[h]))))
        if any(not s.card for s in mine):
            parts.append(f"<p>{'some' if parts else 'these'} records carry no protocol card (scored before cards "
                         "were recorded)</p>")
        records = list({id(r): r for s in mine
                        for r in self.by_cell.get(self._key(s.cell_id, s.source, s.backbone, s.head, s.seed), [])
                        }.values())
        configs: dict[str, list[dict]] = defaultdict(list)
        for rec in records:
            configs[json.dumps(rec.get("config", {}), sort_keys=True, default=str)].append(rec)
        for same in configs.values():
            seeds = ", ".join(str(r.get("seed")) for r in same)
            parts.append(f"<p>config (seed{'s' if len(same) > 1 else ''} {escape(seeds)})</p>"
                         + _pre(_yaml(same[0].get("config", {}))))
        parts.append(cell_links(records, self.base))
        return "\n".join(parts)


def cell_links(records: list[dict], base: Path) -> str:
    """One line per record: what it is, and links to its files that exist."""
    items = []
    for rec in records:
        what = f"train {rec.get('source')}, {rec.get('backbone')} + {rec.get('head')}, seed {rec.get('seed')}"
        links = [f'<a href="{escape(relative_href(rec["_dir"] / name, base))}">{escape(name)}</a>'
                 for name in CELL_FILES if "_dir" in rec and (Path(rec["_dir"]) / name).is_file()]
        items.append(f"<li>{escape(what)}: {' · '.join(links) or 'no files'}</li>")
    return f"<ul class=\"cells\">{''.join(items)}</ul>"


Details = Callable[[Table, str], str]


def table_html(table: Table, details: Details | None = None) -> str:
    """A sortable <table>: label columns (and `table.text` ones) as text, the rest as numbers; a row's name cell holds
    its <details> when `details` gives any (none for a row without a key: a published row nothing measured)."""
    types = ["text" if j < table.labels or j in table.text else "number" for j in range(len(table.header))]
    head = "".join(f'<th data-type="{t}" scope="col">{escape(h)}</th>' for h, t in zip(table.header, types))
    body = []
    for key, row in zip(table.keys, table.rows):
        cells = []
        for j, text in enumerate(row):
            if j >= table.labels:
                cells.append(f'<td class="num">{escape(text)}</td>' if types[j] == "number"
                             else f"<td>{escape(text)}</td>")
                continue
            inner = details(table, key) if details and key and j == table.name else ""
            if inner:
                cells.append(f'<td data-sort="{escape(text)}"><details><summary>{escape(text)}</summary>'
                             f"{inner}</details></td>")
            else:
                cells.append(f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    heading = f"<h3>{escape(table.heading)}</h3>\n" if table.heading else ""
    return (f'{heading}<table class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")


def note_html(text: str) -> str:
    return "\n".join(f'<p class="note">{escape(line)}</p>' for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Section:
    title: str
    layout: Layout


def page(title: str, intro: list[str], sections: list[Section], details: Details | None = None,
         figures: dict[str, Path] | None = None, provenance: str = "", tail: str = "") -> str:
    """The whole document. `figures`: caption -> PNG path (inlined); `provenance`: markdown "- " lines; `tail`:
    HTML placed last."""
    body = [f"<h1>{escape(title)}</h1>"] + [f"<p>{escape(line)}</p>" for line in intro]
    for section in sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body += [table_html(t, details) for t in section.layout.tables]
        body.append(note_html(section.layout.note or ("" if section.layout.tables else "(no results yet)")))
    if figures:
        body.append("<h2>Figures</h2>")
        body += [f'<figure><img src="{png_data_uri(path)}" alt="{escape(caption)}">'
                 f"<figcaption>{escape(caption)}</figcaption></figure>" for caption, path in figures.items()]
    if provenance:
        lines = [line.removeprefix("- ") for line in provenance.splitlines() if line.strip()]
        body.append("<h2>Provenance</h2>\n<ul>" + "".join(f"<li>{escape(x)}</li>" for x in lines) + "</ul>")
    body.append(tail)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + f"\n<script>{SORTER_JS}</script>\n</body>\n</html>\n")


def study_page(results_dir: Path, records: list[dict], items: list[Score], cards: dict[str, dict],
               layouts: list[tuple[str, Layout]], status: str, figures: dict[str, Path], provenance: str) -> str:
    """report.html: the study's layouts (section title, layout), figures, provenance, and every cell's files."""
    details = RowDetails(records, items, cards, results_dir)
    return page(Path(results_dir).name, [status], [Section(title, layout) for title, layout in layouts],
                lambda table, key: details.html(key, table.source, table.target), figures, provenance,
                tail="<h2>Cells</h2>\n" + cell_links(records, results_dir))
