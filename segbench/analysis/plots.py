"""Figures for the analyses (matplotlib Agg, PNG, written atomically by `io.save_figure`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..io import pyplot, save_figure
from .divergence import network_order


def plot_shift(rows: Sequence, path: Path) -> Path:
    """One panel per transform: mIoU drop (points) against level, clean at 0, one line per model."""
    plt = pyplot()
    models = list(dict.fromkeys(r.model for r in rows))
    transforms = [t for t in dict.fromkeys(r.transform for r in rows) if t != "clean"]
    cols = min(4, max(1, len(transforms)))
    nrows = max(1, math.ceil(len(transforms) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharey=True)
    for k, t in enumerate(transforms):
        ax = axes[k // cols][k % cols]
        for m in models:
            mine = [r for r in rows if r.model == m and r.transform == t]
            ax.plot(range(len(mine) + 1), [0.0] + [r.drop for r in mine], marker="o", ms=3, label=m)
        labels = ["clean"] + [r.label for r in rows if r.model == models[0] and r.transform == t]
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=20)
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
        if k % cols == 0:
            ax.set_ylabel("mIoU drop (points)", fontsize=8)
    for k in range(len(transforms), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    first = rows[0]
    fig.suptitle(f"Appearance shift on {first.dataset} {first.split}: drop from clean mIoU", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_divergence(rows: Sequence, path: Path) -> Path:
    """Divergence vs layer, placed by name in network order (`network_order`): one panel per pair type (content with
    its random-halves floor dotted), one line per model."""
    plt = pyplot()
    models = list(dict.fromkeys(r.model for r in rows))
    pairs = [p for p in ("appearance", "content", "domain") if any(r.pair == p for r in rows)]
    if not pairs:
        pairs = ["null"]
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    layers = network_order(r.layer for r in rows)
    x = {name: k for k, name in enumerate(layers)}
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        shown = [pair, "null"] if pair == "content" else [pair]
        positive = True
        for m in models:
            for p in shown:
                mine = sorted((r for r in rows if r.model == m and r.pair == p), key=lambda r: r.depth)
                if not mine:
                    continue
                ys = [r.divergence for r in mine]
                positive &= all(y > 0 for y in ys)
                ax.plot([x[r.layer] for r in mine], ys, color=colors[m], ls=":" if p == "null" else "-", marker="o",
                        ms=3, label=m if p != "null" else f"{m} (random halves)")
        detail = next((r.detail for r in rows if r.pair == pair), "")
        ax.set_title(f"{pair}: {detail}", fontsize=8)
        ax.set_xticks(range(len(layers)), layers, rotation=60, fontsize=6)
        if positive:
            ax.set_yscale("log")
        ax.set_ylabel("feature divergence (sym. KL)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)
