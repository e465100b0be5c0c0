"""LaTeX tables (table.tex, dg.tex): golden files, escaping, bold selection, and well-formed booktabs structure.

No LaTeX is installed here, so the .tex is not compiled; instead every table is checked for balanced braces and
environments, the three booktabs rules and no vertical ones, and as many `&` in every row as in its header.
"""
from __future__ import annotations

import os
import re

import pytest

from segbench.io import write_json
from segbench.report import build_report
from segbench.report.cli import main
from segbench.report.latex import escape
from study_files import GOLDEN, reported_golden_study



def well_formed(tex: str) -> None:
    """Balanced braces and environments; per tabular: toprule/midrule/bottomrule, no `|`, equal `&` per row."""
    plain = re.sub(r"\\[{}&%$#_]", "", tex)  # escaped characters are text, not syntax
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unclosed {"
    assert plain.count(r"\begin{table}") == plain.count(r"\end{table}") >= 1
    tabulars = re.findall(r"\\begin\{tabular\}\{([^}]*)\}\n(.*?)\\end\{tabular\}", plain, re.S)
    assert len(tabulars) == plain.count(r"\begin{table}")
    for spec, body in tabulars:
        assert "|" not in spec and r"\hline" not in body
        lines = body.strip().split("\n")
        assert lines[0] == r"\toprule" and lines[2] == r"\midrule" and lines[-1] == r"\bottomrule"
        rows = [lines[1]] + lines[3:-1]
        for row in rows:
            assert row.endswith(r" \\") and row.count("&") == len(spec) - 1, row


@pytest.fixture
def golden_study(tmp_path):
    return reported_golden_study(tmp_path)


@pytest.mark.parametrize("name", ["table.tex", "dg.tex"])
def test_latex_matches_golden(golden_study, name):
    expected = GOLDEN / "expected" / name
    produced = (golden_study / name).read_text()
    if os.environ.get("SEGBENCH_UPDATE_GOLDEN"):
        expected.write_text(produced)
    assert produced == expected.read_text(), f"{name} changed; if intended, regenerate (tests/golden/README.md)"
    well_formed(produced)


def test_golden_latex_entries_are_the_markdown_entries(golden_study):
    """Same aggregates and rounding as table.md: each markdown row, made LaTeX, is a row of table.tex."""
    md_rows = [line.strip("|").split(" | ") for line in (golden_study / "table.md").read_text().splitlines()
               if line.startswith("| resnet")]
    tex = (golden_study / "table.tex").read_text().replace(r"\textbf{", "").replace(r"}\,", r"\,")
    for cells in md_rows:
        row = " & ".join(escape(c.strip()).replace(r" $\pm$ ", r"\,$\pm$\,") for c in cells) + r" \\"
        assert row in tex
    assert r"resnet18\_ibn\_a & 1.8\,$\pm$\,1.0 & 2.2 (n=1) \\" in tex


def test_escape_makes_special_characters_print_as_written():
    assert escape("resnet18_ibn_a") == r"resnet18\_ibn\_a"
    assert escape("a&b%c$d#e{f}g~h^i\\j") == \
        r"a\&b\%c\$d\#e\{f\}g\textasciitilde{}h\textasciicircum{}i\textbackslash{}j"
    assert escape("64.5 ± 0.3") == r"64.5 $\pm$ 0.3" and escape("–") == "--"


def test_escape_prints_less_greater_and_bar_in_the_default_encoding():
    """LaTeX's default OT1 encoding has ¡, ¿ and an em dash in the slots of <, > and | (latex3/latex2e
    base/ltoutenc.dtx: \\DeclareTextSymbol{\\textemdash}{OT1}{124}), so typed as is they print wrongly; \\textless,
    \\textgreater and \\textbar have defaults in every encoding (same file: \\DeclareTextSymbolDefault ... {OML}/{OMS})."""
    assert escape("iw(tag=<a|b>)") == r"iw(tag=\textless{}a\textbar{}b\textgreater{})"


def _record(backbone, seed, mious):
    results = {t: {"miou": m, "pixel_acc": 50.0, "per_class_iou": {"road": m}, "eval": {"split": "val", "size": None}}
               for t, m in mious.items()}
    return {"cell_id": f"{backbone}{seed}", "backbone": backbone, "head": "fcn", "source": "sim", "seed": seed,
            "config": {"model": {"output_stride": 8}, "train": {"iters": 3, "workers": 0}}, "results": results}


@pytest.fixture
def hand_built(tmp_path):
    """Two seeds per backbone. Means (hand-computed), standard error = |a - b| / 2 for two seeds:
        sim->sim    A 41.0 ± 1.0 (best)   B 39.0 ± 1.0           C 36.0 ± 1.0
        sim->photo  A 31.0 ± 1.0 (tie)    B 31.04 ± 0.5 (tie: prints 31.0)   C 21.0 ± 1.0
        sim->night  A 11.0 ± 1.0 (only row measured: no bold)
    """
    per_seed = {"A": [{"sim": 40, "photo": 30, "night": 10}, {"sim": 42, "photo": 32, "night": 12}],
                "B": [{"sim": 38, "photo": 30.54}, {"sim": 40, "photo": 31.54}],
                "C": [{"sim": 35, "photo": 20}, {"sim": 37, "photo": 22}]}
    for backbone, seeds in per_seed.items():
        for seed, mious in enumerate(seeds):
            cell = tmp_path / "cells" / f"sim__{backbone}__fcn__s{seed}__{backbone}{seed}"
            write_json(cell / "record.json", _record(backbone, seed, mious))
            (cell / "done").touch()
    build_report(tmp_path, plot=False)
    return tmp_path


def _rows(tex: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in tex.splitlines() if line.endswith(r" \\") and line[:1] in "ABC"
            for cells in [line[:-3].split(" & ")]}


def test_best_mean_per_column_is_bold_ties_all_bold_single_row_never(hand_built):
    tex = (hand_built / "table.tex").read_text()
    assert r"backbone & sim $\to$ sim & sim $\to$ night & sim $\to$ photo \\" in tex
    rows = _rows(tex)
    assert rows["A"] == [r"\textbf{41.0}\,$\pm$\,1.0", r"11.0\,$\pm$\,1.0", r"\textbf{31.0}\,$\pm$\,1.0"]
    assert rows["B"] == [r"39.0\,$\pm$\,1.0", "--", r"\textbf{31.0}\,$\pm$\,0.5"]
    assert rows["C"] == [r"36.0\,$\pm$\,1.0", "--", r"21.0\,$\pm$\,1.0"]
    well_formed(tex)


def test_dg_table_bolds_per_column_and_names_the_statistic(hand_built):
    """DG columns: sim (in-domain), night, photo, mean (unseen); only A scored both unseen targets (mean 21.0:
    per seed (10 + 30) / 2 = 20 and (12 + 32) / 2 = 22, se 1.0), so that column has no bold."""
    tex = (hand_built / "dg.tex").read_text()
    assert r"backbone & sim (in-domain) & night & photo & mean (unseen) \\" in tex
    rows = _rows(tex)
    assert rows["A"] == [r"\textbf{41.0}\,$\pm$\,1.0", r"11.0\,$\pm$\,1.0", r"\textbf{31.0}\,$\pm$\,1.0",
                         r"21.0\,$\pm$\,1.0"]
    assert rows["B"][2] == r"\textbf{31.0}\,$\pm$\,0.5" and rows["B"][3] == "--"
    assert r"mean $\pm$ standard error over 2 seeds (0, 1)" in tex
    well_formed(tex)


@pytest.mark.parametrize("stat", ["se", "std", "ci95"])
def test_every_statistic_gives_well_formed_tables_naming_it(hand_built, stat):
    build_report(hand_built, plot=False, stat=stat)
    words = {"se": "standard error", "std": "sample std", "ci95": r"half-width of the 95\% t interval"}[stat]
    for name in ("table.tex", "dg.tex"):
        tex = (hand_built / name).read_text()
        assert rf"mean $\pm$ {words} over 2 seeds" in tex
        well_formed(tex)


def test_cli_format_latex_prints_only_latex_on_stdout(hand_built, capsys):
    assert main([str(hand_built), "--no-plot", "--format", "latex"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(r"\begin{table}") and out.rstrip().endswith(r"\end{table}")
    assert out == (hand_built / "table.tex").read_text() + "\n" + (hand_built / "dg.tex").read_text() + "\n"
    assert "report.md" in err
