"""A results directory written from hand-built records, laid out as the runner lays it out (cells/NAME/record.json),
and the golden study (tests/golden/study) copied and reported."""
import shutil
from pathlib import Path

from segbench.io import write_json

GOLDEN = Path(__file__).parent / "golden"


def write_study(root, records, done=True):
    for rec in records:
        cell = root / "cells" / f"{rec['source']}__{rec['backbone']}__{rec['head']}__s{rec['seed']}__{rec['cell_id']}"
        write_json(cell / "record.json", rec)
        if done:
            (cell / "done").touch()
    return root


def reported_golden_study(tmp_path):
    """The golden study copied under a fixed name (report.md's title is the directory name), its report built
    without plots."""
    from segbench.report import build_report

    dst = tmp_path / "study"
    shutil.copytree(GOLDEN / "study", dst)
    build_report(dst, plot=False)
    return dst
