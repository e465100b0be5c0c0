"""Published rows beside measured ones (report/reproduced.py) on hand-built studies: every column pinned against values
worked out by hand, a row measured under another protocol flagged with the fields named, the leaderboard, the
`--published` rule. The cards are built by protocol_card.protocol_card from the shipped recipe, so the field names the data
files use are the ones real records carry."""
from __future__ import annotations

import copy
import csv
import io

import numpy as np

from segbench.cells import CONFUSION, plan
from segbench.protocol_card import protocol_card
from segbench.record import new_record
from segbench.config import load_config
from segbench.report import build_report
from segbench.report.cli import main
from segbench.spec import parse_specs
from study_files import write_study

#: RobustNet's recipe as robustnet_dg.yaml sets it: the card every measured row below is scored under
RECIPE = load_config("robustnet_dg")
HEAD = "robustnet-deeplabv3plus"


def record(backbone, seed, mious, *, pretrained="imagenet", iters=None, crop=None, native=False, classes=None):
    """A record of RobustNet's recipe (its card from protocol_card.protocol_card), scored `mious` ({target: mIoU}); the
    keyword arguments change the recipe (iters, crop, eval.protocol native) or a target's class set."""
    cfg = copy.deepcopy(RECIPE)
    cfg["model"]["pretrained"] = pretrained
    cfg["train"].update({k: v for k, v in (("iters", iters), ("crop", crop)) if v is not None})
    if native:
        cfg["eval"]["protocol"] = "native"
    (cell,) = plan(cfg, parse_specs(cfg["specs"]), [backbone], [HEAD])
    cell.seed = seed
    rec = new_record(cell)
    for target, miou in mious.items():
        rec["results"][target] = {"miou": miou, "pixel_acc": 80.0, "per_class_iou": {"road": miou}}
    entries = {t: {"split": "val", "transform": {}, "classes": (classes or {}).get(t, 19)} for t in mious}
    rec["protocol"] = protocol_card(cell, entries)
    return rec


# resnet50 on three seeds: cityscapes 29.12 / 30.12 / 31.12, bdd100k 29.0 / 29.5 / 30.0, mapillary 28.0 three times
BASELINE = [record("resnet50", s, {"gta5": 70.0, "cityscapes": 29.12 + s, "bdd100k": 29.0 + 0.5 * s,
                                   "mapillary": 28.0}) for s in range(3)]


def lines_of(markdown: str) -> dict[tuple[str, str], list[str]]:
    """(paper row, target) -> the cells of its line in a published table."""
    out = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 11 and cells[0] != "paper row":
            out[(cells[0], cells[1])] = cells
    return out


def csv_rows(path):
    return {(r["paper_row"], r["target"]): r for r in csv.DictReader(path.open())}


def test_each_column_of_a_published_row_beside_the_measured_one_worked_out_by_hand(tmp_path):
    study = write_study(tmp_path / "robustnet_dg", BASELINE)  # `auto`: the tables naming robustnet_dg
    build_report(study, plot=False)
    md = (study / "published.md").read_text()
    got = lines_of(md)
    # t_{0.975, 2} = 4.302653; cityscapes: mean 30.12, s = 1.0, se = 1/sqrt(3) = 0.577, half-width 4.302653 * 0.577
    # = 2.484 -> [27.636, 32.604]; published 28.95 inside; difference 30.12 - 28.95 = +1.17
    assert got[("Baseline", "cityscapes")] == ["Baseline", "cityscapes", "resnet50", "3", "30.1 ± 0.6",
                                               "[27.6, 32.6]", "28.95", "+1.2", "yes", "yes (14 fields)", "no"]
    # bdd100k: mean 29.5, s = 0.5, se = 0.289, half-width 1.242 -> [28.258, 30.742]; 25.14 outside; +4.36
    assert got[("Baseline", "bdd100k")] == ["Baseline", "bdd100k", "resnet50", "3", "29.5 ± 0.3", "[28.3, 30.7]",
                                            "25.14", "+4.4", "no", "yes (14 fields)", "no"]
    # mapillary: no spread at all, the interval is the point 28.0; 28.18 outside; -0.18
    assert got[("Baseline", "mapillary")][3:9] == ["3", "28.0 ± 0.0", "[28.0, 28.0]", "28.18", "-0.2", "no"]
    # the mean over C, B, M per seed: 28.707, 29.207, 29.707 -> mean 29.207, s = 0.5, [27.965, 30.449]; 27.42 outside
    mean = ("Baseline", "mean (cityscapes, bdd100k, mapillary)")
    assert got[mean][3:10] == ["3", "29.2 ± 0.3", "[28.0, 30.4]", "27.42", "+1.8", "no", "yes (14 fields)"]
    # published, not measured: the synthia column; a row no record matches
    assert got[("Baseline", "synthia")][2:] == ["resnet50", "–", "–", "–", "–", "–", "–", "–", "no"]
    assert got[("ISW (RobustNet)", "cityscapes")][2:8] == ["–", "–", "–", "–", "36.58", "–"]

    rows = csv_rows(study / "published.csv")
    city = rows[("Baseline", "cityscapes")]
    assert (city["measured_mean"], city["measured_std"], city["measured_spread"], city["n"]) == ("30.12", "1.00",
                                                                                               "0.58", "3")
    assert (city["interval_low"], city["interval_high"], city["interval"]) == ("27.64", "32.60", "t95")
    assert (city["published"], city["delta"], city["inside"], city["protocol"]) == ("28.95", "1.17", "yes", "yes")
    assert city["verified"] == "false" and "SPC-Net Table 3" in city["where"]
    assert (rows[mean]["measured_mean"], rows[mean]["delta"], rows[mean]["interval_low"]) == ("29.21", "1.79",
                                                                                            "27.96")
    assert rows[("Baseline", "bdd100k")]["inside"] == "no"

    report = (study / "report.md").read_text()
    assert "## Published numbers" in report and "| Baseline | bdd100k | resnet50 | 3 | 29.5 ± 0.3 |" in report
    assert "Choi et al., CVPR 2021, Table 1" in report and "Protocol on file: head = " in report
    page = (study / "report.html").read_text()
    assert "Published: Choi et al., CVPR 2021, Table 1" in page and "<td>yes (14 fields)</td>" in page
    assert '<td class="num">+4.4</td>' in page
    tex = (study / "published.tex").read_text()
    assert r"Baseline & bdd100k & resnet50 & 3 & 29.5\,$\pm$\,0.3" not in tex  # entries as printed, not bolded
    assert r"Baseline & bdd100k & resnet50 & 3 & 29.5 $\pm$ 0.3 & [28.3, 30.7] & 25.14 & +4.4 & no" in tex
    assert r"$\Delta$" in tex and r"\begin{tabular}" in tex


