"""`segbench report DIR1 DIR2 ... --out BOARD`: one table over several studies (leaderboard.md, .csv, .html).

The paper layout (rows x train/test pairs, mean ± spread over seeds), with one row per study and row of that study:
rows are never merged across studies, so seeds are only averaged where each study's own report averages them (same
config, same protocol card for the target: records.scores), and the same cell found in two studies is never counted
twice. The `protocol` column names each row's card hash(es) (protocols.card_hash): rows with the same hash in a
column were measured the same way; the footer names, per source, the fields in which the cards of the rows differ.
With published tables (`published`: auto, the tables naming each study; or a file, for every study), each study's
published rows stand beside its measured ones as in its own report (report/reproduced.py): a section of
leaderboard.md and .html per study and table, and published.csv with a study column.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..cells import CELLS
from ..io import csv_text, write_text
from ..record import load_records
from .bootstrap import cell_intervals
from .html import RowDetails, Section, page
from .protocols import card_hash, card_of, cards_section, footer
from .published import AUTO, resolve
from .records import Score, scores
from .reproduced import CSV_HEADER, build_lines, csv_rows, legend, published_layouts
from .stats import DASH, DEFAULT_STAT, STAT_NAMES, csv_fields
from .tables import Layout, Table, col_title, paper_aggs, seed_list, seed_note

SEPARATOR = " / "  # between a study's name and its row in a leaderboard row's name


def study_names(results_dirs: list[Path]) -> list[str]:
    """Each study by its directory name, or by the path as given where two directories share a name."""
    names = [Path(d).name for d in results_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in results_dirs]


def check_dirs(results_dirs: list[Path]) -> None:
    if not results_dirs:
        raise ValueError("a leaderboard needs at least one results directory (results/NAME)")
    for d in results_dirs:
        if not (Path(d) / CELLS).is_dir():
            raise ValueError(f"{d} holds no {CELLS}/ directory: pass the directories studies wrote (results/NAME)")
    resolved = [Path(d).resolve() for d in results_dirs]
    twice = sorted({str(d) for d in resolved if resolved.count(d) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given more than once: name each results directory once")


def board_items(studies: dict[str, list[Score]]) -> tuple[list[Score], dict[str, tuple[str, str]]]:
    """Every study's scores with its row renamed `STUDY / ROW`, and each such name -> (study, row)."""
    items, names = [], {}
    for study, mine in studies.items():
        for s in mine:
            key = f"{study}{SEPARATOR}{s.row}"
            if names.setdefault(key, (study, s.row)) != (study, s.row):
                raise ValueError(f"leaderboard row {key!r} names two rows: rename a results directory so that no "
                                 f"study name contains {SEPARATOR!r}")
            items.append(replace(s, row=key))
    return items, names


def leaderboard_layout(studies: dict[str, list[Score]], cards: dict[str, dict], stat: str = DEFAULT_STAT) -> Layout:
    """`studies`: name -> its scores (records.scores of that study alone). Rows: (study, row); columns: every
    train/test pair of any study; a CSV with the study, row and protocol columns, then mean, std (and `stat`), n."""
    items, names = board_items(studies)
    keys, cols, aggs = paper_aggs(items)
    if not keys:
        return Layout()
    # a row's `(n=k)` counts against its own study's seeds: a study run with one seed is whole, not unfinished
    n_study = {study: max(aggs[(k, c)].n for k in keys if names[k][0] == study for c in cols) for study in studies
               if any(names[k][0] == study for k in keys)}
    n_row = {k: n_study[names[k][0]] for k in keys}
    labels = []
    for key in keys:
        hashes = dict.fromkeys(s.card for s in items if s.row == key and s.card)
        labels.append([*names[key], ", ".join(hashes) or DASH])
    body = [label + [aggs[(k, c)].md(stat, n_expected=n_row[k]) for c in cols] for k, label in zip(keys, labels)]
    table = Table("", ["study", "row", "protocol"] + [col_title(c) for c in cols], body, keys, labels=3,
                  name=1)
    csv_header = ["study", "row", "protocol"] + [f"{col_title(c)} {k}" for c in cols
                                                 for k in ("mIoU", *csv_fields(stat))]
    csv_rows = [label + [v for c in cols for v in aggs[(k, c)].csv(stat)] for k, label in zip(keys, labels)]
    partial = any(aggs[(k, c)].n < n_row[k] for k in keys for c in cols)
    seeds = board_seed_note(studies, n_study, partial, stat)
    protocols = footer(items, cards, printed_in="leaderboard.md")  # each study's report.md prints its own
    note = (f"mIoU (%) over the classes scored in each test set; {seeds}; rows are never merged across studies.\n"
            + protocols)
    return Layout([table], note, csv_text(csv_header, csv_rows))


