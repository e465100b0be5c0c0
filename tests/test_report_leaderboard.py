"""`segbench report DIR1 DIR2 ... --out BOARD`: one table over studies, a row per study and row, never merged across
studies, each row's protocol card named; hand-built studies, expected numbers recomputed with the statistics module."""
from __future__ import annotations

import csv
import math
import statistics
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

from segbench.report.cli import main
from segbench.report.leaderboard import board_items, study_names
from segbench.report.protocols import card_hash
from study_files import write_study


def card(crop):
    return {"sources": ["gta"], "train": {"crop": list(crop)}, "targets": {"city": {"split": "val", "classes": 19}}}


SHARED, OTHER = card((768, 768)), card((512, 512))


def record(backbone, seed, gta, city, protocol):
    results = {t: {"miou": m, "pixel_acc": 50.0, "per_class_iou": {"road": m}} for t, m in (("gta", gta),
                                                                                          ("city", city))}
    return {"cell_id": f"{backbone}{seed}{card_hash(protocol)}", "backbone": backbone, "head": "fcn", "source": "gta",
            "seed": seed, "config": {"model": {}, "train": {"iters": 3}}, "results": results, "protocol": protocol}


# study A: r18 under the shared card; study B: r18 under the same card (other numbers: a rerun elsewhere), and
# r18_ibn_b under a card that differs in the crop
A_CITY, B_CITY, B_IBN_CITY = [30.0, 33.0, 34.0], [40.0, 44.0], [50.0, 51.0, 55.0]


@pytest.fixture
def studies(tmp_path):
    a = write_study(tmp_path / "A", [record("r18", s, 60.0 + s, m, SHARED) for s, m in enumerate(A_CITY)])
    b = write_study(tmp_path / "B", [record("r18", s, 70.0, m, SHARED) for s, m in enumerate(B_CITY)]
                    + [record("r18_ibn_b", s, 65.0, m, OTHER) for s, m in enumerate(B_IBN_CITY)])
    return a, b


def read_rows(path):
    return {(r["study"], r["row"]): r for r in csv.DictReader(path.open())}


def test_rows_per_study_never_merged_and_protocols_named(studies, tmp_path, capsys):
    a, b = studies
    board = tmp_path / "board"
    assert main([str(a), str(b), "--out", str(board), "--stat", "std"]) == 0
    rows = read_rows(board / "leaderboard.csv")
    assert list(rows) == [("A", "r18"), ("B", "r18"), ("B", "r18_ibn_b")]
    col = "train gta / test city"
    for key, values in ((("A", "r18"), A_CITY), (("B", "r18"), B_CITY), (("B", "r18_ibn_b"), B_IBN_CITY)):
        assert float(rows[key][f"{col} mIoU"]) == pytest.approx(statistics.fmean(values), abs=0.005)
        assert float(rows[key][f"{col} std"]) == pytest.approx(statistics.stdev(values), abs=0.005)
        assert rows[key][f"{col} n"] == str(len(values))
    shared, other = card_hash(SHARED), card_hash(OTHER)
    assert [r["protocol"] for r in rows.values()] == [shared, shared, other]
    md, out = (board / "leaderboard.md").read_text(), capsys.readouterr().out
    assert f"| B | r18_ibn_b | {other} |" in out and f"leaderboard: {board / 'leaderboard.md'}" in out
    # A's and B's r18 share a card (comparable, yet two rows); only B's ibn row differs, and the footer says in what
    assert "Rows A / r18, B / r18 and B / r18_ibn_b (train gta) differ in protocol: train.crop;" in md
    assert f"| A | r18 | {shared} | 61.0 ± 1.0 | {statistics.fmean(A_CITY):.1f} ± " \
           f"{statistics.stdev(A_CITY):.1f} |" in md
    assert f"| B | r18 | {shared} | 70.0 ± 0.0 (n=2) | 42.0 ± 2.8 (n=2) |" in md
    assert md.count("### card ") == 2  # each distinct card printed once
    assert not (a / "report.md").exists() and not (b / "report.md").exists()  # nothing written under the studies


