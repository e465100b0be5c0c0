"""Report golden files: real checked-in records -> exactly the checked-in tables (see tests/golden/README.md)."""
from __future__ import annotations

import csv
import json
import os
import statistics
from collections import Counter

import pytest

from report_oracle import (MEAN_UNSEEN, assert_stats_equal, expected_dg, expected_per_class, expected_per_seed,
                           raw_records, read_stats)
from study_files import GOLDEN, reported_golden_study

OUTPUTS = ("table.md", "table.csv", "dg.md", "dg.csv", "per_class.md", "per_class.csv", "per_seed.csv", "report.md")


@pytest.fixture
def study(tmp_path):
    return reported_golden_study(tmp_path)


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
        if len(values) > 1:
            assert float(row[f"{col} std"]) == pytest.approx(statistics.stdev(values), abs=0.006)
        else:
            assert row[f"{col} std"] == ""  # one seed has no sample std
        assert int(row[f"{col} n"]) == len(values)
    assert "(n=1)" in (study / "table.md").read_text()  # the half-finished cell is flagged, not hidden


def test_golden_dg_agrees_with_the_raw_records(study):
    """dg.csv, recomputed from the JSON: one row per source, backbone and target (one unseen target: no mean)."""
    recs = raw_records(GOLDEN / "study")
    produced = read_stats(study / "dg.csv", ["source", "backbone", "target"], "mIoU")
    assert_stats_equal(produced, expected_dg(recs))
    assert not any(k[2] == MEAN_UNSEEN for k in produced)


def test_golden_per_class_agrees_with_the_raw_records(study):
    """per_class.csv, recomputed from the JSON; an undefined IoU (null) lowers n, it never counts as 0."""
    recs = raw_records(GOLDEN / "study")
    expected = expected_per_class(recs)
    produced = read_stats(study / "per_class.csv", ["source", "target", "backbone", "class"], "IoU")
    assert_stats_equal(produced, expected)
    runs = Counter((r["source"], t, r["backbone"]) for r in recs for t in r["results"])
    assert any(n < runs[k[:3]] for k, (_, _, n) in expected.items())  # the golden records hold such a null


def test_golden_per_seed_lists_every_measurement(study):
    """per_seed.csv: one line per record and target, values as measured (4 decimals)."""
    expected = expected_per_seed(raw_records(GOLDEN / "study"))
    rows = list(csv.DictReader((study / "per_seed.csv").open()))
    assert len(rows) == len(expected)
    for row in rows:
        want = expected[(row["cell_id"], row["target"])]
        assert (row["backbone"], row["head"], row["source"], int(row["seed"])) == \
            (want["backbone"], want["head"], want["source"], want["seed"])
        assert float(row["miou"]) == pytest.approx(want["miou"], abs=6e-5)
        assert float(row["pixel_acc"]) == pytest.approx(want["pixel_acc"], abs=6e-5)