def test_a_row_measured_under_another_protocol_is_flagged_with_the_fields_named(tmp_path):
    ibn = record("resnet50_ibn_b", 0, {"cityscapes": 30.0, "mapillary": 33.0}, pretrained="torchvision", iters=2000,
                 crop=[512, 512], native=True, classes={"mapillary": [c for c in range(19) if c not in (9, 14, 16)]})
    other = record("resnet50_ibn_b", 0, {"cityscapes": 40.0}, pretrained="imagenet")  # not RobustNet's IBN-Net row
    study = write_study(tmp_path / "robustnet_dg", [ibn, other])
    build_report(study, plot=False)
    md = (study / "published.md").read_text()
    got = lines_of(md)
    row = "resnet50_ibn_b [pretrained=torchvision, crop=[512, 512], iters=2000]"
    city = got[("IBN-Net", "cityscapes")]
    assert city[2] == row and city[4:8] == ["30.0", "–", "33.85", "-3.9"]  # one seed, no per-image file: no interval
    assert city[8:] == ["–", "no: iterations, train.crop, eval.protocol", "no"]
    assert got[("IBN-Net", "mapillary")][9] == "no: iterations, train.crop, eval.protocol, targets.mapillary.classes"
    # bdd100k not scored: no mean over C, B, M, and no protocol compared for it
    assert got[("IBN-Net", "mean (cityscapes, bdd100k, mapillary)")][3:] == ["–", "–", "–", "34.63", "–", "–", "–",
                                                                             "no"]
    # the notes say what differs, both values, and where the paper's value was read
    assert f"Protocol differs, {row} (card" in md
    assert "iterations is 2000, the paper's 40000 (code: the same scripts: --max_iter 40000)" in md
    assert 'eval.protocol is "native", the paper\'s "robustnet" (maintainer: ' in md
    assert "targets.mapillary.classes is [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18], the paper's 19" in md
    flagged = csv_rows(study / "published.csv")[("IBN-Net", "cityscapes")]
    assert (flagged["protocol"], flagged["differing_fields"]) == ("no", "iterations;train.crop;eval.protocol")
    assert "pretrained=imagenet" not in md  # the row mapped by its config, not by its backbone alone


