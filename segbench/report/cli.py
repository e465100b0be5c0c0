"""`segbench report RESULTS_DIR`: rebuild every table and figure from the records a study wrote."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cells import CELLS
from ..errors import command
from .build import build_report


@command("segbench report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--no-plot", action="store_true", help="tables only (no matplotlib)")
    args = parser.parse_args(argv)
    if not (args.results_dir / CELLS).is_dir():
        parser.error(f"{args.results_dir} holds no cells/ directory: pass the directory a study wrote (results/NAME)")
    print(build_report(args.results_dir, plot=not args.no_plot))
    print(f"all tables and figures: {args.results_dir / 'report.md'}")
    return 0
