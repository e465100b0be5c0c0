"""Figures of the report (matplotlib Agg, PNG, written atomically by `io.save_figure`).

table.png: mIoU per train/test pair; per_class_iou.png: IoU per class per backbone; gap.png: in-domain vs
cross-domain mIoU per backbone; curves.png: mIoU vs training iteration (eval.every), one panel per train/test pair,
one line per row (mean over the seeds scored at each iteration). Error bars are the report's statistic over seeds
(stats.STATS; se by default).
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from ..io import pyplot, save_figure
from ..spec import is_in_domain
from .protocols import card_hash, card_of, target_protocol_key
from .records import Score, ordered_pairs, ordered_rows, row_labels, scores_by_cell, split_by_protocol, \
    target_position
from .stats import DEFAULT_STAT, Agg
from .tables import col_title, per_class_aggs


def _bars(ax, groups: list[str], series: dict[str, list[Agg]], ylabel: str, colors: dict | None = None,
          stat: str = DEFAULT_STAT) -> None:
    """Grouped bars: one group per x label, one bar per series, `stat` error bars where n > 1.

    `colors` fixes a series' colour across panels, so a backbone missing from one panel does not shift the others.
    """
    width = 0.8 / max(1, len(series))
    for i, (name, aggs) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [a.mean for a in aggs], width, yerr=[a.spread(stat) if a.n > 1 else 0 for a in aggs], capsize=2,
               label=name, color=(colors or {}).get(name))
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def legend_outside(ax) -> None:
    """The legend to the right of the axes, where no bar can be: inside them, matplotlib's 'best' spot still sat
    on the first bars of the embedded table (tight_layout makes room for it)."""
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def plot_table(items: list[Score], path: Path, stat: str = DEFAULT_STAT) -> Path | None:
    rows, cols, cells = ordered_rows(items), ordered_pairs(items), scores_by_cell(items)
    if not rows:
        return None
    plt = pyplot()
    # + 1.5 in: the legend's column beside the axes
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(cols) * max(2, len(rows))) + 1.5, 3.6))
    series = {r: [Agg.of(s.miou for s in cells.get((r, *c), {}).values()) for c in cols] for r in rows}
    _bars(ax, [col_title(c) for c in cols], series, "mIoU (%)", stat=stat)
    legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_per_class(items: list[Score], path: Path, stat: str = DEFAULT_STAT, absent: dict | None = None) -> Path | None:
    """One panel per train/test pair: bars per class, one colour per backbone; the classes of per_class.md (`absent`:
    classes absent from a target's ground truth, left out as there)."""
    tables = {c: t for c, t in per_class_aggs(items, absent).items() if t[1]}
    if not tables:
        return None
    plt = pyplot()
    width = max(8.0, 0.45 * max(len(t[1]) for t in tables.values()) * max(2, max(len(t[0]) for t in tables.values())))
    fig, axes = plt.subplots(len(tables), 1, figsize=(width, 2.8 * len(tables)), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    colors = {r: palette[i % len(palette)] for i, r in enumerate(ordered_rows(items))}
    for ax, (col, (rows, classes, table)) in zip(axes[:, 0], tables.items()):
        _bars(ax, classes, {r: [table[(r, c)] for c in classes] for r in rows}, "IoU (%)", colors, stat)
        ax.set_title(col_title(col), fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def _per_seed_mean(cells: dict, row: str, source: str, targets: list[str]) -> list[float]:
    """Per seed that scored every one of `targets`, their mean mIoU."""
    seeds = set.intersection(*(set(cells.get((row, source, t), {})) for t in targets))
    return [sum(cells[(row, source, t)][sd].miou for t in targets) / len(targets) for sd in sorted(seeds)]


def gap_aggs(items: list[Score]) -> dict[str, dict[str, tuple[Agg, Agg]]]:
    """source -> row -> (in-domain mIoU, cross-domain mIoU averaged per seed over the other targets); a
    multi-source's in-domain mIoU is averaged per seed over its parts, like the cross-domain one."""
    cells = scores_by_cell(items)
    out: dict = {}
    for source in sorted({s.source for s in items}):
        mine = [s for s in items if s.source == source]
        others = sorted({s.target for s in mine if not is_in_domain(source, s.target)})
        own = sorted({s.target for s in mine if is_in_domain(source, s.target)})
        if not others or not own:
            continue
        for r in ordered_rows(mine):
            within, cross = (_per_seed_mean(cells, r, source, targets) for targets in (own, others))
            out.setdefault(source, {})[r] = (Agg.of(within), Agg.of(cross))
    return out


def plot_gap(items: list[Score], path: Path, stat: str = DEFAULT_STAT) -> Path | None:
    """Per source: in-domain and cross-domain bars per backbone, the change (cross - in) written above each pair."""
    data = gap_aggs(items)
    if not data:
        return None
    plt = pyplot()
    n_rows = max(len(v) for v in data.values())
    fig, axes = plt.subplots(1, len(data), figsize=(max(4.5, 1.3 * n_rows + 1.5) * len(data), 3.6), squeeze=False)
    for ax, (source, rows) in zip(axes[0], data.items()):
        names = list(rows)
        _bars(ax, names, {"in-domain": [rows[r][0] for r in names], "cross-domain": [rows[r][1] for r in names]},
              "mIoU (%)", stat=stat)
        for j, r in enumerate(names):
            within, cross = rows[r]
            if not (math.isnan(within.mean) or math.isnan(cross.mean)):
                ax.annotate(f"{cross.mean - within.mean:+.1f}", (j, max(within.mean, cross.mean)),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 4), textcoords="offset points")
        ax.set_title(f"trained on {source}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        legend_outside(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def curve_rows(records: list[dict]) -> list[tuple[Score, list]]:
    """(Score naming the curve's row, source and target; the curve) per curve of every record: rows are named as
    records.scores names them, `[protocol HASH]` included, so seeds measured under different protocols are never
    averaged into one line."""
    stubs, keys, curves = [], [], []
    for record, row in zip(records, row_labels(records)):
        card = card_of(record)
        for target, curve in (record.get("curves") or {}).items():
            stubs.append(Score(row=row, source=record["source"], target=target, seed=int(record["seed"]),
                               miou=math.nan, pixel_acc=math.nan, per_class={}, card=card_hash(card),
                               position=target_position(record, target)))
            keys.append(target_protocol_key(card, target))
            curves.append(curve)
    return list(zip(split_by_protocol(stubs, keys), curves))


def curve_means(records: list[dict]) -> dict[tuple[str, str], dict[str, list[tuple[int, float]]]]:
    """(source, target) -> row -> [(iteration, mean mIoU over the seeds scored there)], iterations ascending."""
    points: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for s, curve in curve_rows(records):
        for iteration, miou in curve:
            points[(s.source, s.target)][s.row][int(iteration)].append(float(miou))
    return {col: {row: [(it, statistics.fmean(v)) for it, v in sorted(its.items())] for row, its in rows.items()}
            for col, rows in points.items()}


def plot_curves(records: list[dict], path: Path) -> Path | None:
    """mIoU during training: one panel per train/test pair, one line per row; None when no record has curves."""
    data = curve_means(records)
    if not data:
        return None
    plt = pyplot()
    cols = ordered_pairs([s for s, _ in curve_rows(records)])  # the tables' order: in-domain, then the spec's
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols) + 1.0, 3.2), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    colors = {r: palette[i % len(palette)] for i, r in enumerate(dict.fromkeys(s.row for s, _ in curve_rows(records)))}
    for ax, col in zip(axes[0], cols):
        for row, line in data[col].items():
            ax.plot([it for it, _ in line], [m for _, m in line], marker=".", label=row, color=colors[row])
        ax.set_title(col_title(col), fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("mIoU (%)")
        ax.grid(alpha=0.3)
    # one legend naming every row: the first panel alone may lack rows that other panels draw
    lines = {line.get_label(): line for ax in axes[0] for line in ax.get_lines()}
    axes[0][0].legend([lines[r] for r in colors if r in lines], [r for r in colors if r in lines], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