def test_a_one_seed_line_uses_the_bootstrap_interval_and_a_file_named_by_path(tmp_path):
    published = tmp_path / "mine.yaml"
    published.write_text("""
paper: {authors: "A, B", title: "T", venue: "V 2020", arxiv: "2001.00001"}
tables:
  - name: t1
    table: Table 9
    title: "gta -> city"
    experiments: []
    source: gta
    targets: [city]
    decimals: 1
    verified: true
    where: "arXiv v1 text, Table 9"
    protocol: {iterations: {value: 3, from: paper, where: "section 4"}}
    rows:
      - {label: "at the point", measured: {backbone: r18}, miou: {city: 62.5}}
      - {label: "below it", measured: {backbone: r18}, miou: {city: 60.0}}
""")
    rec = {"cell_id": "c0", "backbone": "r18", "head": "fcn", "source": "gta", "seed": 0,
           "config": {"model": {}, "train": {"iters": 3}}, "protocol": {"sources": ["gta"], "iterations": 3},
           "results": {"city": {"miou": 62.5, "pixel_acc": 70.0, "images": 4,
                                "per_class_iou": {"road": 75.0, "sky": 50.0}}}}
    study = write_study(tmp_path / "study", [rec])
    # four identical images: road 3 px right and 1 px called sky (IoU 3/4), sky 1 px right (IoU 1/2); every resample
    # is a multiple of one matrix, so the 95% bootstrap interval is the point 62.5
    counts = np.zeros((4, 19, 20), np.int64)
    counts[:, 0, 0], counts[:, 0, 10], counts[:, 10, 10] = 3, 1, 1
    cell = next((study / "cells").iterdir())
    (cell / CONFUSION).mkdir()
    np.savez(cell / CONFUSION / "city.npz", counts=counts, images=np.array([f"i{k}" for k in range(4)]))
    build_report(study, plot=False)
    assert not (study / "published.md").exists()  # `auto`: no shipped table names a study called "study"
    build_report(study, plot=False, published=str(published))
    got = lines_of((study / "published.md").read_text())
    assert got[("at the point", "city")][2:] == ["r18", "1", "62.5", "[62.5, 62.5]ᵇ", "62.5", "+0.0", "yes",
                                                 "yes (1 field)", "yes"]
    assert got[("below it", "city")][6:9] == ["60.0", "+2.5", "no"]
    assert csv_rows(study / "published.csv")[("below it", "city")]["interval"] == "bootstrap95"


def test_the_published_option_none_auto_and_a_bad_name(tmp_path, capsys):
    study = write_study(tmp_path / "robustnet_methods", BASELINE)
    assert main([str(study), "--no-plot", "--published", "none"]) == 0
    assert not (study / "published.md").exists() and "Published numbers" not in (study / "report.md").read_text()
    assert main([str(study), "--no-plot"]) == 0
    assert "| Baseline | cityscapes | resnet50 | 3 |" in (study / "published.md").read_text()
    capsys.readouterr()
    assert main([str(study), "--no-plot", "--published", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--published nosuch: no such file" in err and "robustnet" in err


def test_a_leaderboard_includes_each_studys_published_rows(tmp_path):
    a = write_study(tmp_path / "robustnet_dg", BASELINE)
    b = write_study(tmp_path / "robustnet_methods", BASELINE[:2])
    board = tmp_path / "board"
    assert main([str(a), str(b), "--out", str(board)]) == 0
    md = (board / "leaderboard.md").read_text()
    assert "## Published numbers" in md and "### robustnet_dg: Choi et al., CVPR 2021, Table 1" in md
    assert "### robustnet_methods: Choi et al., CVPR 2021, Table 1" in md
    rows = {(r["study"], r["paper_row"], r["target"]): r for r in csv.DictReader(io.StringIO(
        (board / "published.csv").read_text()))}
    assert rows[("robustnet_dg", "Baseline", "cityscapes")]["n"] == "3"
    # two seeds: 29.12, 30.12 -> mean 29.62, +0.67 from 28.95
    assert (rows[("robustnet_methods", "Baseline", "cityscapes")]["n"],
            rows[("robustnet_methods", "Baseline", "cityscapes")]["delta"]) == ("2", "0.67")
    page = (board / "leaderboard.html").read_text()
    assert "Published, robustnet_methods: Choi et al." in page and "protocol card" in page


def test_a_union_of_sources_matches_in_any_order_and_a_resized_copy_does_not():
    from segbench.report.reproduced import same_source

    assert same_source("synthia+gta5", "gta5+synthia") and same_source("gta5", "gta5")
    assert not same_source("gta5@1280x720", "gta5") and not same_source("gta5", "gta5+synthia")


def test_a_table_under_another_selection_rule_differs_in_checkpoint(tmp_path):
    """--select source-val reports an earlier iteration than the paper's last weights: flagged, not compared."""
    recs = copy.deepcopy(BASELINE)
    for rec in recs:  # scored at iterations 10 and 20; the in-domain score ties, so source-val picks 10
        rec["curves"] = {t: [[10, m["miou"] - (t != "gta5")], [20, m["miou"]]] for t, m in rec["results"].items()}
    study = write_study(tmp_path / "robustnet_dg", recs)
    build_report(study, plot=False, select_rule="source-val")
    city = lines_of((study / "published.md").read_text())[("Baseline", "cityscapes")]
    assert city[3:5] == ["3", "29.1 ± 0.6"] and city[9] == "no: checkpoint"  # 30.12 - 1 at iteration 10
    assert 'checkpoint is "source-val", the paper\'s "last" (code: train.py' in (study / "published.md").read_text()
