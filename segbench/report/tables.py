"""The published layouts, as markdown (GitHub-flavoured) and CSV, from flat scores.

- paper: rows backbones, columns train/test pairs (IBN-Net's cross-domain table)
- dg: per source, rows backbones, columns the targets and their mean over unseen targets (RobustNet's table)
- per-class: per train/test pair, rows backbones, columns the scored classes

Under table.md and dg.md a footer names the protocol card of each source's numbers (report/protocols.py). Where a
row has a single seed on a target, those two layouts show the cell's bootstrap interval over test images
(report/bootstrap.py) in place of the spread over seeds it cannot have, when the cell kept its per-image matrices.
Each layout is first built as data (`Layout`: tables of printed entries, the note under them, the CSV), so the
markdown and the HTML page (report/html.py) print the same entries.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from ..io import csv_text, markdown_table
from ..labels import CLASS_NAMES
from ..spec import is_in_domain, scoring_view, view_name
from .bootstrap import Interval, MissingInterval, interval_note
from .protocols import footer
from .records import Score, ordered_pairs, ordered_rows, scores_by_cell
from .stats import DASH, DEFAULT_STAT, Agg, csv_fields, stat_phrase

MEAN_UNSEEN = "mean (unseen)"


@dataclass(frozen=True)
class Table:
    """One table as printed: `rows` hold the entries as text, their first `labels` columns name the row (column
    `name` the row itself); `keys` is the Score.row each body row shows and `source`/`target` what its numbers were
    trained and tested on ("" for several), so a renderer can link a row to its records; `text`: columns after the
    labels that hold words, not numbers (a renderer neither right-aligns nor sorts them as numbers)."""
    heading: str
    header: list[str]
    rows: list[list[str]]
    keys: list[str]
    source: str = ""
    target: str = ""
    labels: int = 1
    name: int = 0
    text: tuple[int, ...] = ()

    def markdown(self) -> str:
        table = markdown_table(self.header, self.rows, left=self.labels, text=self.text)
        return f"### {self.heading}\n\n{table}" if self.heading else table


@dataclass(frozen=True)
class Layout:
    """A layout as data: its tables, the note printed under them, and its CSV."""
    tables: list[Table] = field(default_factory=list)
    note: str = ""
    csv: str = ""

    def markdown(self) -> str:
        if not self.tables:
            return "(no results yet)\n"
        return "\n".join(t.markdown() for t in self.tables) + "\n" + self.note


def col_title(col: tuple[str, str]) -> str:
    return f"train {col[0]} / test {col[1]}"


def seed_list(seeds) -> str:
    """Seeds as a footer lists them: a run of more than three consecutive seeds as FIRST-LAST ("0-299", "0, 1, 2",
    "0-3, 7"), so a study of 300 seeds gets one short line and the short lists of small studies read as before."""
    seeds, runs = sorted(set(seeds)), []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 3 else ", ".join(map(str, r)) for r in runs)


def seed_note(items: list[Score], n_max: int, partial: bool, stat: str = DEFAULT_STAT,
              why_fewer: str = "only k seeds finished") -> str:
    """`partial`: some cell has fewer seeds than n_max, so its '(n=k)' marker needs explaining (`why_fewer`)."""
    seeds = seed_list(s.seed for s in items)
    if n_max > 1:
        note = f"{stat_phrase(stat, n_max)} ({seeds})"
        return note + (f"; (n=k): {why_fewer}" if partial else "")
    return f"one seed ({seeds})"


def one_seed_interval(seeds: dict[int, Score], intervals: dict | None) -> Interval | MissingInterval | None:
    """The bootstrap interval of a table cell that one seed's mIoU makes up, if that cell kept its per-image file
    (MISSING where it should have one and it cannot be used)."""
    measured = [s for s in seeds.values() if not math.isnan(s.miou)]
    if not intervals or len(measured) != 1:
        return None
    return intervals.get((measured[0].cell_id, measured[0].target))


def agg_md(agg: Agg, stat: str, n_max: int, interval: Interval | MissingInterval | None) -> str:
    """Agg.md, with a one-seed cell's bootstrap interval where the spread would stand: `41.2 [39.8, 42.5]`, or
    `41.2 [n/a]` where it is missing."""
    if interval is None:
        return agg.md(stat, n_expected=n_max)
    return f"{agg.mean:.1f} {interval.md()}" + (f" (n={agg.n})" if agg.n != n_max else "")


def interval_fields(shown) -> list[str]:
    """The CSV's interval columns: only in a table that shows an interval, so older studies keep their columns."""
    return ["bootstrap low", "bootstrap high"] if any(isinstance(i, Interval) for i in shown) else []


def interval_csv(interval: Interval | MissingInterval | None, fields: list[str]) -> list[str]:
    return [] if not fields else interval.csv() if interval is not None else ["", ""]


