"""Published rows beside the measured ones (published.md/.csv/.tex, a section of report.md and report.html).

For each row of a published table (report/published.py) and each of its targets: the measured row it maps to (same
source, a union of sources in any order, and target; a record matching the row's `measured` backbone, method and
settings; a prepared copy `NAME@WxH` is another source and gets no published row), its mean ± spread over
seeds, the 95% interval of that mean, the published value, the difference measured − published, and whether the
published value lies inside the interval. The interval is the one the report already computes: for two or more
seeds the 95% t interval of the mean over seeds (t_{0.975, n-1} · s / sqrt(n), `--stat ci95`), for one seed its 95%
percentile bootstrap interval over test images (report/bootstrap.py) where the cell kept its per-image file, else
none. Outside means the measured mean differs from the published value at the 5% level, the published value taken as
exact: a published single run also scatters by the seed spread, which this test does not count.

Each line also compares the paper's partial protocol card with the measured row's card (protocol_card.protocol_card), field
by field over the fields the paper's table states: `yes (N fields)` where all agree, `no: FIELDS` where any differs,
`unchecked` where the paper's protocol or the records' card is not on file. Every field of a card decides the number
(a card holds nothing else: no speed knobs), so any difference flags the line; the notes under the table list each
differing field with both values and where the paper's value was read. A measured row scored under one rule and
compared with a paper that reports another (`--select source-val` against `checkpoint: last`) differs in
`checkpoint`.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from ..io import csv_text
from ..labels import CLASS_SETS, NUM_CLASSES
from ..spec import source_parts
from .bootstrap import Interval
from .latex import escape, table_env
from .protocols import flatten
from .published import MEAN, METRICS, PublishedRow, PublishedTable, measured_default
from .records import Score, method_of
from .stats import DASH, DEFAULT_STAT, STAT_NAMES, Agg
from .tables import Layout, Table

HEADER = ["paper row", "target", "measured row", "n", "measured", "95% interval", "published", "Δ", "inside",
          "protocol", "verified"]
TEXT_COLUMNS = (8, 9, 10)  # the columns after the numbers that hold words
CSV_HEADER = ["paper", "table", "file", "source", "paper_row", "target", "metric", "measured_row", "n",
              "measured_mean", "measured_std", "measured_spread", "interval_low", "interval_high", "interval",
              "published", "delta", "inside", "protocol", "differing_fields", "verified", "where"]


@dataclass(frozen=True)
class Comparison:
    """The paper's protocol against a measured card on one target: status yes / no / unchecked, the fields compared,
    and the differing ones as (field, measured value, the paper's Fact)."""
    status: str
    compared: int = 0
    differing: tuple = ()
    why: str = ""

    def text(self) -> str:
        if self.status == "yes":
            return f"yes ({self.compared} field{'s' if self.compared != 1 else ''})"
        if self.status == "no":
            return "no: " + ", ".join(f for f, _, _ in self.differing)
        return f"unchecked: {self.why}" if self.why else DASH


@dataclass(frozen=True)
class Line:
    table: PublishedTable
    row: PublishedRow
    metric: str
    target: str  # a dataset, or MEAN
    measured_row: str  # Score.row, "" where no record matches
    agg: Agg
    interval: tuple[float, float] | None
    interval_kind: str  # "t95", "bootstrap95", "n/a" (a bootstrap file that should be there is not), ""
    published: float | None
    comparison: Comparison
    cards: tuple = field(default=(), compare=False)  # the card hashes of the measured scores

    @property
    def delta(self) -> float | None:
        return None if self.published is None or self.agg.n == 0 else self.agg.mean - self.published

    @property
    def inside(self) -> bool | None:
        if self.published is None or self.interval is None:
            return None
        return self.interval[0] <= self.published <= self.interval[1]


# --- matching ---------------------------------------------------------------------------------------------------

def record_key(cell_id, source, backbone, head, seed) -> tuple:
    """What a Score knows of its record (hand-built records may share a cell id, real ones never)."""
    return cell_id, str(source), str(backbone), str(head), str(seed)


def records_by_score(records: list[dict]) -> dict[tuple, dict]:
    return {record_key(r.get("cell_id", ""), r.get("source"), r.get("backbone"), r.get("head", ""), r.get("seed")): r
            for r in records}


def _config_value(record: dict, key: str):
    section, _, name = key.partition(".")
    values = (record.get("config") or {}).get(section) or {}
    return values[name] if name in values else measured_default(key)


def matches(row: PublishedRow, score: Score, record: dict | None) -> bool:
    sel = row.measured
    if sel is None or record is None or score.backbone not in sel.backbones or method_of(record) != sel.method:
        return False
    return all(_same(_config_value(record, k), v) for k, v in sel.settings.items())


def same_source(measured: str, published: str) -> bool:
    """One source, or the same union of sources in any order (`gta5+synthia`, `synthia+gta5`)."""
    return sorted(source_parts(measured)) == sorted(source_parts(published))


def _same(a, b) -> bool:
    """Equal as data: 2 and 2.0 alike, tuples as lists."""
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


# --- the protocol comparison -----------------------------------------------------------------------------------

def _class_set(value) -> tuple[int, ...] | None:
    if isinstance(value, int) and value == NUM_CLASSES:
        return CLASS_SETS[NUM_CLASSES]
    if isinstance(value, list):
        return tuple(sorted(int(c) for c in value))
    return None


def _measured_fields(card: dict, target: str, head: str, backbone: str) -> dict:
    """The card's fields that concern `target`, as values: the other targets' entries left out; head and
    backbone, which a row's record holds beside its card."""
    flat = flatten({k: v for k, v in card.items() if k != "targets"})
    entry = (card.get("targets") or {}).get(target)
    if entry is not None:
        flat.update(flatten({"targets": {target: entry}}))
    out = {k: json.loads(v) for k, v in flat.items()}
    out.update({"head": head, "backbone": backbone})
    return out


def compare(table: PublishedTable, card: dict | None, targets: list[str], head: str, backbone: str) -> Comparison:
    """The table's protocol and class set against a measured `card` on `targets` (several for the mean)."""
    stated = bool(table.protocol) or table.classes is not None
    if not stated:
        return Comparison("unchecked", why="the paper's protocol is not on file")
    if not card:
        return Comparison("unchecked", why="the records carry no protocol card")
    differing, compared = {}, set()
    for target in targets:
        have = _measured_fields(card, target, head, backbone)
        wanted = {k: f for k, f in table.protocol.items()
                  if not k.startswith("targets.") or k.split(".")[1] == target}
        for key, fact in wanted.items():
            compared.add(key)
            value = have[key] if key in have else measured_default(key)
            if not _same(value, fact.value) and key not in differing:
                differing[key] = (key, value, fact)
        if table.classes is not None:
            key = f"targets.{target}.classes"
            compared.add("classes")
            value = have.get(key)
            if _class_set(value) != CLASS_SETS[table.classes.value] and key not in differing:
                differing[key] = (key, value, table.classes)
    if differing:
        return Comparison("no", len(compared), tuple(differing.values()))
    return Comparison("yes", len(compared))


# --- lines --------------------------------------------------------------------------------------------------------

def _interval(agg: Agg, scores: list[Score], intervals: dict | None, metric: str) -> tuple:
    """((low, high) or None, kind) of the measured value: the t interval over seeds, or one seed's bootstrap."""
    if agg.n > 1:
        return (agg.mean - agg.ci95, agg.mean + agg.ci95), "t95"
    if agg.n == 1 and metric == "miou" and intervals and len(scores) == 1:
        found = intervals.get((scores[0].cell_id, scores[0].target))
        if isinstance(found, Interval):
            return (found.low, found.high), "bootstrap95"
        if found is not None:
            return None, "n/a"
    return None, ""


def _value(score: Score, metric: str) -> float:
    return score.miou if metric == "miou" else score.pixel_acc


def line_values(table: PublishedTable, metric: str, target: str, mine: list[Score]) -> tuple:
    """(Agg over seeds, the scores it came from) of one measured row on `target`; for MEAN the per-seed mean over
    the table's `mean_over`, over the seeds that scored every one of them (as the DG layout's mean)."""
    if target != MEAN:
        chosen = [s for s in mine if s.target == target]
        return Agg.of(_value(s, metric) for s in chosen), chosen
    by_target = [{s.seed: _value(s, metric) for s in mine if s.target == t} for t in table.mean_over]
    seeds = sorted(set.intersection(*(set(d) for d in by_target))) if by_target else []
    return Agg.of(statistics.fmean(d[sd] for d in by_target) for sd in seeds), []


def build_lines(tables: list[PublishedTable], items: list[Score], records: list[dict], cards: dict[str, dict],
                intervals: dict | None = None) -> list[Line]:
    """Every published row and target of `tables` beside the measured rows of `items` (records.scores of
    `records`, selected as the report's tables are); `cards`: hash -> card; `intervals`: bootstrap.cell_intervals."""
    by_key = records_by_score(records)
    out = []
    for table in tables:
        for row in table.rows:
            mine = [s for s in items if same_source(s.source, table.source)
                    and matches(row, s, by_key.get(record_key(s.cell_id, s.source, s.backbone, s.head, s.seed)))]
            measured = list(dict.fromkeys(s.row for s in mine)) or [""]
            for measured_row in measured:
                scores = [s for s in mine if s.row == measured_row]
                for metric, values in row.values.items():
                    for target in [t for t in (*table.targets, MEAN) if t in values]:
                        agg, used = line_values(table, metric, target, scores)
                        interval, kind = _interval(agg, used, intervals, metric)
                        compared = table.mean_over if target == MEAN else [target]
                        shown = [s for s in scores if s.target in compared]
                        if not agg.n:  # nothing measured: nothing to compare
                            comparison = Comparison("none")
                        else:
                            first = shown[0]
                            comparison = compare(table, cards.get(first.card), list(compared), first.head,
                                                 first.backbone)
                        out.append(Line(table, row, metric, target, measured_row, agg, interval, kind,
                                        values[target], comparison, tuple(dict.fromkeys(s.card for s in shown))))
    return out


# --- text ---------------------------------------------------------------------------------------------------------

def target_title(table: PublishedTable, target: str, metric: str) -> str:
    name = f"{MEAN} ({', '.join(table.mean_over)})" if target == MEAN else target
    return name if metric == "miou" else f"{name}, {METRICS[metric]}"


def _number(value: float | None, decimals: int) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


def _interval_md(line: Line) -> str:
    if line.interval is None:
        return "[n/a]" if line.interval_kind == "n/a" else DASH
    return f"[{line.interval[0]:.1f}, {line.interval[1]:.1f}]" + ("ᵇ" if line.interval_kind == "bootstrap95" else "")


def _inside(line: Line) -> str:
    return DASH if line.inside is None else ("yes" if line.inside else "no")


def entries(line: Line, stat: str) -> list[str]:
    """One line's entries, in HEADER's order, as every format prints them."""
    measured = line.agg.md(stat) if line.agg.n else DASH
    delta = DASH if line.delta is None else f"{line.delta:+.1f}"
    return [line.row.label, target_title(line.table, line.target, line.metric), line.measured_row or DASH,
            str(line.agg.n) if line.agg.n else DASH, measured, _interval_md(line),
            _number(line.published, line.table.decimals), delta, _inside(line), line.comparison.text(),
            "yes" if line.row.verified else "no"]


def _shown(value) -> str:
    return json.dumps(value, default=str)


def table_notes(table: PublishedTable, lines: list[Line]) -> str:
    """Under one published table: where its numbers come from, its protocol on file, each differing field."""
    numbers, verified = table.numbers()
    parts = [f"{table.paper.authors}, \"{table.paper.title}\", {table.paper.venue}, arXiv {table.paper.arxiv}; "
             f"{table.table}{f' ({table.page})' if table.page else ''}; train {table.source}. "
             f"{numbers} number(s) on file, {verified} verified in the paper's text.",
             f"Where: {table.where}" + ("" if table.verified else " (not verified: not read in the paper's text)")]
    if table.code:
        parts.append("Code: " + ", ".join(f"{k} {v}" for k, v in table.code.items()))
    if table.note:
        parts.append(f"Note: {table.note}")
    for row in table.rows:
        said = "; ".join(filter(None, [row.where and f"where: {row.where}", row.note and f"note: {row.note}"]))
        if said:
            parts.append(f"{row.label}" + (f" (= {row.measured.text()})" if row.measured else "") + f": {said}")
    facts = dict(table.protocol)
    if table.classes is not None:
        facts["classes"] = table.classes
    if facts:
        parts.append("Protocol on file: " + "; ".join(f"{k} = {_shown(f.value)} ({f.origin}: {f.where})"
                                                      for k, f in facts.items()))
    else:
        parts.append("Protocol on file: none (no line is checked against the measured cards).")
    seen = set()
    for line in lines:
        for key, value, fact in line.comparison.differing:
            said = (line.measured_row, key)
            if said not in seen:
                seen.add(said)
                parts.append(f"Protocol differs, {line.measured_row or 'no row'} (card "
                             f"{', '.join(filter(None, line.cards)) or 'none'}): {key} is {_shown(value)}, the "
                             f"paper's {_shown(fact.value)} ({fact.origin}: {fact.where})")
    return "\n".join(f"- {p}" for p in parts) + "\n"


def legend(stat: str) -> str:
    return ("Δ = measured mean − published value. measured: mean ± " + STAT_NAMES[stat] + " over seeds (n). 95% "
            "interval: the t interval of the measured mean over seeds; with one seed, [low, high]ᵇ is its 95% "
            "bootstrap interval over test images. inside: the published value lies in that interval (no: the "
            "measured mean differs from it at the 5% level, the published value taken as exact). protocol: the "
            "paper's protocol, as far as it is on file, against the measured row's protocol card field by field; "
            "no: FIELDS flags a line measured under another protocol, whose Δ mixes that difference with the "
            "reproduction's own. verified: yes only where the number was read in the paper's own text.\n")


def published_layouts(lines: list[Line], tables: list[PublishedTable],
                      stat: str = DEFAULT_STAT) -> list[tuple[str, Layout]]:
    """One (heading, Layout) per published table: its lines as a Table, its notes, its CSV."""
    out = []
    for table in tables:
        mine = [ln for ln in lines if ln.table is table]
        body = Table("", HEADER, [entries(ln, stat) for ln in mine], [ln.measured_row for ln in mine],
                     source=table.source, labels=3, name=2, text=TEXT_COLUMNS)
        note = ("" if mine else "No published number on file for this table.\n") + table_notes(table, mine)
        out.append((table.heading(), Layout([body] if mine else [], note, csv_text(CSV_HEADER, csv_rows(mine, stat)))))
    return out


def csv_rows(lines: list[Line], stat: str) -> list[list]:
    """published.csv's rows: the numbers unrounded to two decimals, the interval's kind, the differing fields."""
    def num(x):
        return "" if x is None else f"{x:.2f}"

    rows = []
    for ln in lines:
        a, t = ln.agg, ln.table
        low, high = ln.interval if ln.interval else (None, None)
        rows.append([t.paper.short(), t.table, t.key, t.source, ln.row.label, target_title(t, ln.target, "miou"),
                     ln.metric, ln.measured_row, a.n, num(a.mean if a.n else None), num(a.std if a.n > 1 else None),
                     num(a.spread(stat) if a.n > 1 else None), num(low), num(high), ln.interval_kind,
                     "" if ln.published is None else ln.published, num(ln.delta),
                     "" if ln.inside is None else ("yes" if ln.inside else "no"), ln.comparison.status,
                     ";".join(f for f, _, _ in ln.comparison.differing), "true" if ln.row.verified else "false",
                     ln.row.where or t.where])
    return rows


def published_csv(lines: list[Line], stat: str = DEFAULT_STAT, study: str | None = None) -> str:
    """Every line in one CSV; with `study` (a leaderboard), a first column naming it."""
    rows = csv_rows(lines, stat)
    if study is None:
        return csv_text(CSV_HEADER, rows)
    return csv_text(["study", *CSV_HEADER], [[study, *r] for r in rows])


def published_markdown(layouts: list[tuple[str, Layout]], stat: str = DEFAULT_STAT, level: str = "###") -> str:
    """The published tables as markdown: the legend once, then per table a heading, the table and its notes."""
    if not layouts:
        return ""
    parts = [f"{level} {heading}\n\n" + "".join(t.markdown() + "\n" for t in layout.tables) + layout.note
             for heading, layout in layouts]
    return legend(stat) + "\n" + "\n".join(parts)


#: characters of the entries and legend that LaTeX's default encoding lacks, after latex.escape
_TEX = {"Δ": r"$\Delta$", "−": "--", "ᵇ": r"$^b$"}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in escape(text))


def published_tex(lines: list[Line], tables: list[PublishedTable], stat: str = DEFAULT_STAT) -> str:
    """published.tex: one booktabs table per published table with lines, the markdown's entries made LaTeX."""
    out = []
    for table in tables:
        mine = [ln for ln in lines if ln.table is table]
        if not mine:
            continue
        body = [r"\begin{tabular}{" + "l" * 3 + "r" * 5 + "l" * 3 + "}", r"\toprule",
                " & ".join(map(tex, HEADER)) + r" \\", r"\midrule"]
        # "{}" before a row that starts with "[": after \\ it would read as the line's optional spacing argument
        body += [("{}" if ln.row.label.startswith("[") else "") + " & ".join(tex(e) for e in entries(ln, stat))
                 + r" \\" for ln in mine]
        body += [r"\bottomrule", r"\end{tabular}"]
        caption = tex(f"{table.heading()}: published ({table.paper.venue}, arXiv {table.paper.arxiv}) beside "
                      f"measured, train {table.source}. " + " ".join(legend(stat).split()))
        out.append(table_env(caption, f"tab:segbench-published-{table.key}", "\n".join(body)))
    return "\n".join(out) or "% no published rows\n"
