"""Report aggregation rules, layouts and figures, on small hand-built records (the golden test uses real ones)."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest

from segbench.labels import CLASS_NAMES, PALETTE
from study_files import write_study
from segbench.record import load_records
from segbench.report import build_report
from segbench.report.cli import main
from segbench.report.qualitative import ground_truth
from segbench.report.records import scores
from segbench.report.tables import dg, paper, per_class


def record(backbone, source, seed, mious, *, head="fcn", iters=3, per_class=None, samples=None):
    results = {}
    for target, miou in mious.items():
        results[target] = {"miou": miou, "pixel_acc": 50.0, "per_class_iou": per_class or {"road": miou, "sky": None},
                           "eval": {"split": "val", "size": None}}
        if samples and target in samples:
            results[target]["samples"] = samples[target]
    return {"cell_id": f"{backbone}{source}{seed}{iters}{head}", "backbone": backbone, "head": head, "source": source,
            "seed": seed, "config": {"model": {"output_stride": 8}, "train": {"iters": iters, "workers": 0}},
            "results": results}


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_dg_mean_is_taken_per_seed_then_over_seeds_that_scored_every_target():
    recs = [record("r18", "gta", 0, {"gta": 60.0, "city": 30.0, "bdd": 20.0}),
            record("r18", "gta", 1, {"gta": 62.0, "city": 34.0, "bdd": 28.0}),
            record("r18", "gta", 2, {"gta": 61.0, "city": 31.0})]  # seed 2 never scored bdd
    md, text = dg(scores(recs), stat="std")
    rows = {r["target"]: r for r in read_csv(text)}
    assert list(rows) == ["gta", "bdd", "city", "mean (unseen)"]
    per_seed = [statistics.fmean([30.0, 20.0]), statistics.fmean([34.0, 28.0])]
    assert float(rows["mean (unseen)"]["mIoU"]) == pytest.approx(statistics.fmean(per_seed), abs=0.005)
    assert float(rows["mean (unseen)"]["std"]) == pytest.approx(statistics.stdev(per_seed), abs=0.005)
    assert rows["mean (unseen)"]["n"] == "2" and rows["city"]["n"] == "3"
    assert float(rows["city"]["std"]) == pytest.approx(statistics.stdev([30.0, 34.0, 31.0]), abs=0.005)
    assert "| r18 | 61.0 ± 1.0 | 24.0 ± 5.7 (n=2) | 31.7 ± 2.1 | 28.0 ± 4.2 (n=2) |" in md
    # the default statistic, standard error = std / sqrt(n): 1/sqrt(3), 5.66/sqrt(2), 2.08/sqrt(3), 4.24/sqrt(2)
    assert "| r18 | 61.0 ± 0.6 | 24.0 ± 4.0 (n=2) | 31.7 ± 1.2 | 28.0 ± 3.0 (n=2) |" in dg(scores(recs))[0]
    assert "### trained on gta" in md and "gta (in-domain)" in md


def test_paper_layout_rows_backbones_columns_pairs_in_domain_first():
    recs = [record("r18", "b", 0, {"b": 50.0, "a": 10.0}), record("r18_ibn_b", "b", 0, {"b": 52.0, "a": 20.0}),
            record("r18", "a", 0, {"a": 70.0, "b": 5.0})]
    md, text = paper(scores(recs))
    assert md.splitlines()[0] == ("| backbone | train a / test a | train a / test b | train b / test b "
                                  "| train b / test a |")
    assert md.splitlines()[1] == "|:---|---:|---:|---:|---:|"
    assert "| r18_ibn_b | – | – | 52.0 | 20.0 |" in md  # one seed: no ± column noise
    row = read_csv(text)[1]
    assert row["train b / test a mIoU"] == "20.00" and row["train a / test a n"] == "0"


def test_records_of_different_configs_are_separate_rows_not_seeds():
    recs = [record("r18", "a", 0, {"a": 10.0}, iters=3), record("r18", "a", 0, {"a": 90.0}, iters=100),
            record("r18", "a", 1, {"a": 20.0}, iters=3, head="deeplabv3")]
    md, _ = paper(scores(recs))
    assert "| r18 + fcn [iters=3] | 10.0 |" in md and "| r18 + fcn [iters=100] | 90.0 |" in md
    assert "| r18 + deeplabv3 [iters=3] | 20.0 |" in md
    assert "50.0" not in md  # never averaged together


def test_per_class_table_drops_unscored_classes_and_dashes_undefined_ones():
    pc = {name: None for name in CLASS_NAMES}
    pc.update(road=80.0, car=10.0)
    recs = [record("r18", "a", 0, {"a": 45.0}, per_class=pc),
            record("r18", "a", 1, {"a": 47.0}, per_class={**pc, "car": None, "road": 84.0})]
    md, text = per_class(scores(recs))
    assert md.splitlines()[2].startswith("| backbone | road | car | mIoU |")
    # road 80, 84: 82 ± se 2 (std 2.83 / sqrt 2); car defined in one seed: no spread, flagged (n=1); mIoU 45, 47
    assert "| r18 | 82.0 ± 2.0 | 10.0 (n=1) | 46.0 ± 1.0 |" in md
    car = [r for r in read_csv(text) if r["class"] == "car"][0]
    assert car["n"] == "1"  # the undefined IoU is not a zero


def test_markdown_escapes_pipes_in_labels():
    md, _ = paper(scores([record("weird|name", "a", 0, {"a": 1.0})]))
    assert "| weird\\|name | 1.0 |" in md


def test_empty_or_running_study_reports_without_crashing(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    assert main([str(tmp_path), "--no-plot"]) == 0
    assert "(no results yet)" in capsys.readouterr().out
    write_study(tmp_path, [record("r18", "a", 0, {"a": 40.0})], done=False)  # a cell still evaluating targets
    build_report(tmp_path, plot=False)
    assert "1 cell record(s), 0 finished." in (tmp_path / "report.md").read_text()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nowhere")])


# --- figures -----------------------------------------------------------------------------------------------------------

def _png_pixels(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _sample_files(root, n=2):
    """An image, a trainId label and a prediction per sample; the prediction is all 'car', the label all 'road'."""
    samples = []
    for i in range(n):
        image, label = root / f"img{i}.png", root / f"lab{i}.png"
        cv2.imwrite(str(image), np.full((32, 64, 3), 90, np.uint8))
        cv2.imwrite(str(label), np.zeros((32, 64), np.uint8))
        samples.append({"index": i, "image": str(image), "label": str(label), "pred": f"preds/b/img{i}.png"})
    return samples


def test_every_figure_is_written_and_nonempty(tmp_path):
    samples = _sample_files(tmp_path)
    recs = [record(bb, "a", s, {"a": 50.0 + s, "b": 30.0 + 5 * s}, samples={"b": samples})
            for bb in ("r18", "r18_ibn_b") for s in (0, 1)]
    study = write_study(tmp_path / "study", recs)
    for rec in load_records(study):
        for s in samples:
            (rec["_dir"] / s["pred"]).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(rec["_dir"] / s["pred"]), np.full((32, 64), 13, np.uint8))
    build_report(study)
    for name in ("table.png", "per_class_iou.png", "gap.png", "qualitative.png"):
        _png_pixels(study / name)
    panel = _png_pixels(study / "qualitative.png").reshape(-1, 3)
    for cls in (0, 13):  # ground truth drawn as road, predictions as car, in the Cityscapes palette
        assert np.any(np.all(panel == PALETTE[cls], axis=1)), CLASS_NAMES[cls]
    report = (study / "report.md").read_text()
    assert "![qualitative results](qualitative.png)" in report and "![in-domain vs cross-domain mIoU](gap.png)" in report
    assert not list(study.glob(".*.png"))  # no temp files left behind


def test_no_samples_no_panel_and_the_report_says_so(tmp_path):
    study = write_study(tmp_path, [record("r18", "a", 0, {"a": 50.0, "b": 30.0})])
    build_report(study)
    assert not (study / "qualitative.png").exists()
    assert "no qualitative panel" in (study / "report.md").read_text()


def test_ground_truth_prefers_dumped_trainids_and_refuses_raw_label_ids(tmp_path):
    ids = np.full((4, 4), 26, np.uint8)  # Cityscapes labelIds: 26 = car, not a trainId
    cv2.imwrite(str(tmp_path / "labelIds.png"), ids)
    assert ground_truth({"label": str(tmp_path / "labelIds.png")}, tmp_path) is None
    cv2.imwrite(str(tmp_path / "gt.png"), np.full((4, 4), 13, np.uint8))
    gt = ground_truth({"label": str(tmp_path / "labelIds.png"), "gt": "gt.png"}, tmp_path)
    assert gt is not None and np.all(gt == 13)


def test_partial_seed_marker_is_explained_only_when_used():
    full = [record("r18", "a", s, {"a": 50.0 + s, "b": 20.0}) for s in range(3)]
    md, _ = paper(scores(full))
    assert "over 3 seeds" in md and "(n=k)" not in md
    md, _ = paper(scores(full + [record("r50", "a", 0, {"a": 60.0, "b": 30.0})]))
    assert "(n=1)" in md and "(n=k): only k seeds finished" in md


def test_per_seed_csv_names_the_row_each_measurement_counts_in(tmp_path):
    """Two methods on one backbone, head and seed: per_seed.csv must say which table row each number belongs to,
    else grouping it by its other columns averages the two methods together."""
    erm, iw = record("r18", "a", 0, {"a": 40.0}), record("r18", "a", 0, {"a": 50.0})
    erm.update(method={"name": "erm"}, cell_id="c1")
    iw.update(method={"name": "iw"}, cell_id="c2")
    study = write_study(tmp_path, [erm, iw])
    build_report(study, plot=False)
    rows = read_csv((study / "per_seed.csv").read_text())
    assert sorted((r["row"], r["backbone"], r["seed"], r["miou"]) for r in rows) == [
        ("r18 + erm", "r18", "0", "40.0000"), ("r18 + iw", "r18", "0", "50.0000")]
    table = {r["backbone"]: r["train a / test a mIoU"] for r in read_csv((study / "table.csv").read_text())}
    assert table == {"r18 + erm": "40.00", "r18 + iw": "50.00"}


def test_curves_legend_names_every_row_even_one_absent_from_the_first_panel(tmp_path, monkeypatch):
    """r50 has a curve on b only: the first panel (a -> a) lacks it, yet its line in the second panel must be named."""
    from segbench.io import pyplot
    from segbench.report import plots

    r18, r50 = record("r18", "a", 0, {"a": 50.0, "b": 30.0}), record("r50", "a", 0, {"b": 35.0})
    r18["curves"] = {"a": [[1, 40.0], [2, 50.0]], "b": [[1, 20.0], [2, 30.0]]}
    r50["curves"] = {"b": [[1, 25.0], [2, 35.0]]}
    named = []

    def keep_legends(fig, path):
        named.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        pyplot().close(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep_legends)
    plots.plot_curves([r18, r50], tmp_path / "curves.png")
    assert sorted(named) == ["r18", "r50"]


def test_curves_never_average_seeds_measured_under_different_protocols():
    """Two seeds of one row whose cards differ in how target b is scored: the tables give them two rows (records.
    scores), and curves.png must draw two lines (30 and 50), not one line of their mean (40)."""
    from segbench.report.plots import curve_means

    recs = []
    for seed, miou, size in ((0, 30.0, None), (1, 50.0, 512)):
        rec = record("r18", "a", seed, {"b": miou})
        rec.update(protocol={"sources": ["a"], "targets": {"b": {"size": size}}}, curves={"b": [[1, miou]]})
        recs.append(rec)
    lines = curve_means(recs)[("a", "b")]
    assert sorted(v for line in lines.values() for _, v in line) == [30.0, 50.0]
    assert set(lines) == {s.row for s in scores(recs)} and len(lines) == 2


def test_a_record_without_a_target_list_keeps_the_study_order_of_columns():
    """records.ordered_pairs: targets in the order the study named them, targets no record names last. A record
    written before records listed their targets names none, so its targets must not jump ahead: photo, fog (named
    in that order by the newer record), then night (named by no record)."""
    named = record("r18", "sim", 0, {"sim": 50.0, "photo": 30.0, "fog": 20.0})
    named["targets"] = ["sim", "photo", "fog"]
    old = record("r50", "sim", 0, {"sim": 52.0, "photo": 31.0, "fog": 22.0, "night": 10.0})  # no "targets"
    md, _ = paper(scores([named, old]))
    assert md.splitlines()[0] == ("| backbone | train sim / test sim | train sim / test photo | train sim / test fog "
                                  "| train sim / test night |")


def test_a_footer_writes_a_long_run_of_seeds_as_a_range():
    many = [record("r18", "a", s, {"a": 40.0 + s % 7}) for s in range(300)]
    md, _ = paper(scores(many))
    assert "over 300 seeds (0-299)." in md
    md, _ = dg(scores([record("r18", "a", s, {"a": 40.0}) for s in (0, 1, 2, 3, 4, 5, 9, 11, 12)]))
    assert "over 9 seeds (0-5, 9, 11, 12)." in md
    md, _ = paper(scores([record("r18", "a", s, {"a": 40.0}) for s in (0, 1, 2)]))
    assert "over 3 seeds (0, 1, 2)." in md  # a short list reads as well as a range


def test_the_dg_layout_orders_targets_as_the_spec_does_like_the_paper_layout():
    """Targets added to a finished study (`sim->photo` became `sim->photo,fog,night`): the cells scored since name
    all four, in the spec's order; both layouts show photo, fog, night, not fog, night, photo."""
    old = record("r18", "sim", 0, {"sim": 50.0, "photo": 30.0})
    old["targets"] = ["sim", "photo"]
    new = record("r50", "sim", 0, {"sim": 52.0, "photo": 31.0, "fog": 22.0, "night": 10.0})
    new["targets"] = ["sim", "photo", "fog", "night"]
    items = scores([old, new])
    paper_md, _ = paper(items)
    dg_md, dg_csv = dg(items)
    assert paper_md.splitlines()[0].endswith(
        "| train sim / test photo | train sim / test fog | train sim / test night |")
    assert "| backbone | sim (in-domain) | photo | fog | night | mean (unseen) |" in dg_md
    assert [r["target"] for r in read_csv(dg_csv) if r["backbone"] == "r50"] == ["sim", "photo", "fog", "night",
                                                                                "mean (unseen)"]