# --- paper layout ----------------------------------------------------------------------------------------------------

def paper_aggs(items: list[Score]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """(rows, (source, target) columns, {(row, column): Agg}): what the paper layout shows, in any format."""
    rows, cols, cells = ordered_rows(items), ordered_pairs(items), scores_by_cell(items)
    return rows, cols, {(r, c): Agg.of(s.miou for s in cells.get((r, *c), {}).values()) for r in rows for c in cols}


def paper_intervals(items: list[Score], rows: list[str], cols: list[tuple[str, str]],
                    intervals: dict[tuple[str, str], Interval] | None) -> dict:
    """(row, column) -> the bootstrap interval the paper layout shows there (one-seed cells), in every format."""
    cells = scores_by_cell(items)
    return {(r, c): one_seed_interval(cells.get((r, *c), {}), intervals) for r in rows for c in cols}


def paper_layout(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
                 intervals: dict[tuple[str, str], Interval] | None = None) -> Layout:
    """The paper layout; the CSV keeps mean, std (and `stat`) and n per column as numbers.
    `cards`: hash -> protocol card, for the footer; `stat`: the spread after ± (stats.STATS); `intervals`:
    (cell_id, target) -> bootstrap interval (bootstrap.cell_intervals), shown for one-seed cells."""
    rows, cols, aggs = paper_aggs(items)
    if not rows:
        return Layout()
    n_max = max(a.n for a in aggs.values())
    shown = paper_intervals(items, rows, cols, intervals)
    boot = interval_fields(shown.values())
    md_rows = [[r] + [agg_md(aggs[(r, c)], stat, n_max, shown[(r, c)]) for c in cols] for r in rows]
    csv_header = ["backbone"] + [f"{col_title(c)} {k}" for c in cols for k in ("mIoU", *csv_fields(stat), *boot)]
    csv_rows = [[r] + [v for c in cols for v in aggs[(r, c)].csv(stat) + interval_csv(shown[(r, c)], boot)]
                for r in rows]
    table = Table("", ["backbone"] + [col_title(c) for c in cols], md_rows, rows)
    partial = any(a.n < n_max for a in aggs.values())
    note = (f"mIoU (%) over the classes scored in each test set; {seed_note(items, n_max, partial, stat)}.\n"
            + interval_note([i for i in shown.values() if i is not None]))
    return Layout([table], note + footer(items, cards or {}), csv_text(csv_header, csv_rows))


def paper(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
          intervals: dict[tuple[str, str], Interval] | None = None) -> tuple[str, str]:
    """(markdown, csv) of `paper_layout`."""
    layout = paper_layout(items, cards, stat, intervals)
    return layout.markdown(), layout.csv


# --- domain-generalization layout ------------------------------------------------------------------------------------

def unseen_means(source: str, targets: list[str]) -> dict[str, list[str]]:
    """mean column -> the unseen targets it averages (two at least): MEAN_UNSEEN over those scored under the cells'
    own protocol, `MEAN_UNSEEN~P` over the views scored under protocol P (`eval.geometries`): two geometries are
    never averaged together."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        if t in groups or is_in_domain(source, t):
            continue
        protocol = scoring_view(t)[1]
        groups.setdefault(MEAN_UNSEEN if protocol is None else view_name(MEAN_UNSEEN, protocol), []).append(t)
    return {mean: members for mean, members in groups.items() if len(members) > 1}


def is_mean(column: str) -> bool:
    return scoring_view(column)[0] == MEAN_UNSEEN


def dg_aggs(items: list[Score]) -> dict[str, tuple[list[str], list[str], dict]]:
    """source -> (rows, columns, {(row, column): Agg}); columns = in-domain (the source, or each part of a
    multi-source one), unseen targets, their mean; then each view protocol's targets and their mean (`unseen_means`).

    A mean is taken per seed over its targets, then aggregated over the seeds that scored every one of them, so its
    std is the spread of the average (not a mix of target spreads).
    """
    cells = scores_by_cell(items)
    out = {}
    for source in sorted({s.source for s in items}):
        mine = [s for s in items if s.source == source]
        rows = ordered_rows(mine)
        scored = [t for _, t in ordered_pairs(mine)]  # in-domain first, then the targets in the spec's order
        means = unseen_means(source, scored)
        columns = []
        for protocol in dict.fromkeys(scoring_view(t)[1] for t in scored):  # the cells' own protocol, then views
            columns += [t for t in scored if scoring_view(t)[1] == protocol]
            columns += [m for m in means if scoring_view(m)[1] == protocol]
        table = {}
        for r in rows:
            for t in scored:
                table[(r, t)] = Agg.of(s.miou for s in cells.get((r, source, t), {}).values())
            for mean, members in means.items():
                seeds = set.intersection(*(set(cells.get((r, source, t), {})) for t in members))
                table[(r, mean)] = Agg.of(statistics.fmean(cells[(r, source, t)][sd].miou for t in members)
                                          for sd in sorted(seeds))
        out[source] = (rows, columns, table)
    return out


def mean_note_for(columns: list[str]) -> str:
    """What the mean columns average, for a table's note; "" without one."""
    if not any(is_mean(c) for c in columns):
        return ""
    views = any(is_mean(c) and scoring_view(c)[1] for c in columns)
    return (f"{MEAN_UNSEEN} = average over the targets other than the source, taken per seed"
            + (f" ({view_name(MEAN_UNSEEN, 'P')}: over their views under eval protocol P)" if views else "") + "; ")


def dg_intervals(items: list[Score], aggs: dict, intervals: dict[tuple[str, str], Interval] | None) -> dict:
    """(source, row, column) -> the bootstrap interval the DG layout (`aggs`: dg_aggs) shows there, in every format."""
    cells = scores_by_cell(items)
    return {(source, r, c): one_seed_interval(cells.get((r, source, c), {}), intervals)
            for source, (rows, columns, _) in aggs.items() for r in rows for c in columns}


def dg_layout(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
              intervals: dict[tuple[str, str], Interval] | None = None) -> Layout:
    """The DG layout; `intervals` as in `paper_layout` (none for the mean over unseen targets)."""
    tables, n_all, partial = [], 0, False
    aggs = dg_aggs(items)
    shown = dg_intervals(items, aggs, intervals)
    boot = interval_fields(shown.values())
    csv_rows = []
    for source, (rows, columns, table) in aggs.items():
        n_max = max(a.n for a in table.values())
        n_all = max(n_all, n_max)
        partial = partial or any(a.n < n_max for a in table.values())
        titles = [f"{c} (in-domain)" if is_in_domain(source, c) else c for c in columns]
        body = [[r] + [agg_md(table[(r, c)], stat, n_max, shown[(source, r, c)]) for c in columns] for r in rows]
        tables.append(Table(f"trained on {source}", ["backbone"] + titles, body, rows, source=source))
        csv_rows += [[source, r, c, *table[(r, c)].csv(stat), *interval_csv(shown[(source, r, c)], boot)]
                     for r in rows for c in columns]
    if not tables:
        return Layout()
    mean_note = mean_note_for([c for _, cols, _ in aggs.values() for c in cols])
    note = (f"mIoU (%); {mean_note}{seed_note(items, n_all, partial, stat)}.\n"
            + interval_note([i for i in shown.values() if i is not None]) + footer(items, cards or {}))
    return Layout(tables, note, csv_text(["source", "backbone", "target", "mIoU", *csv_fields(stat), *boot], csv_rows))


def dg(items: list[Score], cards: dict[str, dict] | None = None, stat: str = DEFAULT_STAT,
       intervals: dict[tuple[str, str], Interval] | None = None) -> tuple[str, str]:
    layout = dg_layout(items, cards, stat, intervals)
    return layout.markdown(), layout.csv


# --- per-class IoU ---------------------------------------------------------------------------------------------------

def class_order(items: list[Score]) -> list[str]:
    names = {k for s in items for k in s.per_class}
    return [c for c in CLASS_NAMES if c in names] + sorted(names - set(CLASS_NAMES))


def absent_classes(items: list[Score], absent: dict | None) -> dict[tuple[str, str], list[str]]:
    """(source, target) -> the classes no ground-truth pixel of the target holds, for every score of the column
    (`absent`: (cell_id, target) -> class names, bootstrap.absent_from_ground_truth; a score it does not know keeps
    every class in its column)."""
    out = {}
    for col in ordered_pairs(items):
        known = [absent.get((s.cell_id, s.target)) for s in items if (s.source, s.target) == col] if absent else [None]
        if all(k is not None for k in known):
            out[col] = [c for c in class_order(items) if all(c in k for k in known)]
    return out


def per_class_aggs(items: list[Score], absent: dict | None = None,
                   ) -> dict[tuple[str, str], tuple[list[str], list[str], dict]]:
    """(source, target) -> (rows, classes scored there, {(row, class): Agg}); unscored classes dropped, and classes
    absent from the target's ground truth (`absent_classes`): a model that predicts one scores IoU 0 on it, a number
    about the data, not about the class."""
    cells = scores_by_cell(items)
    unlabelled = absent_classes(items, absent)
    out = {}
    for col in ordered_pairs(items):
        mine = [s for s in items if (s.source, s.target) == col]
        rows = ordered_rows(mine)
        table = {(r, c): Agg.of(s.per_class.get(c, math.nan) for s in cells.get((r, *col), {}).values())
                 for r in rows for c in class_order(mine)}
        classes = [c for c in class_order(mine) if any(table[(r, c)].n for r in rows)
                   and c not in unlabelled.get(col, ())]
        for r in rows:
            table[(r, "mIoU")] = Agg.of(s.miou for s in cells.get((r, *col), {}).values())
        out[col] = (rows, classes, table)
    return out


def absent_note(items: list[Score], absent: dict | None) -> str:
    """The line under the per-class tables naming the classes left out as absent from a target's ground truth (only
    those some score has a number for: the others were never in a table)."""
    scored = {(s.source, s.target, c) for s in items for c, v in s.per_class.items() if not math.isnan(v)}
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for (source, target), classes in absent_classes(items, absent).items():
        shown = tuple(c for c in classes if (source, target, c) in scored)
        if shown and target not in by_classes.setdefault(shown, []):
            by_classes[shown].append(target)
    if not by_classes:
        return ""
    parts = "; ".join(f"test {', '.join(targets)}: {', '.join(classes)}" for classes, targets in by_classes.items())
    return (f"Not in the test split's ground truth, so left out ({parts}); a pixel predicted as one of them still "
            "counts in the mIoU, at IoU 0.\n")


def zero_note(items: list[Score], aggs: dict, absent: dict | None) -> str:
    """The line under the per-class tables naming the classes at 0.0 in every row of a table: in the test split's
    ground truth (where the per-image files say so), yet no model predicted one pixel of them right (thin or rare
    classes after a short training: the embedded default's 80 iterations from scratch)."""
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for (_, target), (rows, classes, table) in aggs.items():
        zeros = tuple(c for c in classes if all(table[(r, c)].n and table[(r, c)].mean == 0 for r in rows))
        if zeros and target not in by_classes.setdefault(zeros, []):
            by_classes[zeros].append(target)
    if not by_classes:
        return ""
    parts = "; ".join(f"test {', '.join(targets)}: {', '.join(classes)}" for classes, targets in by_classes.items())
    known = absent_classes(items, absent)  # the columns whose ground truth the per-image files describe
    if all(col in known for col in aggs):
        why = "labelled in the test split, yet no model predicted a pixel of them right (thin or rare classes after " \
              "a short training)"
    else:
        why = "no model predicted a pixel of them right, or they are absent from the test split's ground truth yet " \
              "predicted (without the cells' confusion/*.npz files the report cannot tell which)"
    return f"0.0 in every row ({parts}): {why}; the mIoU averages them in.\n"


def per_class_layout(items: list[Score], stat: str = DEFAULT_STAT, absent: dict | None = None) -> Layout:
    """Same statistic as the other tables; (n=k) marks a class defined in fewer of the row's seeds than usual.
    `absent`: classes absent from a target's ground truth (`per_class_aggs`), named in the note."""
    tables, csv_rows, n_all, partial = [], [], 0, False
    aggs = per_class_aggs(items, absent)
    for col, (rows, classes, table) in aggs.items():
        n_max = max(a.n for a in table.values())
        n_all = max(n_all, n_max)
        partial = partial or any(0 < a.n < n_max for a in table.values())
        header = ["backbone"] + classes + ["mIoU"]
        body = [[r] + [table[(r, c)].md(stat, n_expected=n_max)
                       for c in classes + ["mIoU"]] for r in rows]
        tables.append(Table(col_title(col), header, body, rows, source=col[0], target=col[1]))
        csv_rows += [[*col, r, c, *table[(r, c)].csv(stat)] for r in rows for c in classes + ["mIoU"]]
    if not tables:
        return Layout()
    seeds = seed_note(items, n_all, partial, stat, "only k seeds finished or define the class")
    note = f"IoU (%) per class; {seeds}; {DASH} = class absent from both ground truth and prediction.\n"
    return Layout(tables, note + absent_note(items, absent) + zero_note(items, aggs, absent),
                  csv_text(["source", "target", "backbone", "class", "IoU", *csv_fields(stat)], csv_rows))


def per_class(items: list[Score], stat: str = DEFAULT_STAT, absent: dict | None = None) -> tuple[str, str]:
    layout = per_class_layout(items, stat, absent)
    return layout.markdown(), layout.csv


def per_seed(items: list[Score]) -> str:
    """Every measurement, unaggregated: what the tables are computed from. `row` names the table row it counts in:
    backbone, head, source, target and seed alone do not tell two methods or two settings of one backbone apart."""
    rows = [[s.backbone, s.head, s.source, s.target, s.seed, f"{s.miou:.4f}", f"{s.pixel_acc:.4f}", s.cell_id, s.row]
            for s in items]
    return csv_text(["backbone", "head", "source", "target", "seed", "miou", "pixel_acc", "cell_id", "row"], rows)
