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

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import csv_text, write_json
from ..labels import CLASS_NAMES
from ..record import ConfusionFileError, confusion_path, per_image_expected, read_confusions

N_BOOT = 1000
LEVEL = 0.95
# every count of a resampled sum is an integer below this, so float64 sums (BLAS matmul, any order) are exact
EXACT_FLOAT = 2**53
# the record's mIoU and the one recomputed from the per-image file agree to float rounding, or the file is stale
SAME_MIOU = 1e-6


def load_image_confusions(path: Path) -> tuple[np.ndarray, list[str]]:
    """(N x C x C+1 int64 per-image matrices, N image ids), as engine/scoring.py save_image_confusions wrote them;
    record.ConfusionFileError naming the file and the fix when it cannot be used (object arrays are never loaded)."""
    return read_confusions(path)


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


@dataclass(frozen=True)
class MissingInterval:
    """Where a cell's interval should be and cannot be: its per-image file is damaged, missing while the record
    names one, or disagrees with the record (a warning names the file). Marked, never silently left out."""

    def md(self) -> str:
        return NO_INTERVAL

    def csv(self) -> list[str]:
        return ["", ""]


NO_INTERVAL = "[n/a]"
MISSING = MissingInterval()
#: bumped when the interval a file gives changes (the resampling, the quantiles): every cached interval is then stale
BOOTSTRAP_VERSION = 1
CACHE_SUFFIX = ".interval.json"  # confusion/TARGET.interval.json, beside the file it was computed from


def _scored_classes(result: dict) -> list[int] | None:
    """The trainIds a record's mIoU averages over: the classes its per-class IoUs name (None: all)."""
    names = list(result.get("per_class_iou") or {})
    return [CLASS_NAMES.index(n) for n in names] if names and set(names) <= set(CLASS_NAMES) else None


