"""The qualitative panel: image / ground truth / one prediction per backbone, in the Cityscapes palette.

Built from the prediction dumps the engine lists under `results[TARGET]["samples"]` (`pred` relative to the cell
directory, an 8-bit trainId PNG the size of the label). Ground truth comes from `gt` (a trainId PNG, relative to the
cell directory) when the record has it, else from the dataset's `label` file when that already holds trainIds
(the embedded domains, BDD100K); otherwise the column says so rather than drawing wrong colours.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import pyplot, save_figure
from ..labels import IGNORE_INDEX, NUM_CLASSES, colorize
from ..spec import is_in_domain
from .records import row_labels

MAX_IMAGES = 3


def _read(path: Path, color: bool) -> np.ndarray | None:
    import cv2

    if not path or not Path(path).is_file():
        return None
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if color:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img if img.ndim == 2 else None


def _is_train_ids(label: np.ndarray) -> bool:
    values = np.unique(label)
    return bool(np.all((values < NUM_CLASSES) | (values == IGNORE_INDEX)))


def ground_truth(sample: dict, cell_dir: Path) -> np.ndarray | None:
    if sample.get("gt"):
        return _read(Path(cell_dir) / sample["gt"], color=False)
    label = _read(Path(sample["label"]), color=False) if sample.get("label") else None
    return label if label is not None and label.dtype == np.uint8 and _is_train_ids(label) else None


def pick(records: list[dict]) -> tuple[tuple[str, str], list[str], dict] | None:
    """The train/test pair to show (cross-domain first), its rows, and {row: (record, {image: sample})}.

    One record per row (lowest seed); images are those every row has a dump for, in dump order.
    """
    labels = row_labels(records)
    pairs: dict = {}
    for rec, row in zip(records, labels):
        for target, m in rec.get("results", {}).items():
            if m.get("samples"):
                pairs.setdefault((rec["source"], target), {})
                best = pairs[(rec["source"], target)].get(row)
                if best is None or rec["seed"] < best[0]["seed"]:
                    pairs[(rec["source"], target)][row] = (rec, {s["image"] or s["pred"]: s for s in m["samples"]})
    if not pairs:
        return None
    pair = sorted(pairs, key=lambda p: (is_in_domain(*p), p))[0]
    by_row = pairs[pair]
    rows = [r for r in dict.fromkeys(labels) if r in by_row]
    common = [k for k in by_row[rows[0]][1] if all(k in by_row[r][1] for r in rows)][:MAX_IMAGES]
    return pair, rows, {r: (by_row[r][0], {k: by_row[r][1][k] for k in common}) for r in rows}


def plot_qualitative(records: list[dict], path: Path) -> Path | None:
    """Write the panel; None (no file) when no record lists prediction samples."""
    chosen = pick(records)
    if chosen is None:
        return None
    (source, target), rows, by_row = chosen
    keys = list(by_row[rows[0]][1])
    if not keys:
        return None
    plt = pyplot()
    ncols = 2 + len(rows)
    fig, axes = plt.subplots(len(keys), ncols, figsize=(2.6 * ncols, 1.6 * len(keys) + 0.6), squeeze=False)
    first_rec, first = by_row[rows[0]]
    for i, key in enumerate(keys):
        sample = first[key]
        cells = [("image", _read(Path(sample["image"]), color=True) if sample.get("image") else None),
                 ("ground truth", ground_truth(sample, first_rec["_dir"]))]
        for r in rows:
            rec, samples = by_row[r]
            pred = _read(Path(rec["_dir"]) / samples[key]["pred"], color=False)
            cells.append((r, pred))
        for j, (title, img) in enumerate(cells):
            ax = axes[i, j]
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
            if img is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            ax.imshow(img if img.ndim == 3 else colorize(img), interpolation="nearest")
    fig.suptitle(f"train {source} / test {target}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
