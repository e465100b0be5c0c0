"""The report's spread statistics (std, se, ci95) and paired comparisons, against numbers worked out by hand.

Hand computations (typed in; t quantiles from a printed t table):
- seeds 30, 32, 37: mean 33; deviations -3, -1, 4, squares 9 + 1 + 16 = 26, s = sqrt(26 / 2) = sqrt(13) = 3.6056;
  se = s / sqrt(3) = 2.0817; t_{0.975, 2} = 4.3027, so the ci95 half-width is 4.3027 * 2.0817 = 8.957.
- paired differences 1, 2, 3: mean 2, s = 1, se = 1 / sqrt(3) = 0.5774, half-width 4.3027 * 0.5774 = 2.484:
  [-0.484, 4.484] holds zero, not significant.
- differences 2, 2.5, 3: mean 2.5, s = 0.5, se = 0.2887, half-width 1.242: [1.258, 3.742], significant.
- differences -1, -3 (two seeds): mean -2, s = sqrt(2), se = 1, t_{0.975, 1} = 12.706: [-14.71, 10.71].
"""
from __future__ import annotations

import csv
import math

import pytest

from segbench.config import ConfigError
from segbench.report import build_report
from segbench.report.cli import main
from segbench.report.paired import paired_tables
from segbench.report.records import scores
from segbench.report.stats import Agg, Paired
from segbench.report.tables import paper, per_class
from study_files import write_study

T_975_2 = 4.3027  # t_{0.975, 2}
T_975_1 = 12.706  # t_{0.975, 1}


def record(backbone, seed, mious, *, head="fcn", source="sim", road=None):
    results = {t: {"miou": m, "pixel_acc": 50.0, "per_class_iou": {"road": m if road is None else road, "sky": None},
                   "eval": {"split": "val", "size": None}} for t, m in mious.items()}
    return {"cell_id": f"{backbone}{head}{seed}", "backbone": backbone, "head": head, "source": source, "seed": seed,
            "config": {"model": {"output_stride": 8}, "train": {"iters": 3, "workers": 0}}, "results": results}


def test_mean_std_se_ci95_by_hand():
    agg = Agg.of([30.0, 32.0, 37.0])
    assert (agg.mean, agg.n) == (33.0, 3)
    assert agg.std == pytest.approx(3.6056, abs=1e-4)
    assert agg.se == pytest.approx(2.0817, abs=1e-4)
    assert agg.ci95 == pytest.approx(8.957, abs=1e-3)
    assert agg.ci95 == pytest.approx(T_975_2 * math.sqrt(13) / math.sqrt(3), rel=1e-4)
    assert [agg.md(s) for s in ("std", "se", "ci95")] == ["33.0 ± 3.6", "33.0 ± 2.1", "33.0 ± 9.0"]
    one = Agg.of([40.0])
    assert math.isnan(one.se) and math.isnan(one.ci95) and one.md("ci95") == "40.0"  # no spread from one seed
    assert Agg.of([float("nan"), 30.0, 32.0, 37.0]).ci95 == pytest.approx(8.957, abs=1e-3)  # undefined IoU left out
    with pytest.raises(ValueError, match="unknown statistic"):
        agg.spread("sem")


def test_tables_default_to_standard_error_and_say_so():
    recs = [record("r18", s, {"sim": m}) for s, m in enumerate([30.0, 32.0, 37.0])]
    md, text = paper(scores(recs))
    assert "| r18 | 33.0 ± 2.1 |" in md
    assert "mean ± standard error over 3 seeds (0, 1, 2)" in md
    (row,) = csv.DictReader(text.splitlines())
    col = "train sim / test sim"
    assert (row[f"{col} mIoU"], row[f"{col} std"], row[f"{col} se"], row[f"{col} n"]) == ("33.00", "3.61", "2.08", "3")
    md, text = paper(scores(recs), stat="std")
    assert "| r18 | 33.0 ± 3.6 |" in md and "mean ± sample std over 3 seeds" in md
    assert f"{col} se" not in text  # the std is the CSV's own column already


def test_cli_stat_ci95_reaches_every_table(tmp_path, capsys):
    recs = [record("r18", s, {"sim": m}, road=r) for s, (m, r) in enumerate([(30.0, 60.0), (32.0, 62.0),
                                                                             (37.0, 67.0)])]
    study = write_study(tmp_path / "study", recs)
    assert main([str(study), "--no-plot", "--stat", "ci95"]) == 0
    assert "| r18 | 33.0 ± 9.0 |" in capsys.readouterr().out
    footer = "mean ± half-width of the 95% t interval over 3 seeds"
    assert footer in (study / "table.md").read_text() and footer in (study / "dg.md").read_text()
    pc_md = (study / "per_class.md").read_text()
    assert "| r18 | 63.0 ± 9.0 | 33.0 ± 9.0 |" in pc_md and footer in pc_md  # road 60, 62, 67: same spread, +30
    rows = {r["class"]: r for r in csv.DictReader((study / "per_class.csv").open())}
    assert float(rows["road"]["ci95"]) == pytest.approx(8.96, abs=0.006)
    assert float(rows["road"]["std"]) == pytest.approx(3.61, abs=0.006)
    (dg_row,) = csv.DictReader((study / "dg.csv").open())
    assert float(dg_row["ci95"]) == pytest.approx(8.96, abs=0.006)