def test_default_statistic_and_the_html_page(studies, tmp_path):
    a, b = studies
    board = tmp_path / "out" / "board"
    assert main([str(a), str(b), "--out", str(board)]) == 0
    se = statistics.stdev(A_CITY) / math.sqrt(3)
    assert f"| A | r18 | {card_hash(SHARED)} | 61.0 ± 0.6 | {statistics.fmean(A_CITY):.1f} ± {se:.1f} |" in \
        (board / "leaderboard.md").read_text()

    class Links(HTMLParser):
        tables, hrefs, rows = 0, [], 0

        def handle_starttag(self, tag, attrs):
            self.tables += tag == "table"
            self.rows += tag == "summary"
            self.hrefs += [v for k, v in attrs if k == "href"]

    page = Links()
    page.feed((board / "leaderboard.html").read_text())
    assert page.tables == 1 and page.rows == 3
    targets = {(board / unquote(h)).resolve() for h in page.hrefs}
    assert targets == {p.resolve() for s in (a, b) for p in s.glob("cells/*/record.json")}


def test_one_directory_with_out_is_a_board_of_one(studies, tmp_path):
    a, _ = studies
    assert main([str(a), "--out", str(tmp_path / "board")]) == 0
    assert list(read_rows(tmp_path / "board" / "leaderboard.csv")) == [("A", "r18")]


def test_mistakes_are_refused_with_the_fix(studies, tmp_path, capsys):
    a, b = studies
    for argv, words in (([a, b], "add --out BOARD"), ([a, tmp_path / "nowhere", "--out", tmp_path / "o"], "cells/"),
                        ([a, a, "--out", tmp_path / "o"], "more than once"),
                        ([a, b, "--out", tmp_path / "o", "--baseline", "r18"], "--baseline applies to one study"),
                        ([a, b, "--out", tmp_path / "o", "--format", "latex"], "--format latex applies"),
                        ([a, b, "--out", tmp_path / "o", "--select", "oracle"], "--select oracle applies")):
        with pytest.raises(SystemExit) as e:
            main([str(x) for x in argv])
        assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_out_naming_an_existing_file_is_refused_and_the_file_kept(studies, tmp_path, capsys):
    a, b = studies
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    assert main([str(a), str(b), "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{taken} is a file, not a directory; write elsewhere" in err
    assert taken.read_text() == "mine"


def test_studies_that_share_a_directory_name_are_named_by_path(tmp_path):
    x = write_study(tmp_path / "x" / "study", [record("r18", 0, 60.0, 30.0, SHARED)])
    y = write_study(tmp_path / "y" / "study", [record("r18", 0, 62.0, 31.0, SHARED)])
    assert study_names([x, y]) == [str(x), str(y)]
    assert main([str(x), str(y), "--out", str(tmp_path / "board")]) == 0
    assert list(read_rows(tmp_path / "board" / "leaderboard.csv")) == [(str(x), "r18"), (str(y), "r18")]


def test_a_study_name_that_would_merge_two_rows_is_refused():
    from segbench.report.records import scores

    one = scores([record("b / c", 0, 60.0, 30.0, SHARED)])
    other = scores([record("c", 0, 61.0, 31.0, SHARED)])
    with pytest.raises(ValueError, match="rename a results directory"):
        board_items({"a": one, "a / b": other})
    assert [s.row for s in board_items({"a": one, "b": other})[0]] == ["a / b / c"] * 2 + ["b / c"] * 2


def test_a_study_run_with_one_seed_is_not_marked_unfinished(studies, tmp_path):
    """(n=k) says that seeds of a study did not finish: a study that simply had one seed is whole."""
    a, _ = studies
    single = write_study(tmp_path / "C", [record("r18", 0, 65.0, 36.0, SHARED)])
    board = tmp_path / "board"
    assert main([str(a), str(single), "--out", str(board)]) == 0
    md = (board / "leaderboard.md").read_text()
    assert f"| C | r18 | {card_hash(SHARED)} | 65.0 | 36.0 |" in md
    assert "(n=" not in md and "seeds finished" not in md
    assert "over each study's seeds (A: 3 (0, 1, 2); C: 1 (0))" in md
    unfinished = write_study(tmp_path / "D", [record("r18", 0, 65.0, 36.0, SHARED)]
                             + [record("r18_ibn_b", s, 65.0, 50.0, SHARED) for s in (0, 1)])
    assert main([str(a), str(unfinished), "--out", str(board)]) == 0
    md = (board / "leaderboard.md").read_text()
    assert f"| D | r18 | {card_hash(SHARED)} | 65.0 (n=1) | 36.0 (n=1) |" in md  # its study has two seeds
    assert "(n=k): only k seeds finished in that study" in md
