"""`segbench report RESULTS_DIR`: rebuild every table and figure from the records a study wrote.

`segbench report DIR1 DIR2 ... --out BOARD` writes a leaderboard over several studies instead (leaderboard.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cells import CELLS
from ..errors import command
from .build import build_report
from .leaderboard import build_leaderboard, check_dirs
from .published import AUTO, NONE
from .selection import ALL, LAST, RULES
from .stats import DEFAULT_STAT, STAT_NAMES, STATS


@command("segbench report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench report", description=__doc__.splitlines()[0],
        epilog="Each run rewrites the report as one set, under the options given: a file an earlier run wrote that "
               "this one does not (paired.* without --baseline, selection.* without --select all, the figures with "
               "--no-plot) is removed. Keep a variant apart by copying the folder first.")
    parser.add_argument("results_dirs", type=Path, nargs="+", metavar="results_dir")
    parser.add_argument("--out", type=Path, metavar="BOARD",
                        help="write a leaderboard over every results_dir (BOARD/leaderboard.md/.csv/.html: one row per "
                             "study and row, never merged across studies) instead of one study's report; needed "
                             "with more than one results_dir")
    parser.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")
    parser.add_argument("--stat", choices=STATS, default=DEFAULT_STAT,
                        help="spread after ±: " + "; ".join(f"{k}: {v}" for k, v in STAT_NAMES.items()).replace(
                            "%", "%%") + f" (default {DEFAULT_STAT})")  # argparse formats help with %
    parser.add_argument("--baseline", metavar="BACKBONE|METHOD",
                        help="add paired.md/.csv/.png: per row and target, the mean per-seed difference to this "
                             "backbone's row, or to this method's row on the same backbone (--baseline erm), of the "
                             "same source, head and protocol, with a paired 95%% t interval")
    parser.add_argument("--format", choices=("markdown", "latex"), default="markdown",
                        help="what to print: the markdown paper table (default) or the booktabs LaTeX of table.tex "
                             "and dg.tex (both are always written)")
    parser.add_argument("--select", choices=(*RULES, ALL), default=LAST,
                        help="model-selection rule the tables report: last (default: the final weights), source-val "
                             "(the iteration with the best in-domain mIoU), oracle (per target its best mIoU: an "
                             "upper bound); all: last tables plus selection.md/.csv comparing the three. The last "
                             "two need cells trained with --set eval.every=N")
    parser.add_argument("--published", default=AUTO, metavar=f"{AUTO}|{NONE}|FILE",
                        help="published numbers to put beside the measured rows (published.md/.csv/.tex, a section "
                             f"of report.md and report.html): {AUTO} (default), the shipped tables "
                             "(experiments/published/) that name the study, i.e. the results directory's name; "
                             f"{NONE}; or a file, a path or a shipped file's name (`segbench published` lists them), "
                             "all of whose tables apply")
    args = parser.parse_args(argv)
    for results_dir in args.results_dirs:
        if not (results_dir / CELLS).is_dir():
            parser.error(f"{results_dir} holds no cells/ directory: pass the directory a study wrote (results/NAME)")
    if len(args.results_dirs) > 1 and args.out is None:
        parser.error(f"{len(args.results_dirs)} results directories: add --out BOARD, the folder for their "
                     "leaderboard (or pass one directory for its report)")
    if args.out is not None:
        return leaderboard(parser, args)
    results_dir = args.results_dirs[0]
    print(build_report(results_dir, plot=not args.no_plot, stat=args.stat, baseline=args.baseline, fmt=args.format,
                       select_rule=args.select, published=args.published))
    # on stderr under --format latex, so `segbench report DIR --format latex > tables.tex` holds LaTeX only
    print(f"all tables and figures: {results_dir / 'report.md'}",
          file=sys.stderr if args.format == "latex" else sys.stdout)
    return 0


def leaderboard(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for flag, given in (("--baseline", args.baseline), ("--format latex", args.format == "latex"),
                        (f"--select {args.select}", args.select != LAST)):  # a board shows the last weights
        if given:
            parser.error(f"{flag} applies to one study's report, not to a leaderboard (--out): drop it, or run "
                         "`segbench report DIR` per study")
    try:
        check_dirs(args.results_dirs)
    except ValueError as e:
        parser.error(str(e))
    print(build_leaderboard(args.results_dirs, args.out, stat=args.stat, published=args.published))
    print(f"leaderboard: {args.out / 'leaderboard.md'} (and .csv, .html)")
    return 0