def test_paired_interval_by_hand():
    base = {0: 10.0, 1: 20.0, 2: 30.0}
    wide = Paired.of({0: 11.0, 1: 22.0, 2: 33.0}, base)  # differences 1, 2, 3
    assert (wide.diff, wide.n) == (2.0, 3)
    assert (wide.lo, wide.hi) == pytest.approx((-0.484, 4.484), abs=1e-3)
    assert not wide.significant and wide.md() == "+2.0 [-0.5, +4.5]"
    tight = Paired.of({0: 12.0, 1: 22.5, 2: 33.0}, base)  # differences 2, 2.5, 3
    assert (tight.diff, tight.lo, tight.hi) == pytest.approx((2.5, 1.258, 3.742), abs=1e-3)
    assert tight.significant and tight.md().endswith("*")
    down = Paired.of({0: 9.0, 1: 17.0, 5: 0.0}, base)  # only seeds 0 and 1 shared: differences -1, -3
    assert down.n == 2
    assert (down.diff, down.lo, down.hi) == pytest.approx((-2.0, -2 - T_975_1, -2 + T_975_1), abs=2e-3)
    assert Paired.of({3: 1.0}, base).n == 0


def test_build_report_with_baseline_writes_paired_tables_and_plot(tmp_path):
    """ibn vs r18 on sim (differences 2, 2.5, 3: significant) and photo (1, 2, 3: not); r18's seed 3 has no
    partner in ibn, so n stays 3; the deeplab row is compared with r18 + deeplab only (differences 5, 5, 5 on sim:
    s = 0, a zero-width interval)."""
    base = {"sim": [30.0, 31.0, 32.0], "photo": [10.0, 11.0, 12.0]}
    recs = [record("r18", s, {t: v[s] for t, v in base.items()}) for s in range(3)]
    recs.append(record("r18", 3, {"sim": 99.0, "photo": 99.0}))
    recs += [record("ibn", s, {"sim": 30.0 + s + d, "photo": 10.0 + s + e})
             for s, (d, e) in enumerate([(2.0, 1.0), (2.5, 2.0), (3.0, 3.0)])]
    recs += [record("r18", s, {"sim": 40.0}, head="deeplab") for s in range(3)]
    recs += [record("ibn", s, {"sim": 45.0}, head="deeplab") for s in range(3)]
    study = write_study(tmp_path / "study", recs)
    build_report(study, baseline="r18")
    rows = {(r["row"], r["target"]): r for r in csv.DictReader((study / "paired.csv").open())}
    sim = rows[("ibn + fcn", "sim")]
    assert sim["baseline"] == "r18 + fcn" and sim["n"] == "3" and sim["significant"] == "yes"
    assert (float(sim["diff"]), float(sim["ci95_low"]), float(sim["ci95_high"])) == pytest.approx(
        (2.5, 1.258, 3.742), abs=0.006)
    photo = rows[("ibn + fcn", "photo")]
    assert (float(photo["diff"]), float(photo["ci95_low"]), float(photo["ci95_high"])) == pytest.approx(
        (2.0, -0.484, 4.484), abs=0.006)
    assert photo["significant"] == "no"
    deeplab = rows[("ibn + deeplab", "sim")]
    assert (deeplab["baseline"], float(deeplab["diff"]), deeplab["n"]) == ("r18 + deeplab", 5.0, "3")
    md = (study / "paired.md").read_text()
    assert "| ibn + fcn − r18 + fcn | +2.5 [+1.3, +3.7]* | +2.0 [-0.5, +4.5] |" in md
    assert "## Paired comparison with r18" in (study / "report.md").read_text()
    assert (study / "paired.png").stat().st_size > 0


def test_unknown_baseline_is_a_clear_error(tmp_path):
    recs = [record("r18", 0, {"sim": 30.0})]
    with pytest.raises(ConfigError, match=r"--baseline resnet50: no record of that backbone or method here \(backbones: r18\)"):
        paired_tables(scores(recs), "resnet50")
    study = write_study(tmp_path / "study", recs)
    assert main([str(study), "--no-plot", "--baseline", "resnet50"]) != 0


def test_per_class_marks_a_class_defined_in_fewer_seeds():
    recs = [record("r18", 0, {"sim": 30.0}, road=60.0), record("r18", 1, {"sim": 32.0}, road=float("nan"))]
    md, _ = per_class(scores(recs))
    assert "| r18 | 60.0 (n=1) | 31.0 ± 1.0 |" in md
    assert "(n=k): only k seeds finished or define the class" in md
