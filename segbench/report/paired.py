"""Paired comparisons against a baseline backbone or method: per row and target, the mean over shared seeds of
(row - baseline) with a paired 95% t interval, as markdown, CSV and a forest plot.

Two runs with the same seed draw the same sample stream (data/sampler.py: order and per-sample seeds are a function of
the run seed), so the per-seed difference cancels the noise both runs share: the paired interval is the direct test of
"does this backbone beat the baseline here".
A row is compared only with the baseline row of the same source, head, differing config keys and protocol (its
label with the backbone swapped, or with the method swapped when the baseline is a method: `--baseline erm` compares
every method with plain training on the same backbone), so a change of protocol or setting is never read as a
backbone or method effect.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..config import ConfigError
from ..io import csv_text, pyplot, save_figure
from ..spec import is_in_domain
from .records import Score, scores_by_cell
from .stats import DASH, Paired
from .tables import Layout, Table, dg_aggs, is_mean, unseen_means

Comparisons = dict[str, tuple[str, list[tuple[str, str]], list[str], dict]]


def _seed_values(cells: dict, row: str, source: str, targets: list[str]) -> dict[int, float]:
    """seed -> mIoU of one table cell (one target), or of a mean column per seed over the seeds that scored every
    one of its targets."""
    seeds = set.intersection(*(set(cells.get((row, source, t), {})) for t in targets))
    return {sd: statistics.fmean(cells[(row, source, t)][sd].miou for t in targets) for sd in seeds}


def _cards(cells: dict, row: str, source: str, targets: list[str]) -> set[str]:
    return {s.card for t in targets for s in cells.get((row, source, t), {}).values() if s.card}


def baseline_row(row: str, score: Score, baseline: str, by_method: bool = False) -> str:
    """The row's label with its backbone swapped for `baseline` (`resnet18_ibn_a + deeplab [iters=3]` ->
    `resnet18 + deeplab [iters=3]`), or its method with `by_method` (`resnet18 + isw` -> `resnet18 + erm`)."""
    named = f"{score.backbone} + {score.method}" if by_method else score.backbone
    swapped = f"{score.backbone} + {baseline}" if by_method else baseline
    return swapped + row[len(named):] if row.startswith(named) else ""


def comparisons(items: list[Score], baseline: str) -> Comparisons:
    """source -> (baseline label, [(row, its baseline row)], columns, {(row, column): Paired}); the columns are the
    domain-generalization table's (in-domain, unseen targets, their mean). Raises ConfigError for a baseline that
    is neither a backbone nor a method of these records."""
    backbones, methods = {s.backbone for s in items}, {s.method for s in items if s.method}
    if not items:
        raise ConfigError(f"--baseline {baseline}: this study has no scored cell yet to compare; rerun the report "
                          "once cells have finished, or drop --baseline")
    if baseline not in backbones | methods:
        have = ", ".join(sorted(backbones)) + (f"; methods: {', '.join(sorted(methods))}" if methods else "")
        raise ConfigError(f"--baseline {baseline}: no record of that backbone or method here (backbones: {have})")
    by_method = baseline in methods and baseline not in backbones
    cells = scores_by_cell(items)
    score_of = {s.row: s for s in items}
    out: Comparisons = {}
    for source, (rows, columns, _) in dg_aggs(items).items():
        means = unseen_means(source, [c for c in columns if not is_mean(c)])
        pairs = [(r, baseline_row(r, score_of[r], baseline, by_method)) for r in rows
                 if (score_of[r].method if by_method else score_of[r].backbone) != baseline]
        pairs = [(r, b) for r, b in pairs if b in rows]
        if not pairs:
            continue
        table = {}
        for r, b in pairs:
            for c in columns:
                targets = means.get(c, [c])
                if _cards(cells, r, source, targets) != _cards(cells, b, source, targets):
                    continue  # measured under different protocols: no comparison
                table[(r, c)] = Paired.of(_seed_values(cells, r, source, targets),
                                          _seed_values(cells, b, source, targets))
        out[source] = (baseline, pairs, columns, table)
    return out


def paired_layout(items: list[Score], baseline: str) -> Layout:
    """The paired comparison as data (tables.Layout), for paired.md/.csv and report.html alike: per source, rows =
    the rows other than the baseline, columns = targets and their mean."""
    tables, csv_rows, ns = [], [], set()
    for source, (_, pairs, columns, table) in comparisons(items, baseline).items():
        titles = [f"{c} (in-domain)" if is_in_domain(source, c) else c for c in columns]
        body = [[f"{r} − {b}"] + [table[(r, c)].md() if (r, c) in table else DASH for c in columns]
                for r, b in pairs]
        tables.append(Table(f"trained on {source}", ["row − baseline"] + titles, body, [r for r, _ in pairs],
                            source=source))
        for r, b in pairs:
            for c in columns:
                p = table.get((r, c))
                if p is None or p.n == 0:
                    continue
                ns.add(p.n)
                csv_rows.append([source, r, b, c, f"{p.diff:.2f}", *(("", "") if p.n < 2 else
                                 (f"{p.lo:.2f}", f"{p.hi:.2f}")), str(p.n), "yes" if p.significant else "no"])
    if not tables:
        return Layout()
    n_text = "/".join(map(str, sorted(ns)))
    note = (f"Difference in mIoU (points) to the baseline {baseline} (same source, head, settings and protocol): "
            f"mean over the n={n_text} seeds both share, [paired 95% t interval over the per-seed differences]; "
            "* = the interval excludes zero.\n")
    header = ["source", "row", "baseline", "target", "diff", "ci95_low", "ci95_high", "n", "significant"]
    return Layout(tables, note, csv_text(header, csv_rows))


def paired_text(layout: Layout, baseline: str) -> tuple[str, str]:
    """(markdown, csv) of a paired_layout."""
    if not layout.tables:
        return f"(no row shares a source, head and protocol with {baseline})\n", ""
    return layout.markdown(), layout.csv


def paired_tables(items: list[Score], baseline: str) -> tuple[str, str]:
    """(markdown, csv) of the paired comparison (paired.md, paired.csv)."""
    return paired_text(paired_layout(items, baseline), baseline)


def plot_paired(items: list[Score], baseline: str, path: Path) -> Path | None:
    """Forest plot: per source a panel, per row a band, one point and its 95% interval per target; zero marked."""
    data = {s: v for s, v in comparisons(items, baseline).items() if v[2]}
    if not data:
        return None
    plt = pyplot()
    height = max(2.5, 0.9 + 0.35 * max(len(v[1]) * len(v[2]) for v in data.values()))
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), height), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    for ax, (source, (_, pairs, columns, table)) in zip(axes[0], data.items()):
        step = 0.8 / max(1, len(columns))
        for j, c in enumerate(columns):
            ys, xs, err = [], [], []
            for i, (r, _) in enumerate(pairs):
                p = table.get((r, c))
                if p is None or p.n == 0:
                    continue
                ys.append(i + 0.4 - (j + 0.5) * step)
                xs.append(p.diff)
                err.append(0.0 if math.isnan(p.hi) else p.hi - p.diff)
            ax.errorbar(xs, ys, xerr=err, fmt="o", capsize=3, color=palette[j % len(palette)], label=c)
        ax.axvline(0.0, color="0.4", lw=1, ls="--")
        ax.set_yticks(range(len(pairs)), [r for r, _ in pairs])
        ax.invert_yaxis()
        ax.set_xlabel(f"mIoU difference to {baseline} (points, 95% CI)")
        ax.set_title(f"trained on {source}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
