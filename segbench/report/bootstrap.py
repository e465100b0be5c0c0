"""How much a single cell's mIoU owes to which test images were drawn: a percentile bootstrap over test images.

A cell scores a target with one confusion matrix over the split, so its mIoU is not a mean of per-image numbers and
has no textbook standard error. Resampling the images with replacement, summing their confusion matrices and taking
the mIoU of each sum gives its sampling distribution; the interval is that distribution's (1 - level) / 2 and
(1 + level) / 2 quantiles (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13: the percentile
interval; scipy's `scipy.stats.bootstrap(method="percentile")`, scipy/stats/_resampling.py, draws the same resamples
from the same generator and takes the same quantiles). The mIoU of a sum follows ConfusionMatrix.summary (official
Cityscapes semantics, cityscapesScripts evaluation/evalPixelLevelSemanticLabeling.py): a void prediction is a false
negative only, and a class with TP + FP + FN = 0 is left out of the mean.

The per-image matrices come from `evaluate(per_image_path=...)`, which the runner writes to CELL/confusion/TARGET.npz.
Numpy only: the report loads no torch.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..cells import CONFUSION
from ..io import csv_text
from ..labels import CLASS_NAMES

N_BOOT = 1000
LEVEL = 0.95
# every count of a resampled sum is an integer below this, so float64 sums (BLAS matmul, any order) are exact
EXACT_FLOAT = 2**53
# the record's mIoU and the one recomputed from the per-image file agree to float rounding, or the file is stale
SAME_MIOU = 1e-6


def load_image_confusions(path: Path) -> tuple[np.ndarray, list[str]]:
    """(N x C x C+1 int64 per-image matrices, N image ids), as engine/scoring.py save_image_confusions wrote them."""
    with np.load(path) as f:
        return f["counts"], [str(i) for i in f["images"]]


def _check(per_image: np.ndarray, classes: Sequence[int] | None) -> tuple[np.ndarray, list[int]]:
    per_image = np.asarray(per_image)
    if per_image.ndim != 3 or per_image.shape[2] != per_image.shape[1] + 1:
        raise ValueError(f"per-image confusion matrices of shape {per_image.shape}; expected N x C x C+1 "
                         "(ConfusionMatrix.counts per image, void column last)")
    if not np.issubdtype(per_image.dtype, np.integer) or (per_image < 0).any():
        raise ValueError(f"per-image confusion matrices hold {per_image.dtype} values (or negative counts); "
                         "expected pixel counts as non-negative integers")
    n_classes = per_image.shape[1]
    chosen = list(range(n_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in chosen if not 0 <= c < n_classes]
    if bad or not chosen:
        raise ValueError(f"classes {chosen} must be a non-empty selection of 0..{n_classes - 1}; "
                         "pass the trainIds the mIoU averages over (None: all)")
    return per_image.astype(np.int64, copy=False), chosen


def _mious(full: np.ndarray, classes: list[int]) -> np.ndarray:
    """mIoU (%) of each of B matrices (B x C x C+1): NaN classes (empty denominator) left out, NaN if all are."""
    n = full.shape[1]
    tp = np.diagonal(full[:, :, :n], axis1=1, axis2=2)
    denom = full[:, :, :n].sum(1) + full.sum(2) - tp  # predicted as c + labelled c - both
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)[:, classes]
    present = ~np.isnan(iou)
    count = present.sum(1)
    total = np.where(present, iou, 0.0).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1) * 100, np.nan)


def miou_of(counts: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """mIoU (%) of one C x C+1 matrix, as ConfusionMatrix.summary computes it."""
    per_image, chosen = _check(np.asarray(counts)[None], classes)
    return float(_mious(per_image.astype(np.float64), chosen)[0])


def resample_indices(n_images: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """n_boot x n_images image indices drawn with replacement from np.random.default_rng(seed), one resample a row."""
    if n_images < 1 or n_boot < 1:
        raise ValueError(f"cannot bootstrap {n_images} image(s) {n_boot} time(s); need at least one of each")
    return np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))


def mious_of_resamples(per_image: np.ndarray, classes: Sequence[int] | None, indices: np.ndarray) -> np.ndarray:
    """mIoU (%) of each resample (a row of `indices`): how often each image was drawn times its matrix, summed, in one
    matrix product."""
    per_image, chosen = _check(per_image, classes)
    n_images, n_classes = per_image.shape[:2]
    indices = np.asarray(indices)
    if indices.ndim != 2 or (indices.size and not 0 <= indices.min() <= indices.max() < n_images):
        raise ValueError(f"resample indices of shape {indices.shape} must be a 2-d array of image indices in "
                         f"0..{n_images - 1}, one resample a row")
    n_boot, draws = indices.shape
    offsets = np.arange(n_boot)[:, None] * n_images
    times_drawn = np.bincount((indices + offsets).ravel(), minlength=n_boot * n_images).reshape(n_boot, n_images)
    flat = per_image.reshape(n_images, -1)
    exact = float(flat.max(initial=0)) * draws < EXACT_FLOAT
    dtype = np.float64 if exact else np.int64  # int64 matmul: exact but without BLAS, for absurdly large images
    sums = times_drawn.astype(dtype) @ flat.astype(dtype)
    return _mious(sums.reshape(n_boot, n_classes, n_classes + 1).astype(np.float64), chosen)


def bootstrap_miou(per_image: np.ndarray, classes: Sequence[int] | None = None, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float]:
    """(low, high): the percentile bootstrap `level` interval of the mIoU (%) of `per_image` (N x C x C+1 counts).

    A resample whose images hold no pixel of any scored class has no mIoU and is left out; (NaN, NaN) if all are."""
    if not 0 < level < 1:
        raise ValueError(f"level={level}; pass the interval's coverage as a fraction, e.g. 0.95")
    per_image, chosen = _check(per_image, classes)
    mious = mious_of_resamples(per_image, chosen, resample_indices(len(per_image), n_boot, seed))
    mious = mious[~np.isnan(mious)]
    if not len(mious):
        return math.nan, math.nan
    low, high = np.quantile(mious, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# --- in the report ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """A cell's mIoU on one target with its bootstrap interval, from its per-image file."""
    miou: float
    low: float
    high: float
    images: int
    n_boot: int
    level: float

    def md(self) -> str:
        return f"[{self.low:.1f}, {self.high:.1f}]"

    def csv(self) -> list[str]:
        return [f"{self.low:.2f}", f"{self.high:.2f}"]