def _file_summary(path: Path, classes: list[int] | None, n_boot: int, seed: int, level: float) -> dict:
    """{miou, images, low, high, labelled} of one per-image file (labelled: ground-truth pixels per class), computed
    once: cached beside it (`CACHE_SUFFIX`) under the file's content hash and the bootstrap settings, so a rewritten
    file, or other settings, compute it again. The cache is only a shortcut: a results directory it cannot be
    written to computes the interval every time."""
    key = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "classes": classes, "n_boot": n_boot,
           "seed": seed, "level": level, "version": BOOTSTRAP_VERSION}
    cache = path.with_name(path.stem + CACHE_SUFFIX)
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            return cached["interval"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    counts, _ = read_confusions(path)
    low, high = bootstrap_miou(counts, classes, n_boot, seed, level)
    summary = {"miou": miou_of(counts.sum(0), classes), "images": len(counts), "low": low, "high": high,
               "labelled": counts.sum((0, 2)).tolist()}  # ground-truth pixels per class (rows), void included
    try:  # not durable: a cache torn by a crash is read as none and computed again
        write_json(cache, {"key": key, "interval": summary}, durable=False)
    except OSError:
        pass
    return summary


def _summaries(records: list[dict], n_boot: int, seed: int, level: float, warn: bool = True):
    """(record, target, summary or MISSING) for every scored target whose per-image file (CELL/confusion/TARGET.npz)
    is there and agrees with the record (same image count, same mIoU); cells scored before per-image files existed
    simply have none. MISSING, with a warning naming the file and the fix, where the file is damaged, disagrees with
    the record, or is missing where it should be (record.per_image_expected)."""
    say = (lambda text: warnings.warn(text, stacklevel=3)) if warn else (lambda text: None)
    for rec in records:
        for target, result in (rec.get("results") or {}).items():
            if "_dir" not in rec:
                continue
            path = confusion_path(rec["_dir"], target)
            if not path.is_file():
                if per_image_expected(rec["_dir"], result):
                    say(f"{path}: missing; rerun the study to score {target} again")
                    yield rec, target, MISSING
                continue
            try:
                found = _file_summary(path, _scored_classes(result), n_boot, seed, level)
            except ConfusionFileError as e:
                say(str(e))
                yield rec, target, MISSING
                continue
            miou, images = found["miou"], found["images"]
            recorded = result.get("miou")
            if recorded is None or abs(miou - recorded) > SAME_MIOU or result.get("images", images) != images:
                say(f"{path}: {images} images, mIoU {miou:.4f}, but the record says {result.get('images', images)} "
                    f"images, mIoU {recorded}; left out of the bootstrap (delete the file, then rerun the study to "
                    f"score {target} again)")
                yield rec, target, MISSING
                continue
            yield rec, target, found


def cell_intervals(records: list[dict], n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> dict[tuple[str, str], Interval | MissingInterval]:
    """(cell_id, target) -> Interval for every scored target with a usable per-image file (`_summaries`), MISSING
    where that file is damaged, missing or disagrees with the record."""
    out = {}
    for rec, target, found in _summaries(records, n_boot, seed, level):
        out[(rec["cell_id"], target)] = found if found is MISSING else Interval(
            found["miou"], found["low"], found["high"], found["images"], n_boot, level)
    return out


def absent_from_ground_truth(records: list[dict]) -> dict[tuple[str, str], frozenset[str]]:
    """(cell_id, target) -> the classes of the record's per-class IoUs that no ground-truth pixel of the test split
    holds (the embedded domains never draw rider, truck, ...): their IoU is 0 where the model predicts them and says
    nothing about the class. Known only where the per-image file is (read from the same cache as the intervals; its
    warnings are cell_intervals')."""
    out = {}
    for rec, target, found in _summaries(records, N_BOOT, 0, LEVEL, warn=False):
        if found is MISSING:
            continue
        names = (rec["results"][target].get("per_class_iou") or {})
        out[(rec["cell_id"], target)] = frozenset(n for n in names if n in CLASS_NAMES
                                                  and found["labelled"][CLASS_NAMES.index(n)] == 0)
    return out


def interval_note(shown: Sequence[Interval | MissingInterval]) -> str:
    """The table footer's line for the intervals it shows ("" when it shows none), and for those it misses."""
    found = [i for i in shown if isinstance(i, Interval)]
    note = ""
    if found:
        levels, boots = sorted({i.level for i in found}), sorted({i.n_boot for i in found})
        note = (f"[low, high] after a single seed's mIoU: {', '.join(f'{v:.0%}' for v in levels)} percentile "
                f"bootstrap interval over its test images ({', '.join(map(str, boots))} resamples), in place of a "
                "spread over seeds.\n")
    if any(isinstance(i, MissingInterval) for i in shown):
        note += (f"{NO_INTERVAL}: no bootstrap interval, its per-image file (CELL/confusion/TARGET.npz) is damaged, "
                 "missing or disagrees with the record (the report's warning names it); rerun the study to score the "
                 "target again.\n")
    return note


def _targets_in_order(rec: dict) -> list[str]:
    """The record's scored targets as the study named them (source first), any others after."""
    scored = list(rec.get("results") or {})
    named = [t for t in rec.get("targets") or [] if t in scored]
    return named + [t for t in scored if t not in named]


def bootstrap_csv(records: list[dict], intervals: dict[tuple[str, str], Interval | MissingInterval]) -> str:
    """bootstrap.csv: one row per cell and target with a per-image file, in record then study order."""
    header = ["cell_id", "backbone", "head", "source", "seed", "target", "miou", "low", "high", "images", "n_boot",
              "level"]
    rows = [[rec["cell_id"], rec["backbone"], rec["head"], rec["source"], rec["seed"], target, f"{iv.miou:.4f}",
             f"{iv.low:.4f}", f"{iv.high:.4f}", iv.images, iv.n_boot, iv.level]
            for rec in records for target in _targets_in_order(rec)
            if isinstance(iv := intervals.get((rec["cell_id"], target)), Interval)]
    return csv_text(header, rows)
