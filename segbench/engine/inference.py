"""Inference presets: whole image or sliding window, optional flip and multi-scale averaging.

Sliding windows let a small GPU score 2048x1024 Cityscapes frames; averaging is over softmax probabilities, at the
resolution of the label, as mmsegmentation's test-time augmentation does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class InferenceSettings:
    mode: str = "whole"  # "whole" | "slide"
    window: tuple[int, int] | None = None  # (H, W) for mode="slide"
    stride: tuple[int, int] | None = None  # (H, W); default: 2/3 of the window
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"eval.mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and not self.window:
            raise ValueError("eval.mode='slide' needs eval.window=[H, W], e.g. --set eval.window=[512,1024]")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"eval.scales must be positive numbers, got {self.scales}")

    @classmethod
    def from_config(cls, ecfg: dict) -> "InferenceSettings":
        window = ecfg.get("window")
        stride = ecfg.get("stride")
        return cls(mode=ecfg.get("mode", "whole"), window=tuple(window) if window else None,
                   stride=tuple(stride) if stride else None, flip=bool(ecfg.get("flip", False)),
                   scales=tuple(float(s) for s in (ecfg.get("scales") or (1.0,))))


def _starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)  # last window flush with the border, as mmseg does
    return starts


def slide_logits(model: torch.nn.Module, image: torch.Tensor, window: Sequence[int],
                 stride: Sequence[int] | None = None) -> torch.Tensor:
    """Logits at the image's size from overlapping windows, averaged where they overlap."""
    n, _, h, w = image.shape
    wh, ww = int(window[0]), int(window[1])
    sh, sw = (int(stride[0]), int(stride[1])) if stride else (max(1, wh * 2 // 3), max(1, ww * 2 // 3))
    out = None
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y in _starts(h, wh, sh):
        for x in _starts(w, ww, sw):
            logits = model(image[:, :, y:y + wh, x:x + ww])["out"].float()
            if out is None:
                out = image.new_zeros((n, logits.shape[1], h, w), dtype=torch.float32)
            out[:, :, y:y + logits.shape[2], x:x + logits.shape[3]] += logits
            count[:, :, y:y + logits.shape[2], x:x + logits.shape[3]] += 1
    return out / count


def _logits_at(model, image, settings: InferenceSettings) -> torch.Tensor:
    if settings.mode == "slide":
        return slide_logits(model, image, settings.window, settings.stride)
    return model(image)["out"].float()


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, out_size: tuple[int, int],
            settings: InferenceSettings = InferenceSettings()) -> torch.Tensor:
    """Class scores N x C x out_size. Plain logits without TTA; averaged softmax probabilities with it."""
    tta = settings.flip or tuple(settings.scales) != (1.0,)
    total = None
    h, w = image.shape[-2:]
    for scale in settings.scales:
        scaled = image if scale == 1.0 else F.interpolate(
            image, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", align_corners=False)
        views = [(scaled, False)] + ([(scaled.flip(-1), True)] if settings.flip else [])
        for view, flipped in views:
            logits = _logits_at(model, view, settings)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != tuple(out_size):
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            scores = logits.softmax(1) if tta else logits
            total = scores if total is None else total + scores
    return total

