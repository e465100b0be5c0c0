"""Launchers: how the cells of a study get run. Plain functions in a registry, so a site adds its own.

A launcher takes the planned cells and returns one CellOutcome per cell; it never stops the study for one failed cell.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from .matrix import Cell, CellOutcome, is_done, run_cell
from .registry import Registry

LAUNCHERS = Registry("launcher")


@LAUNCHERS.register("local")
def launch_local(cells: list[Cell], results_dir: Path, *, data_root=None, device=None, argv=()) -> list[CellOutcome]:
    """Run cells one after another in this process. A failing cell is logged and the rest go on.

    `argv` (the study's command line) is what subprocess launchers re-run with `--only CELL_ID`; unused here.
    """
    outcomes = []
    for i, cell in enumerate(cells, 1):
        cell_dir = Path(results_dir) / "cells" / cell.dirname
        if is_done(cell, cell_dir):
            outcomes.append(CellOutcome(cell, cell_dir, "skipped"))
            continue
        print(f"[{i}/{len(cells)}] {cell.dirname}", file=sys.stderr, flush=True)
        cell_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            run_cell(cell, cell_dir, data_root=data_root, device=device)
            outcomes.append(CellOutcome(cell, cell_dir, "done", seconds=time.perf_counter() - t0))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the study
            log = cell_dir / "error.log"
            log.write_text(traceback.format_exc())
            outcomes.append(CellOutcome(cell, cell_dir, "failed", error=f"{type(e).__name__}: {e}", log=log,
                                        seconds=time.perf_counter() - t0))
            print(f"  FAILED: {type(e).__name__}: {e}\n  (traceback in {log})", file=sys.stderr, flush=True)
    return outcomes
