"""Confusion matrix and IoU with the official Cityscapes semantics (one matrix over the whole split, ignored pixels
count nowhere, a class with an empty denominator is NaN and left out of the mean)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


class ConfusionMatrix:
    """Rows = ground truth, columns = prediction. Accumulates on the tensors' device; `all_reduce` sums across ranks.

    A prediction outside the classes (e.g. a Cityscapes id of an ignored class in a prediction PNG) lands in an extra
    'void' column: a false negative for the true class and a false positive for none, as in the official script.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, device=None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    @property
    def mat(self) -> torch.Tensor:
        """The C x C confusion matrix (void predictions left out)."""
        return self.counts[:, : self.num_classes]

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Add one image (or batch); returns the counts it added, so a caller can keep per-image matrices for free."""
        if target.shape != pred.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}; "
                             "upsample logits to the label resolution before scoring")
        target, pred = target.reshape(-1), pred.reshape(-1).to(target.device)
        if self.counts.device != target.device:
            self.counts = self.counts.to(target.device)
        c = self.num_classes
        k = (target != self.ignore_index) & (target >= 0) & (target < c)
        p = pred[k].long()
        p = torch.where((p >= 0) & (p < c), p, torch.full_like(p, c))
        idx = target[k].long() * (c + 1) + p
        added = torch.bincount(idx, minlength=c * (c + 1)).reshape(c, c + 1)
        self.counts += added
        return added

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def iou(self) -> torch.Tensor:
        """Per-class IoU as float64; NaN where TP + FP + FN == 0."""
        full = self.counts.double()
        m = full[:, : self.num_classes]
        tp = m.diag()
        denom = m.sum(0) + full.sum(1) - tp
        return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))

    def pixel_accuracy(self) -> float:
        total = self.counts.sum().item()
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
