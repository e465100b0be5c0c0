"""The paper and domain-generalization layouts as booktabs LaTeX tables (table.tex, dg.tex), ready to \\input.

Each entry is the markdown table's entry (`tables.agg_md`: same aggregates, same rounding, same `(n=k)` marker, and a
one-seed cell's bootstrap interval where table.md shows one) made LaTeX; the best mean per column is bold, compared as
printed (one decimal), so entries a reader sees as tied are all bold, and a column with fewer than two measured rows
has no bold. Needs `\\usepackage{booktabs}` in the paper's preamble.
"""
from __future__ import annotations

import re

from ..spec import is_in_domain
from .bootstrap import Interval, interval_note
from .protocols import footer
from .records import Score
from .stats import DASH, DEFAULT_STAT, Agg
from .tables import agg_md, mean_note_for, dg_aggs, dg_intervals, paper_aggs, paper_intervals, seed_note

# `<`, `>` and `|` are not text characters in LaTeX's default OT1 encoding: its slots 60, 62 and 124 print ¡, ¿ and an
# em dash. \textless, \textgreater and \textbar print them in any encoding (latex3/latex2e base/ltoutenc.dtx:
# \DeclareTextSymbolDefault{\textless}{OML}, \DeclareTextSymbolDefault{\textbar}{OMS};
# \DeclareTextSymbol{\textemdash}{OT1}{124}).
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$", DASH: "--"}
BOLD_NOTE = "Bold: the best mean per column (ties all bold)."


def escape(text: str) -> str:
    """Plain text (row names such as resnet18_ibn_a, footers) -> LaTeX that prints it as written."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def best_rows(column: dict[str, Agg]) -> set[str]:
    """Rows whose printed mean is the column's highest; none when fewer than two rows were measured."""
    printed = {r: round(a.mean, 1) for r, a in column.items() if a.n > 0}
    if len(printed) < 2:
        return set()
    top = max(printed.values())
    return {r for r, m in printed.items() if m == top}


def entry(agg: Agg, stat: str, n_expected: int, bold: bool, interval: Interval | None = None) -> str:
    """`3.7\\,$\\pm$\\,1.5`, `\\textbf{3.7}\\,$\\pm$\\,1.5`, `2.2 (n=1)`, `2.2 [1.9, 2.6]`, `--`: the markdown entry, in
    LaTeX."""
    text = agg_md(agg, stat, n_expected, interval)
    if agg.n == 0:
        return escape(text)
    mean = f"{agg.mean:.1f}"
    rest = escape(text[len(mean):]).replace(r" $\pm$ ", r"\,$\pm$\,")
    return (rf"\textbf{{{mean}}}" if bold else mean) + rest


def tabular(header: list[str], rows: list[str], table: dict, columns: list, stat: str, n_expected: int,
            shown: dict | None = None) -> str:
    """A booktabs tabular: `header` already LaTeX; rows named by escaped row names; one entry per column;
    `shown`: (row, column) -> the bootstrap interval table.md shows there."""
    bold = {c: best_rows({r: table[(r, c)] for r in rows}) for c in columns}
    lines = [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for r in rows:
        name = escape(r)
        cells = [entry(table[(r, c)], stat, n_expected, r in bold[c], (shown or {}).get((r, c))) for c in columns]
        lines.append(" & ".join([("{}" if name.startswith("[") else "") + name, *cells]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def table_env(caption: str, label: str, body: str) -> str:
    label = re.sub(r"[^A-Za-z0-9:-]+", "-", label)
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}", body,
                      r"\end{table}"]) + "\n"


def _caption(words: str, items: list[Score], n_max: int, partial: bool, stat: str, cards: dict,
             shown: dict | None = None) -> str:
    foot = " ".join(footer(items, cards).split("\n")).strip()
    boot = interval_note([i for i in (shown or {}).values() if i is not None]).strip()
    return " ".join(filter(None, [escape(f"{words}{seed_note(items, n_max, partial, stat)}."), escape(boot),
                                  BOLD_NOTE, escape(foot)]))


def paper_tex(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
              intervals: dict[tuple[str, str], Interval] | None = None) -> str:
    """The paper layout (rows backbones, columns `source -> target`) as one booktabs table; `intervals` as in
    tables.paper_layout."""
    rows, cols, aggs = paper_aggs(items)
    if not rows:
        return "% no results yet\n"
    n_max = max(a.n for a in aggs.values())
    partial = any(a.n < n_max for a in aggs.values())
    shown = paper_intervals(items, rows, cols, intervals)
    header = ["backbone"] + [rf"{escape(s)} $\to$ {escape(t)}" for s, t in cols]
    caption = _caption("Cross-domain mIoU (%) over the classes scored in each test set; ", items, n_max, partial,
                       stat, cards or {}, shown)
    return table_env(caption, "tab:segbench-paper", tabular(header, rows, aggs, cols, stat, n_max, shown))


def dg_tex(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
           intervals: dict[tuple[str, str], Interval] | None = None) -> str:
    """The domain-generalization layout: one booktabs table per source (in-domain, unseen targets, their mean);
    `intervals` as in tables.dg_layout."""
    tables = []
    aggs = dg_aggs(items)
    shown_all = dg_intervals(items, aggs, intervals)
    for source, (rows, columns, table) in aggs.items():
        mine = [s for s in items if s.source == source]
        n_max = max(a.n for a in table.values())
        partial = any(a.n < n_max for a in table.values())
        shown = {(r, c): shown_all[(source, r, c)] for r in rows for c in columns}
        header = ["backbone"] + [escape(f"{c} (in-domain)" if is_in_domain(source, c) else c) for c in columns]
        mean_note = mean_note_for(columns)
        caption = _caption(f"Domain generalization, trained on {source}: mIoU (%); {mean_note}", mine, n_max,
                           partial, stat, cards or {}, shown)
        tables.append(table_env(caption, f"tab:segbench-dg-{source}",
                                tabular(header, rows, table, columns, stat, n_max, shown)))
    return "\n".join(tables) or "% no results yet\n"
