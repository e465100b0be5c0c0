"""`segbench report RESULTS_DIR`: rebuild every table and figure from the records a study wrote."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cells import CELLS
from ..errors import command
from .build import build_report
from .selection import ALL, LAST, RULES
from .stats import DEFAULT_STAT, STAT_NAMES, STATS


@command("segbench report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")
    parser.add_argument("--stat", choices=STATS, default=DEFAULT_STAT,
                        help="spread after ±: " + "; ".join(f"{k}: {v}" for k, v in STAT_NAMES.items())
                        + f" (default {DEFAULT_STAT})")
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
    args = parser.parse_args(argv)
    if not (args.results_dir / CELLS).is_dir():
        parser.error(f"{args.results_dir} holds no cells/ directory: pass the directory a study wrote (results/NAME)")
    print(build_report(args.results_dir, plot=not args.no_plot, stat=args.stat, baseline=args.baseline,
                       fmt=args.format, select_rule=args.select))
    # on stderr under --format latex, so `segbench report DIR --format latex > tables.tex` holds LaTeX only
    print(f"all tables and figures: {args.results_dir / 'report.md'}",
          file=sys.stderr if args.format == "latex" else sys.stdout)
    return 0