# -- issue 23: figures and the per-class table -----------------------------------------------------------------------
def _overlapping_bars(fig) -> list[str]:
    """The bars a legend box covers, in pixels of the drawn figure, per axes that has a legend."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    covered = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for bar in ax.patches:
            extent = bar.get_window_extent(renderer)
            if bar.get_height() > 0 and box.overlaps(extent):
                covered.append(f"{ax.get_title() or 'axes'}: bar at x={bar.get_x():.2f}")
    return covered


def test_no_legend_covers_a_bar(tmp_path, monkeypatch):
    """The embedded table's shape (3 backbones, in-domain and cross-domain columns, the first bar the tallest):
    a legend inside the axes sat on the first bars of table.png and of the page's copy of it."""
    from segbench.io import pyplot
    from segbench.report import plots

    pc = {name: None for name in CLASS_NAMES}
    pc.update(road=90.0, sky=85.0, car=70.0)
    means = {"resnet18": (28.8, 14.3), "resnet18_ibn_a": (26.2, 21.2), "resnet18_ibn_b": (24.5, 26.1)}
    recs = [record(bb, "sim", s, {"sim": a + s - 1, "photo": b - s + 1}, per_class=pc) for bb, (a, b) in means.items()
            for s in (0, 1, 2)]
    covered = {}

    def check(fig, path):
        covered[Path(path).name] = _overlapping_bars(fig)
        pyplot().close(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", check)
    items = scores(recs)
    plots.plot_table(items, tmp_path / "table.png")
    plots.plot_per_class(items, tmp_path / "per_class_iou.png")
    plots.plot_gap(items, tmp_path / "gap.png")
    assert covered == {"table.png": [], "per_class_iou.png": [], "gap.png": []}


def test_per_class_table_leaves_out_classes_absent_from_the_ground_truth_and_says_so(tmp_path):
    """Like the embedded domains, which never draw a truck: a model that predicts a few truck pixels scores IoU 0 on
    it, a number about the data. With the cell's per-image matrices the table leaves truck out and says why; the
    mIoU, which counts that 0, is unchanged."""
    from segbench.engine.scoring import save_image_confusions
    from segbench.report.bootstrap import miou_of

    road, sky, truck, n = CLASS_NAMES.index("road"), CLASS_NAMES.index("sky"), CLASS_NAMES.index("truck"), 19
    image = np.zeros((n, n + 1), np.int64)
    image[road, road], image[road, truck], image[sky, sky] = 90, 10, 50  # 10 road pixels predicted as truck
    counts = np.stack([image, image])
    miou = miou_of(counts.sum(0))
    pc = {name: None for name in CLASS_NAMES}
    pc.update(road=90.0, sky=100.0, truck=0.0)
    rec = record("r18", "sim", 0, {"photo": miou}, per_class=pc)
    rec["results"]["photo"]["images"] = 2
    study = write_study(tmp_path / "study", [rec])
    (cell,) = (study / "cells").iterdir()
    save_image_confusions(cell / "confusion" / "photo.npz", counts, ["a.png", "b.png"])
    build_report(study, plot=False)
    md = (study / "per_class.md").read_text()
    assert "| backbone | road | sky | mIoU |" in md and "truck |" not in md
    (note,) = [line for line in md.splitlines() if "ground truth" in line and "truck" in line]
    assert "test photo: truck" in note and "IoU 0" in note
    assert f"| r18 | 90.0 | 100.0 | {miou:.1f} |" in md  # 63.3: the mean of 90, 100 and the truck's 0
    assert "truck" not in (study / "per_class.csv").read_text()
    assert "truck" in (study / "report.md").read_text()  # the note travels with the table


def test_a_report_is_one_consistent_set_of_files(tmp_path, capsys):
    """A report with --baseline, then one without: paired.md/.csv/.png of the first must not stay beside the second's
    report.md, which no longer mentions them; --no-plot likewise leaves no figure of an earlier run."""
    recs = [record(bb, "a", s, {"a": 50.0 + s + i, "b": 30.0 + 2 * s + i}) for i, bb in enumerate(("r18", "r18_ibn_b"))
            for s in (0, 1)]
    study = write_study(tmp_path / "study", recs)
    assert main([str(study), "--baseline", "r18"]) == 0
    assert all((study / f).is_file() for f in ("paired.md", "paired.csv", "paired.png"))
    assert main([str(study), "--stat", "ci95"]) == 0
    assert not any((study / f).exists() for f in ("paired.md", "paired.csv", "paired.png"))
    assert "Paired" not in (study / "report.md").read_text() and "paired" not in (study / "report.html").read_text()
    assert "95% t interval" in (study / "table.md").read_text()
    assert (study / "table.png").is_file()
    assert main([str(study), "--no-plot"]) == 0
    assert not list(study.glob("*.png")) and "![" not in (study / "report.md").read_text()
    assert (study / "table.md").is_file() and (study / "cells").is_dir()


def test_per_class_note_names_the_classes_no_model_gets_right():
    """The embedded default's per-class tables have columns of 0.0 in every row (thin classes after 80 iterations):
    the note says which, so a reader does not take them for missing data."""
    pc = {name: None for name in CLASS_NAMES}
    pc.update(road=80.0, pole=0.0, car=10.0)
    recs = [record(bb, "sim", 0, {"photo": 30.0}, per_class={**pc, "car": 10.0 + i}) for i, bb in enumerate(("a", "b"))]
    md, _ = per_class(scores(recs))
    assert "| a | 80.0 | 0.0 | 10.0 | 30.0 |" in md
    (note,) = [line for line in md.splitlines() if line.startswith("0.0 in every row")]
    assert "(test photo: pole)" in note and "car" not in note and "labelled" not in note  # no per-image file here
