"""`segbench published [FILE|NAME ...]`: the published numbers on file (experiments/published/), per table: the
paper, the table, what it trained and tested on, how many numbers it holds and how many were read in the paper's own
text; with --rows every row and its numbers, with --unverified only the rows whose numbers were not."""
from __future__ import annotations

import argparse

from ..errors import command
from ..io import markdown_table
from .published import METRICS, PublishedTable, load_all, load_file, published_dir, published_file
from .stats import DASH


def summary(tables: list[PublishedTable]) -> str:
    numbers = sum(t.numbers()[0] for t in tables)
    verified = sum(t.numbers()[1] for t in tables)
    files = len({t.file for t in tables})
    return (f"{numbers} published numbers on file in {len(tables)} table(s) of {files} file(s), {verified} of them "
            f"verified in the paper's own text, {numbers - verified} not (`segbench published --unverified` lists "
            "them with where each was seen)")


def table_rows(tables: list[PublishedTable]) -> str:
    body = [[t.key, f"{t.paper.short()}, {t.table}", f"{t.source} -> {', '.join(t.targets)}", str(len(t.rows)),
             str(t.numbers()[0]), str(t.numbers()[1]), ", ".join(t.experiments) or DASH] for t in tables]
    return markdown_table(["table", "paper", "train -> test", "rows", "numbers", "verified", "experiments"], body,
                          left=3, text=(6,))


def _values(values: dict, decimals: int) -> str:
    return ", ".join(f"{k} {DASH if v is None else f'{v:.{decimals}f}'}" for k, v in values.items())


def row_listing(tables: list[PublishedTable], unverified: bool = False) -> str:
    parts = []
    for t in tables:
        rows = [r for r in t.rows if not (unverified and r.verified)]
        if unverified and not any(r.numbers() for r in rows):
            continue
        lines = [f"### {t.key}: {t.heading()}", "", f"{t.paper.authors}, \"{t.paper.title}\", {t.paper.venue}, "
                 f"arXiv {t.paper.arxiv}. Where: {t.where}"]
        if t.note:
            lines.append(f"Note: {t.note}")
        lines.append("")
        if rows:
            body = [[r.label, r.measured.text() if r.measured else DASH,
                     "; ".join(f"{METRICS[m]}: {_values(v, t.decimals)}" for m, v in r.values.items()),
                     "yes" if r.verified else "no", "; ".join(filter(None, [r.where, r.note])) or DASH]
                    for r in rows]
            lines.append(markdown_table(["row", "segbench row", "numbers", "verified", "where / note"], body,
                                        left=5))
        else:
            lines.append("(no number on file)\n")
        parts.append("\n".join(lines))
    return "\n".join(parts)


@command("segbench published")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench published", description=__doc__,
        epilog=f"files: {published_dir()} (format: segbench/report/published.py); `segbench report DIR` puts the "
               "tables that name the study beside its rows (--published)")
    parser.add_argument("files", nargs="*", metavar="FILE|NAME",
                        help="published-numbers files, by path or shipped name (default: every shipped one)")
    parser.add_argument("--rows", action="store_true", help="every row with its numbers, its segbench row and where "
                                                            "it was read")
    parser.add_argument("--unverified", action="store_true",
                        help="only the rows whose numbers were not read in the paper's own text (implies --rows)")
    parser.add_argument("--experiment", metavar="NAME", help="only the tables that name this experiment file (stem)")
    args = parser.parse_args(argv)
    tables = [t for f in args.files for t in load_file(published_file(f))] if args.files else load_all()
    if args.experiment:
        tables = [t for t in tables if args.experiment in t.experiments]
    print(summary(tables) + ".\n")
    print(table_rows(tables))
    if args.rows or args.unverified:
        print(row_listing(tables, unverified=args.unverified))
    return 0
