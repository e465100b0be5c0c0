"""Records -> tables (CSV, markdown) and a plot. Reads nothing but `cells/*/record.json`: no training, no model.

`segbench report RESULTS_DIR` rebuilds everything, also while a study is still running.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from pathlib import Path

from .io import write_text


def load_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted(Path(results_dir).glob("cells/*/record.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); delete the file to have the cell evaluated again") from None
    return records


def _row_key(rec: dict, heads: set[str]) -> str:
    return rec["backbone"] if len(heads) <= 1 else f"{rec['backbone']} + {rec['head']}"


def collect(records: list[dict]) -> tuple[list[str], list[tuple[str, str]], dict]:
    """rows (backbones in first-seen order), columns (source, target) with in-domain first, cells -> per-seed mIoUs."""
    heads = {r["head"] for r in records}
    rows: list[str] = []
    cols: list[tuple[str, str]] = []
    values: dict[tuple[str, tuple[str, str]], dict[int, float]] = {}
    for rec in records:
        row = _row_key(rec, heads)
        if row not in rows:
            rows.append(row)
        src = rec["source"]
        targets = sorted(rec.get("results", {}), key=lambda t: (t != src, t))
        for tgt in targets:
            col = (src, tgt)
            if col not in cols:
                cols.append(col)
            miou = rec["results"][tgt].get("miou")
            if miou is not None and not (isinstance(miou, float) and math.isnan(miou)):
                values.setdefault((row, col), {})[rec["seed"]] = miou
    cols.sort(key=lambda c: (c[0], c[1] != c[0], c[1]))
    return rows, cols, values


def _stats(seeds: dict[int, float]) -> tuple[float, float, int]:
    vals = [seeds[k] for k in sorted(seeds)]
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return mean, std, len(vals)


def col_title(col: tuple[str, str]) -> str:
    return f"train {col[0]} / test {col[1]}"


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, markdown-ready rows, and CSV rows (means, stds and seed counts as numbers)."""
    rows, cols, values = collect(records)
    header = ["backbone"] + [col_title(c) for c in cols]
    md_rows, csv_rows = [], []
    for row in rows:
        md = [row]
        out = {"backbone": row}
        for col in cols:
            seeds = values.get((row, col))
            title = col_title(col)
            if not seeds:
                md.append("–")
                out.update({f"{title} mIoU": "", f"{title} std": "", f"{title} n": 0})
                continue
            mean, std, n = _stats(seeds)
            md.append(f"{mean:.1f} ± {std:.1f}" if n > 1 else f"{mean:.1f}")
            out.update({f"{title} mIoU": f"{mean:.2f}", f"{title} std": f"{std:.2f}", f"{title} n": n})
        md_rows.append(md)
        csv_rows.append(out)
    return header, md_rows, csv_rows


def markdown_table(records: list[dict]) -> str:
    header, rows, _ = table_rows(records)
    if not rows:
        return "(no results yet)\n"
    seeds = sorted({r["seed"] for r in records})
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    note = f"mIoU (%) on the 19 Cityscapes classes present in each test set"
    note += f", mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    return "\n".join(lines) + f"\n\n{note}.\n"


def per_seed_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["backbone", "head", "source", "target", "seed", "miou", "pixel_acc", "cell_id"])
    for rec in records:
        for tgt, m in rec.get("results", {}).items():
            w.writerow([rec["backbone"], rec["head"], rec["source"], tgt, rec["seed"], f"{m['miou']:.4f}",
                        f"{m['pixel_acc']:.4f}", rec["cell_id"]])
    return buf.getvalue()


def table_csv(records: list[dict]) -> str:
    _, _, rows = table_rows(records)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def plot_table(records: list[dict], path: Path) -> Path | None:
    """Grouped bars: one group per train/test column, one bar per backbone, error bars over seeds."""
    rows, cols, values = collect(records)
    if not rows or not cols:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(cols) * max(1, len(rows)) / 2), 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        means, errs = [], []
        for col in cols:
            seeds = values.get((row, col))
            mean, std, _ = _stats(seeds) if seeds else (math.nan, 0.0, 0)
            means.append(mean)
            errs.append(std)
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=row)
    ax.set_xticks(range(len(cols)), [col_title(c) for c in cols])
    ax.set_ylabel("mIoU (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def build_report(results_dir: Path, plot: bool = True) -> str:
    """Write table.csv, table.md, per_seed.csv (and table.png) under `results_dir`; return the markdown."""
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    md = markdown_table(records)
    write_text(results_dir / "table.md", md)
    write_text(results_dir / "table.csv", table_csv(records))
    write_text(results_dir / "per_seed.csv", per_seed_csv(records))
    if plot:
        plot_table(records, results_dir / "table.png")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segbench report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if not (args.results_dir / "cells").is_dir():
        parser.error(f"{args.results_dir} holds no cells/ directory: pass the directory a study wrote (results/NAME)")
    print(build_report(args.results_dir, plot=not args.no_plot))
    return 0
