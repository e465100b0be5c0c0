"""`build_report`: every table and figure of a results directory, from its records alone (safe while a study runs).

Files written under RESULTS_DIR:
  table.md/.csv        paper layout: rows backbones, columns train/test pairs (mean ± `stat` over seeds, n; the CSV
                       also keeps the sample std)
  dg.md/.csv           domain-generalization layout: per source, rows backbones, columns targets and their mean
  table.tex, dg.tex    the same two layouts as booktabs LaTeX tables (best mean per column in bold)
  per_class.md/.csv    per-class IoU per train/test pair
  per_seed.csv         every measurement, unaggregated
  bootstrap.csv        per cell and target, the 95% bootstrap interval of its mIoU over test images (cells that kept
                       per-image matrices); table.md and dg.md show it for one-seed rows
  paired.md/.csv       with a baseline backbone: per row and target, the mean per-seed difference to it, 95% CI
  published.md/.csv/.tex  where published tables apply (`published`: auto, none or a file; report/published.py):
                       each published row beside the measured row it maps to, the difference, whether the published
                       value lies in the measured interval, and the protocol fields in which they differ
                       (report/reproduced.py)
  report.md            all of the above with the figures, each protocol card once, and a provenance summary
  report.html          the same tables as one self-contained page (sortable, figures inlined, each row's protocol
                       card, config and cell files one click away): opens from disk, fetches nothing
  table.png, per_class_iou.png, gap.png, qualitative.png (the last only when records list prediction samples),
  paired.png (forest plot of paired.md, with a baseline)
  curves.png           mIoU vs training iteration per target (records trained under eval.every)
  selection.md/.csv    with select="all": the model-selection rules side by side (report/selection.py)
Under select="source-val" or "oracle" every table reports that rule's checkpoint and says so in its title, footer
and row labels.

Each build writes one consistent set: a file of this list that an earlier build wrote and this one does not (paired.*
without a baseline, selection.* without select="all", a figure without data or with plot=False, bootstrap.csv without
per-image files) is removed, so nothing on disk disagrees with report.md.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import plots, tables
from ..io import write_text
from ..record import load_records
from .bootstrap import absent_from_ground_truth, bootstrap_csv, cell_intervals
from .html import study_page
from .latex import dg_tex, paper_tex
from .paired import paired_layout, paired_text, plot_paired
from .protocols import card_hash, card_of, cards_section
from .published import AUTO, resolve
from .qualitative import plot_qualitative
from .reproduced import build_lines, published_csv, published_layouts, published_markdown, published_tex
from .records import count_done
from .selection import ALL, LAST, check_rule, comparison_tables, rule_note, rule_scores, select
from .stats import DEFAULT_STAT

#: every table file a build may write (FIGURES: every figure)
TABLE_FILES = ("table.md", "table.csv", "table.tex", "dg.md", "dg.csv", "dg.tex", "per_class.md", "per_class.csv",
               "per_seed.csv", "bootstrap.csv", "paired.md", "paired.csv", "selection.md", "selection.csv", "report.md",
               "report.html")
FIGURES = {"table.png": "mIoU per train/test pair", "per_class_iou.png": "IoU per class",
           "gap.png": "in-domain vs cross-domain mIoU", "qualitative.png": "qualitative results",
           "paired.png": "paired differences to the baseline", "curves.png": "mIoU during training"}


def provenance_summary(records: list[dict]) -> str:
    """What produced the numbers: code versions, devices, wall time, throughput, counted over records."""
    if not records:
        return ""
    prov = [r.get("provenance") or {} for r in records]
    train = [r.get("training") or {} for r in records]

    def tally(key: str) -> str:
        counts = Counter(str(p.get(key)) for p in prov if p.get(key) is not None)
        return ", ".join(f"{k} ({n})" if len(counts) > 1 else k for k, n in counts.most_common()) or "unknown"

    commits = Counter((p.get("git_commit") or "unknown")[:10] for p in prov)
    seconds = sum(t.get("train_seconds") or 0 for t in train)
    rates = [t["images_per_s"] for t in train if t.get("images_per_s")]
    lines = [f"- segbench {tally('segbench')}, git {', '.join(commits)}; torch {tally('torch')}, CUDA {tally('cuda')}",
             f"- devices: {tally('device_name')}",
             f"- training wall time {seconds / 3600:.2f} h over {sum(1 for t in train if t)} trained cells"
             + (f", {min(rates):.1f}-{max(rates):.1f} images/s" if rates else "")]
    return "\n".join(lines) + "\n"


def build_report(results_dir: Path, plot: bool = True, stat: str = DEFAULT_STAT, baseline: str | None = None,
                 fmt: str = "markdown", select_rule: str = LAST, published: str | Path | None = AUTO) -> str:
    """Write every table (and figure) under `results_dir`; return the paper-layout markdown (table.md), followed by
    the paired comparison when a `baseline` backbone is named, or with `fmt="latex"` table.tex and dg.tex.
    `stat`: the spread after ± (stats.STATS); `select_rule`: the model-selection rule the tables report
    (selection.RULES), or "all" for `last` tables plus selection.md; `published`: which published tables go beside
    the measured rows (published.resolve: "auto", the tables naming this study; "none" or None; or a file)."""
    results_dir = Path(results_dir)
    published_tables = resolve(published, results_dir.name)  # a bad file stops the report before it writes
    records = load_records(results_dir)
    written: set[str] = set()

    def put(name: str, text: str) -> None:
        write_text(results_dir / name, text)
        written.add(name)

    rule = LAST if check_rule(select_rule, allow_all=True) == ALL else select_rule
    selected = select(records, rule)
    items = rule_scores(selected, rule)
    cards = {card_hash(c): c for c in map(card_of, selected) if c}
    selection_md = selection_csv = ""
    if select_rule == ALL:  # before any file is written: a cell without curves stops the report here
        selection_md, selection_csv = comparison_tables(records, stat)
    paired_md, paired = "", None
    if baseline:
        paired = paired_layout(items, baseline)
        paired_md, paired_csv = paired_text(paired, baseline)
        put("paired.md", paired_md)
        put("paired.csv", paired_csv)
    intervals = cell_intervals(records) if rule == LAST else {}  # per-image matrices are the last weights'
    if intervals:
        put("bootstrap.csv", bootstrap_csv(records, intervals))
    paper = tables.paper_layout(items, cards, stat, intervals)
    dg = tables.dg_layout(items, cards, stat, intervals)
    absent = absent_from_ground_truth(records)  # the test split's, whatever the rule: left out of per-class tables
    pc = tables.per_class_layout(items, stat, absent)
    paper_md, dg_md, pc_md = paper.markdown(), dg.markdown(), pc.markdown()
    paper_csv, dg_csv, pc_csv = paper.csv, dg.csv, pc.csv
    if rule != LAST:
        note = rule_note(rule)
        paper_md, dg_md, pc_md = (f"{note}\n{md}\n{note}" for md in (paper_md, dg_md, pc_md))
    if select_rule == ALL:
        put("selection.md", selection_md)
        put("selection.csv", selection_csv)
    put("table.md", paper_md)
    put("table.csv", paper_csv)
    put("dg.md", dg_md)
    put("dg.csv", dg_csv)
    paper_latex, dg_latex = paper_tex(items, cards, stat, intervals), dg_tex(items, cards, stat, intervals)
    put("table.tex", paper_latex)
    put("dg.tex", dg_latex)
    put("per_class.md", pc_md)
    put("per_class.csv", pc_csv)
    put("per_seed.csv", tables.per_seed(items))
    published_lines = build_lines(published_tables, items, selected, cards, intervals)
    published_tabs = published_layouts(published_lines, published_tables, stat)
    published_md = published_markdown(published_tabs, stat)
    if published_tables:
        put("published.md", published_md)
        put("published.csv", published_csv(published_lines, stat))
        put("published.tex", published_tex(published_lines, published_tables, stat))
    figures = {}
    if plot:
        figures = {"table.png": plots.plot_table(items, results_dir / "table.png", stat),
                   "per_class_iou.png": plots.plot_per_class(items, results_dir / "per_class_iou.png", stat,
                                                           absent),
                   "gap.png": plots.plot_gap(items, results_dir / "gap.png", stat),
                   "qualitative.png": plot_qualitative(records, results_dir / "qualitative.png")}
        if baseline:
            figures["paired.png"] = plot_paired(items, baseline, results_dir / "paired.png")
        if any(r.get("curves") for r in records):
            figures["curves.png"] = plots.plot_curves(records, results_dir / "curves.png")
    report = report_markdown(results_dir.name, records, paper_md, dg_md, pc_md, figures, cards_section(items, cards),
                             paired_md, baseline, published_md)
    if selection_md:
        report += "\n## Model selection\n\n" + selection_md.replace("### ", "#### ")
    put("report.md", report)
    layouts = [("Cross-domain (paper layout)", paper), ("Domain generalization", dg)]
    layouts += [(f"Published: {heading}", layout) for heading, layout in published_tabs]
    if paired is not None:
        layouts.append((f"Paired comparison with {baseline}", paired))
    layouts.append(("Per-class IoU", pc))
    shown = {FIGURES[f]: p for f, p in figures.items() if p is not None}
    put("report.html", study_page(results_dir, records, items, cards, layouts, status_line(records), shown,
                                  provenance_summary(records)))
    written.update(f for f, p in figures.items() if p is not None)
    remove_stale(results_dir, written)
    if fmt == "latex":
        return paper_latex + "\n" + dg_latex
    return paper_md + (f"\nPaired comparison with {baseline}:\n\n{paired_md}" if baseline else "")


def remove_stale(results_dir: Path, written: set[str]) -> list[str]:
    """Remove the report files an earlier build wrote and this one did not (module docstring); returns their names."""
    stale = [name for name in (*TABLE_FILES, *FIGURES) if name not in written and (results_dir / name).is_file()]
    for name in stale:
        (results_dir / name).unlink()
    return stale


def status_line(records: list[dict]) -> str:
    return f"{len(records)} cell record(s), {count_done(records)} finished."


def report_markdown(name: str, records: list[dict], paper_md: str, dg_md: str, pc_md: str, figures: dict,
                    protocols_md: str = "", paired_md: str = "", baseline: str | None = None,
                    published_md: str = "") -> str:
    parts = [f"# {name}\n\n{status_line(records)}\n", "## Cross-domain (paper layout)\n\n" + paper_md,
             "## Domain generalization\n\n" + dg_md.replace("### ", "#### ")]
    if published_md:
        parts.append("## Published numbers\n\n" + published_md)
    if baseline:
        parts.append(f"## Paired comparison with {baseline}\n\n" + paired_md.replace("### ", "#### "))
    parts.append("## Per-class IoU\n\n" + pc_md.replace("### ", "#### "))
    shown = [f"![{FIGURES[f]}]({f})" for f, p in figures.items() if p is not None]
    if figures and figures.get("qualitative.png") is None:
        shown.append("(no qualitative panel: no record lists prediction samples)")
    if shown:
        parts.append("## Figures\n\n" + "\n\n".join(shown) + "\n")
    if protocols_md:
        parts.append("## Protocol cards\n\nWhat the numbers above were measured under; a table footer names each "
                     "source's card by its hash (docs/experiments.md, \"Protocols\").\n\n" + protocols_md)
    if records:
        parts.append("## Provenance\n\n" + provenance_summary(records))
    return "\n".join(parts)