def _scored_classes(result: dict) -> list[int] | None:
    """The trainIds a record's mIoU averages over: the classes its per-class IoUs name (None: all)."""
    names = list(result.get("per_class_iou") or {})
    return [CLASS_NAMES.index(n) for n in names] if names and set(names) <= set(CLASS_NAMES) else None


def per_image_files(records: list[dict]) -> Iterator[tuple[dict, str, np.ndarray, list[int] | None]]:
    """(record, target, per-image matrices, scored classes) for every scored target whose per-image file
    (CELL/confusion/TARGET.npz) is there and agrees with the record (same image count, same mIoU), one file at a time
    (a large study's files together can outgrow memory); older records simply have none."""
    for rec in records:
        for target, result in (rec.get("results") or {}).items():
            path = Path(rec.get("_dir", "")) / CONFUSION / f"{target}.npz"
            if "_dir" not in rec or not path.is_file():
                continue
            counts, _ = load_image_confusions(path)
            classes = _scored_classes(result)
            miou = miou_of(counts.sum(0), classes)
            recorded, images = result.get("miou"), result.get("images", len(counts))
            if recorded is None or abs(miou - recorded) > SAME_MIOU or images != len(counts):
                warnings.warn(f"{path}: {len(counts)} images, mIoU {miou:.4f}, but the record says {images} images, "
                              f"mIoU {recorded}; left out of the bootstrap (score the target again to rewrite it)",
                              stacklevel=2)
                continue
            yield rec, target, counts, classes


def cell_intervals(records: list[dict], n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> dict[tuple[str, str], Interval]:
    """(cell_id, target) -> Interval for every scored target with a per-image file (`per_image_files`)."""
    out = {}
    for rec, target, counts, classes in per_image_files(records):
        low, high = bootstrap_miou(counts, classes, n_boot, seed, level)
        out[(rec["cell_id"], target)] = Interval(miou_of(counts.sum(0), classes), low, high, len(counts), n_boot,
                                                 level)
    return out


def absent_from_ground_truth(records: list[dict]) -> dict[tuple[str, str], frozenset[str]]:
    """(cell_id, target) -> the classes of the record's per-class IoUs that no ground-truth pixel of the test split
    holds (the embedded domains never draw rider, truck, ...): their IoU is 0 where the model predicts them and says
    nothing about the class. Known only where the per-image file is (`per_image_files`)."""
    out = {}
    for rec, target, counts, _ in per_image_files(records):
        labelled = counts.sum((0, 2))  # ground-truth pixels per class (rows), void predictions included
        names = (rec["results"][target].get("per_class_iou") or {})
        out[(rec["cell_id"], target)] = frozenset(n for n in names if n in CLASS_NAMES
                                                  and labelled[CLASS_NAMES.index(n)] == 0)
    return out


def interval_note(shown: Sequence[Interval]) -> str:
    """The table footer's line for the intervals it shows ("" when it shows none)."""
    if not shown:
        return ""
    levels, boots = sorted({i.level for i in shown}), sorted({i.n_boot for i in shown})
    return (f"[low, high] after a single seed's mIoU: {', '.join(f'{v:.0%}' for v in levels)} percentile bootstrap "
            f"interval over its test images ({', '.join(map(str, boots))} resamples), in place of a spread over "
            "seeds.\n")


def _targets_in_order(rec: dict) -> list[str]:
    """The record's scored targets as the study named them (source first), any others after."""
    scored = list(rec.get("results") or {})
    named = [t for t in rec.get("targets") or [] if t in scored]
    return named + [t for t in scored if t not in named]


def bootstrap_csv(records: list[dict], intervals: dict[tuple[str, str], Interval]) -> str:
    """bootstrap.csv: one row per cell and target with a per-image file, in record then study order."""
    header = ["cell_id", "backbone", "head", "source", "seed", "target", "miou", "low", "high", "images", "n_boot",
              "level"]
    rows = [[rec["cell_id"], rec["backbone"], rec["head"], rec["source"], rec["seed"], target, f"{iv.miou:.4f}",
             f"{iv.low:.4f}", f"{iv.high:.4f}", iv.images, iv.n_boot, iv.level]
            for rec in records for target in _targets_in_order(rec)
            if (iv := intervals.get((rec["cell_id"], target))) is not None]
    return csv_text(header, rows)
