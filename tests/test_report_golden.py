"""Report golden files: real checked-in records -> exactly the checked-in tables (see tests/golden/README.md)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

from segbench.report import build_report

GOLDEN = Path(__file__).parent / "golden"
OUTPUTS = ("table.md", "table.csv", "dg.md", "dg.csv", "per_class.md", "per_class.csv", "per_seed.csv", "report.md")


@pytest.fixture
def study(tmp_path):
    """The golden study copied under a fixed name (report.md's title is the directory name)."""
    dst = tmp_path / "study"
    shutil.copytree(GOLDEN / "study", dst)
    build_report(dst, plot=False)
    return dst


@pytest.mark.parametrize("name", OUTPUTS)
def test_report_matches_golden(study, name):
    expected = GOLDEN / "expected" / name
    produced = (study / name).read_text()
    if os.environ.get("SEGBENCH_UPDATE_GOLDEN"):
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(produced)
    assert produced == expected.read_text(), f"{name} changed; if intended, regenerate (tests/golden/README.md)"


def test_golden_table_agrees_with_the_raw_records(study):
    """Independent of the report code: mean, sample std and n per backbone and target, straight from the JSON."""
    raw: dict = {}
    for path in (GOLDEN / "study").glob("cells/*/record.json"):
        rec = json.loads(path.read_text())
        for target, m in rec["results"].items():
            raw.setdefault((rec["backbone"], f"train {rec['source']} / test {target}"), []).append(m["miou"])
    rows = {r["backbone"]: r for r in csv.DictReader((study / "table.csv").open())}
    assert len(raw) >= 3 and any(len(v) == 2 for v in raw.values()) and any(len(v) == 1 for v in raw.values())
    for (backbone, col), values in raw.items():
        row = rows[backbone]
        assert float(row[f"{col} mIoU"]) == pytest.approx(statistics.fmean(values), abs=0.006)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        assert float(row[f"{col} std"]) == pytest.approx(std, abs=0.006)
        assert int(row[f"{col} n"]) == len(values)
    assert "(n=1)" in (study / "table.md").read_text()  # the half-finished cell is flagged, not hidden
