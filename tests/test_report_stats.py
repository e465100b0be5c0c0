"""The report's statistics (report/stats.py and the tables built on it), checked against numbers worked out by hand
and against the plain recomputation in report_oracle.py: the spread (std, se, ci95) and paired comparisons on one
source, then a hand-built study with several targets per source (dg, per-class, per-seed, gap).

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
import statistics

import pytest

from report_oracle import (MEAN_UNSEEN, assert_stats_equal, expected_dg, expected_per_class, expected_per_seed,
                           raw_records, read_stats)
from segbench.config import ConfigError
from segbench.report import build_report
from segbench.report.cli import main
from segbench.report.paired import paired_tables
from segbench.report.plots import gap_aggs
from segbench.report.records import scores
from segbench.report.stats import Agg, Paired
from segbench.report.tables import paper, per_class
from study_files import write_study


# -- spread and paired comparisons on one source, by hand --------------------------------------------------------------
T_975_2 = 4.3027  # t_{0.975, 2}
T_975_1 = 12.706  # t_{0.975, 1}


def sim_record(backbone, seed, mious, *, head="fcn", source="sim", road=None):
    """A record trained on sim, scored on `mious` ({target: mIoU}); `road` its road IoU (default: the mIoU)."""
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
    recs = [sim_record("r18", s, {"sim": m}) for s, m in enumerate([30.0, 32.0, 37.0])]
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
    recs = [sim_record("r18", s, {"sim": m}, road=r) for s, (m, r) in enumerate([(30.0, 60.0), (32.0, 62.0),
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
    recs = [sim_record("r18", s, {t: v[s] for t, v in base.items()}) for s in range(3)]
    recs.append(sim_record("r18", 3, {"sim": 99.0, "photo": 99.0}))
    recs += [sim_record("ibn", s, {"sim": 30.0 + s + d, "photo": 10.0 + s + e})
             for s, (d, e) in enumerate([(2.0, 1.0), (2.5, 2.0), (3.0, 3.0)])]
    recs += [sim_record("r18", s, {"sim": 40.0}, head="deeplab") for s in range(3)]
    recs += [sim_record("ibn", s, {"sim": 45.0}, head="deeplab") for s in range(3)]
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
    recs = [sim_record("r18", 0, {"sim": 30.0})]
    with pytest.raises(ConfigError, match=r"--baseline resnet50: no record of that backbone or method here \(backbones: r18\)"):
        paired_tables(scores(recs), "resnet50")
    study = write_study(tmp_path / "study", recs)
    assert main([str(study), "--no-plot", "--baseline", "resnet50"]) != 0


def test_per_class_marks_a_class_defined_in_fewer_seeds():
    recs = [sim_record("r18", 0, {"sim": 30.0}, road=60.0), sim_record("r18", 1, {"sim": 32.0}, road=float("nan"))]
    md, _ = per_class(scores(recs))
    assert "| r18 | 60.0 (n=1) | 31.0 ± 1.0 |" in md
    assert "(n=k): only k seeds finished or define the class" in md


# -- a study with several targets per source, against a recomputation --------------------------------------------------
CONFIG = {"model": {"output_stride": 8, "pretrained": None}, "train": {"iters": 3, "lr": 0.01, "workers": 0}}

# source -> backbone -> seed -> {target: mIoU}. Trained on gta: seed 2 of r18 has not scored map yet (a running
# study), so its unseen mean is over seeds 0 and 1 only. syn was never tested on itself (no in-domain column).
STUDY = {
    "gta": {"r18": {0: {"gta": 60.0, "city": 30.0, "bdd": 20.0, "map": 40.0},
                    1: {"gta": 64.0, "city": 36.0, "bdd": 24.0, "map": 42.0},
                    2: {"gta": 62.0, "city": 33.0, "bdd": 21.0}},
            "r18_ibn_a": {0: {"gta": 61.0, "city": 40.0, "bdd": 30.0, "map": 44.0},
                          1: {"gta": 63.0, "city": 42.0, "bdd": 34.0, "map": 46.0},
                          2: {"gta": 60.0, "city": 41.0, "bdd": 29.0, "map": 45.0}}},
    "city": {"r18": {0: {"city": 70.0, "gta": 35.0}, 1: {"city": 72.0, "gta": 31.0}}},
    "syn": {"r18": {0: {"city": 25.0, "bdd": 15.0}, 1: {"city": 27.0, "bdd": 19.0}}},
}


def record(source, backbone, seed, mious, cell_id=None):
    """A record as run_cell writes it (tests/golden/study), per-class IoUs made up from the mIoU: sky is undefined
    (null) wherever the mIoU is under 30, so per-class counts differ from mIoU counts."""
    results = {t: {"miou": m, "pixel_acc": 2 * m - 10, "eval": {"split": "val", "size": None},
                   "per_class_iou": {"road": m + 10, "car": m / 2, "sky": None if m < 30 else m - 5}}
               for t, m in mious.items()}
    return {"cell_id": cell_id or f"{source}{backbone}{seed}", "backbone": backbone, "head": "fcn",
            "source": source, "seed": seed, "config": CONFIG, "results": results}


def study_records():
    return [record(source, backbone, seed, mious) for source, rows in STUDY.items()
            for backbone, seeds in rows.items() for seed, mious in seeds.items()]


@pytest.fixture
def study(tmp_path):
    build_report(write_study(tmp_path / "study", study_records()), plot=False)
    return tmp_path / "study"


def test_dg_csv_with_several_targets_matches_a_recomputation(study):
    produced = read_stats(study / "dg.csv", ["source", "backbone", "target"], "mIoU")
    assert_stats_equal(produced, expected_dg(raw_records(study)))
    assert [r["target"] for r in csv.DictReader((study / "dg.csv").open()) if r["backbone"] == "r18"] == [
        "city", "gta",  # trained on city: in-domain first, one unseen target, so no mean column
        "gta", "bdd", "city", "map", MEAN_UNSEEN,  # trained on gta: in-domain, unseen by name, their mean
        "bdd", "city", MEAN_UNSEEN]  # trained on syn: no in-domain column


def test_dg_unseen_mean_by_hand(study):
    """r18 on gta, per seed over city, bdd, map: seed 0 (30+20+40)/3 = 30, seed 1 (36+24+42)/3 = 34, seed 2 has
    no map: 32 ± sqrt(((30-32)^2 + (34-32)^2) / 1) = 2.83, n=2. Pooling the six values instead would give the
    same mean but std 8.85; averaging each target over its own seeds first would give (33+21.67+41)/3 = 31.89."""
    produced = read_stats(study / "dg.csv", ["source", "backbone", "target"], "mIoU")
    assert produced[("gta", "r18", MEAN_UNSEEN)] == pytest.approx((32.0, math.sqrt(8), 2), abs=0.006)
    assert produced[("gta", "r18", "map")] == pytest.approx((41.0, math.sqrt(2), 2), abs=0.006)
    assert produced[("gta", "r18", "city")] == pytest.approx((33.0, 3.0, 3), abs=0.006)
    # r18_ibn_a, all three seeds: (40+30+44)/3 = 38, (42+34+46)/3 = 40.67, (41+29+45)/3 = 38.33
    per_seed = [38.0, 122 / 3, 115 / 3]
    assert produced[("gta", "r18_ibn_a", MEAN_UNSEEN)] == pytest.approx(
        (statistics.fmean(per_seed), statistics.stdev(per_seed), 3), abs=0.006)


def test_per_class_and_per_seed_csv_match_a_recomputation(study):
    recs = raw_records(study)
    produced = read_stats(study / "per_class.csv", ["source", "target", "backbone", "class"], "IoU")
    assert_stats_equal(produced, expected_per_class(recs))
    # sky is null wherever mIoU < 30: never defined on syn -> bdd, so dropped there; on gta -> bdd defined only for
    # r18_ibn_a's seeds 0 and 1 (25, 29: 27 ± 2.83, the null of seed 2 is not a 0), so r18 gets an empty cell
    assert ("syn", "bdd", "r18", "sky") not in produced
    assert produced[("gta", "bdd", "r18", "sky")] == (None, None, 0)
    assert produced[("gta", "bdd", "r18_ibn_a", "sky")] == pytest.approx((27.0, math.sqrt(8), 2), abs=0.006)
    rows = list(csv.DictReader((study / "per_seed.csv").open()))
    expected = expected_per_seed(recs)
    assert len(rows) == len(expected) == sum(len(r["results"]) for r in study_records())
    for row in rows:
        want = expected[(row["cell_id"], row["target"])]
        assert float(row["miou"]) == pytest.approx(want["miou"], abs=6e-5)
        assert float(row["pixel_acc"]) == pytest.approx(want["pixel_acc"], abs=6e-5)
        assert (row["backbone"], row["source"], int(row["seed"])) == (want["backbone"], want["source"], want["seed"])


def test_two_records_with_the_same_config_and_seed_count_as_one_seed(tmp_path):
    """Same backbone, head, config and seed, different cell id: what a results directory holds after the data
    generator's version changed (the version is part of the cell id, not of the recorded config). The tables count
    the seed once, with the record of the directory sorted last (`_by_cell` keeps the last one loaded); per_seed.csv
    keeps both measurements. Pinned on purpose: a different rule (refuse, separate rows) must change this test."""
    recs = [record("gta", "r18", 0, {"gta": 50.0}, cell_id="aaaa"),
            record("gta", "r18", 0, {"gta": 70.0}, cell_id="bbbb"),  # its directory sorts last of seed 0's two
            record("gta", "r18", 1, {"gta": 60.0}, cell_id="cccc")]
    study = write_study(tmp_path / "study", recs)
    build_report(study, plot=False)
    (row,) = csv.DictReader((study / "table.csv").open())
    assert row["backbone"] == "r18"  # one row: same config, so no [key=value] label tells them apart
    col = "train gta / test gta"
    assert row[f"{col} n"] == "2"  # not 3: the seed is not counted twice
    assert (float(row[f"{col} mIoU"]), float(row[f"{col} std"])) == pytest.approx(
        (statistics.fmean([70.0, 60.0]), statistics.stdev([70.0, 60.0])), abs=0.006)
    dg_rows = read_stats(study / "dg.csv", ["source", "backbone", "target"], "mIoU")
    assert dg_rows[("gta", "r18", "gta")][2] == 2
    seed0 = sorted(float(r["miou"]) for r in csv.DictReader((study / "per_seed.csv").open()) if r["seed"] == "0")
    assert seed0 == [50.0, 70.0]


def test_gap_statistics_by_hand():
    """gap.png's numbers (gap_aggs): in-domain = the source's own mIoU over seeds; cross-domain = per seed the mean
    over the other targets, over the seeds that scored them all. r18 on gta: in-domain 60, 64, 62 -> 62 ± 2 (n=3);
    cross 30, 34 -> 32 ± 2.83 (n=2). r18 on city: in 70, 72 -> 71 ± 1.41; cross (gta only) 35, 31 -> 33 ± 2.83.
    syn has no in-domain measurement: no bars."""
    data = gap_aggs(scores(study_records()))
    assert sorted(data) == ["city", "gta"]
    within, cross = data["gta"]["r18"]
    assert (within.mean, within.std, within.n) == pytest.approx((62.0, 2.0, 3))
    assert (cross.mean, cross.std, cross.n) == pytest.approx((32.0, math.sqrt(8), 2))
    within, cross = data["city"]["r18"]
    assert (within.mean, within.std, within.n) == pytest.approx((71.0, math.sqrt(2), 2))
    assert (cross.mean, cross.std, cross.n) == pytest.approx((33.0, math.sqrt(8), 2))
    within, cross = data["gta"]["r18_ibn_a"]  # (40+30+44)/3, (42+34+46)/3, (41+29+45)/3
    assert (cross.mean, cross.n) == pytest.approx((statistics.fmean([38.0, 122 / 3, 115 / 3]), 3))
    assert list(data["city"]) == ["r18"]  # only backbones trained on that source

