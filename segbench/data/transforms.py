"""Train and eval presets. Image and mask always travel together; masks stay uint8 until the very end.

Albumentations 2.x is used with `strict=True` so a 1.x-style argument (e.g. `mask_value`) fails instead of silently
padding masks with 0 (= road).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

import albumentations as A

from ..labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensors(image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
    """float CHW image (already normalised), long HW mask."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
    }


class TrainTransform:
    """Random scale -> pad (ignore) -> random crop -> flip -> normalise, as in torchvision's / mmseg's presets."""

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        extra: Sequence[A.BasicTransform] = (),
    ):
        crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.pipeline = A.Compose(
            [
                A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                              mask_interpolation=cv2.INTER_NEAREST, p=1.0),
                A.PadIfNeeded(min_height=crop_h, min_width=crop_w, border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=IGNORE_INDEX),
                A.RandomCrop(height=crop_h, width=crop_w),
                A.HorizontalFlip(p=hflip),
                *extra,
                A.Normalize(mean=mean, std=std),
            ],
            strict=True,
        )

    def set_random_seed(self, seed: int) -> None:
        """Per-sample seeding makes augmentation a pure function of (sample position, run seed): resumable."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        out = self.pipeline(image=image, mask=mask)
        return _to_tensors(out["image"], out["mask"])


class EvalTransform:
    """Resize the image only (optional) and normalise; the mask keeps its native resolution, where it is scored."""

    def __init__(self, size: Sequence[int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.normalize = A.Normalize(mean=mean, std=std)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        if self.size is not None and image.shape[:2] != self.size:
            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        return _to_tensors(self.normalize(image=image)["image"], mask)


def build_train_transform(crop_size: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), hflip: float = 0.5,
                          **kwargs) -> TrainTransform:
    return TrainTransform(crop_size=crop_size, scale_range=scale_range, hflip=hflip, **kwargs)


def build_eval_transform(size: Sequence[int] | None = None, **kwargs) -> EvalTransform:
    return EvalTransform(size=size, **kwargs)
