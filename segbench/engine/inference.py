"""Inference presets: whole image or sliding window, optional flip and multi-scale averaging.

Sliding windows let a small GPU score 2048x1024 Cityscapes frames; averaging is over softmax probabilities, at the
resolution of the label, as mmsegmentation's test-time augmentation does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import EvalSettings


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


def _logits_at(model, image, settings: EvalSettings) -> torch.Tensor:
    if settings.mode == "slide":
        return slide_logits(model, image, settings.window, settings.stride)
    return model(image)["out"].float()


@torch.no_grad()
def predict(model: torch.nn.Module, image: torch.Tensor, out_size: tuple[int, int],
            settings: EvalSettings = EvalSettings()) -> torch.Tensor:
    """Class scores N x C x out_size. Plain logits without TTA; with it, the softmax probabilities of the views summed
    (their average times the number of views: the same argmax)."""
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

