"""Confusion matrix and IoU with the official Cityscapes semantics (one matrix over the whole split, ignored pixels
count nowhere, a class with an empty denominator is NaN and left out of the mean)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


class ConfusionMatrix:
    """Rows = ground truth, columns = prediction. Accumulates on the tensors' device; `all_reduce` sums across ranks."""

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, device=None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        if target.shape != pred.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}; "
                             "upsample logits to the label resolution before scoring")
        target, pred = target.reshape(-1), pred.reshape(-1).to(target.device)
        if self.mat.device != target.device:
            self.mat = self.mat.to(target.device)
        k = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        if (pred[k] < 0).any() or (pred[k] >= self.num_classes).any():
            raise ValueError(f"predictions must be class indices in [0, {self.num_classes}), got values outside")
        idx = target[k].long() * self.num_classes + pred[k].long()
        self.mat += torch.bincount(idx, minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def iou(self) -> torch.Tensor:
        """Per-class IoU as float64; NaN where TP + FP + FN == 0."""
        m = self.mat.double()
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))

    def pixel_accuracy(self) -> float:
        total = self.mat.sum().item()
        return float(self.mat.diag().sum().item() / total) if total else float("nan")

    def summary(self, eval_classes: Sequence[int] | None = None) -> dict:
        """Metrics for a record: mIoU (%) over `eval_classes` that are present, per-class IoU (%) (None = absent)."""
        classes = list(range(self.num_classes)) if eval_classes is None else list(eval_classes)
        iou = self.iou().cpu()
        chosen = iou[classes]
        present = chosen[~torch.isnan(chosen)]
        miou = float(present.mean() * 100) if len(present) else float("nan")
        names = CLASS_NAMES if self.num_classes == NUM_CLASSES else [str(i) for i in range(self.num_classes)]
        return {
            "miou": miou,
            "pixel_acc": self.pixel_accuracy() * 100,
            "num_classes_scored": int(len(present)),
            "per_class_iou": {names[c]: (None if torch.isnan(iou[c]) else float(iou[c] * 100)) for c in classes},
        }