def board_seed_note(studies: dict[str, list[Score]], n_study: dict[str, int], partial: bool, stat: str) -> str:
    """The footer's words on seeds: one study's phrase when every study has the same number of seeds, else each
    study's count and seeds."""
    if len(set(n_study.values())) == 1:
        mine = [s for study in n_study for s in studies[study]]
        return seed_note(mine, next(iter(n_study.values())), partial, stat, "only k seeds finished in that study")
    each = "; ".join(f"{study}: {n} ({seed_list(s.seed for s in studies[study])})" for study, n in n_study.items())
    note = f"mean ± {STAT_NAMES[stat]} over each study's seeds ({each}); a study with one seed shows its mean alone"
    return note + ("; (n=k): only k seeds finished in that study" if partial else "")


def board_published(names: list[str], results_dirs: list[Path], records: dict[str, list[dict]],
                    studies: dict[str, list[Score]], cards: dict[str, dict], published, stat: str) -> tuple:
    """(markdown section, CSV, [(heading, Layout)] for the page) of every study's published tables; each line's key
    is the board's row name (`STUDY / ROW`), so the page opens that row's details."""
    sections, csv_body, shown = [], [], []
    for name, d in zip(names, results_dirs):
        tables = resolve(published, Path(d).name)
        if not tables:
            continue
        lines = build_lines(tables, studies[name], records[name], cards, cell_intervals(records[name]))
        csv_body += [[name, *row] for row in csv_rows(lines, stat)]
        for heading, layout in published_layouts(lines, tables, stat):
            layout = replace(layout, tables=[replace(t, keys=[f"{name}{SEPARATOR}{k}" if k else "" for k in t.keys])
                                             for t in layout.tables])
            shown.append((f"{name}: {heading}", layout))
            sections.append(f"### {name}: {heading}\n\n" + "".join(t.markdown() + "\n" for t in layout.tables)
                            + layout.note)
    if not sections:
        return "", "", []
    return legend(stat) + "\n" + "\n".join(sections), csv_text(["study", *CSV_HEADER], csv_body), shown


def build_leaderboard(results_dirs: list[Path], out: Path, stat: str = DEFAULT_STAT, published=AUTO) -> str:
    """Write leaderboard.md, .csv and .html under `out` (nothing under the studies), and published.csv where
    published tables apply (`published`: see published.resolve); return the markdown table."""
    check_dirs(results_dirs)
    out = Path(out)
    names = study_names(results_dirs)
    for d in results_dirs:  # a bad published file stops the board before it writes
        resolve(published, Path(d).name)
    records = {name: load_records(Path(d)) for name, d in zip(names, results_dirs)}
    studies = {name: scores(recs) for name, recs in records.items()}
    cards = {card_hash(c): c for recs in records.values() for c in map(card_of, recs) if c}
    layout = leaderboard_layout(studies, cards, stat)
    items, rows = board_items(studies)
    intro = "Studies: " + ", ".join(f"{n} ({d})" for n, d in zip(names, results_dirs)) + "."
    protocols = cards_section(items, cards)
    published_md, published_text, published_shown = board_published(names, results_dirs, records, studies, cards,
                                                                     published, stat)
    md = f"# Leaderboard\n\n{intro}\n\n{layout.markdown()}"
    md += f"\n## Published numbers\n\n{published_md}" if published_md else ""
    md += f"\n## Protocol cards\n\n{protocols}" if protocols else ""
    details = {n: RowDetails(records[n], studies[n], cards, out) for n in names}

    def row_details(table: Table, key: str) -> str:
        study, row = rows[key]
        return details[study].html(row, table.source, table.target)

    write_text(out / "leaderboard.md", md)
    write_text(out / "leaderboard.csv", layout.csv)
    if published_text:
        write_text(out / "published.csv", published_text)
    sections = [Section("Leaderboard", layout)] + [Section(f"Published, {h}", lay) for h, lay in published_shown]
    write_text(out / "leaderboard.html", page("Leaderboard", [intro], sections, row_details))
    return layout.markdown()
