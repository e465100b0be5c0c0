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


class RandomScaleCrop:
    """Random scale then random crop, computed in source coordinates: only the pixels that survive the crop are resized.

    Equivalent to resizing the whole frame by s and cropping (what mmseg and torchvision's reference do), but at s=2 on a
    1914x1052 GTA5 frame it resizes ~0.15 Mpx of source instead of producing 8 Mpx to throw most of it away. Where the
    scaled frame is smaller than the crop, the whole extent is kept and the pipeline pads it (mask with IGNORE_INDEX).
    """

    def __init__(self, crop_size: Sequence[int], scale_range: Sequence[float]):
        self.crop_h, self.crop_w = int(crop_size[0]), int(crop_size[1])
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < self.lo <= self.hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")

    def _window(self, rng: np.random.Generator, size: int, crop: int, s: float, anchor: int | None = None):
        """Source interval [a, b) and its output length for one axis; with `anchor`, the window covers that pixel."""
        scaled = max(1, int(round(size * s)))
        if scaled <= crop:
            return 0, size, scaled
        lo, hi = 0, scaled - crop
        if anchor is not None:
            pos = int(anchor * s)
            lo, hi = max(lo, pos - crop + 1), min(hi, pos)
        start = int(rng.integers(lo, hi + 1))
        a = int(np.floor(start / s))
        b = min(size, max(a + 1, int(np.ceil((start + crop) / s))))
        return a, b, crop

    def __call__(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, focus: int = -1):
        h, w = mask.shape[:2]
        s = float(rng.uniform(self.lo, self.hi))
        anchor_y = anchor_x = None
        if focus >= 0:
            ys, xs = np.nonzero(mask == focus)
            if len(ys):
                k = int(rng.integers(len(ys)))
                anchor_y, anchor_x = int(ys[k]), int(xs[k])
        y0, y1, out_h = self._window(rng, h, self.crop_h, s, anchor_y)
        x0, x1, out_w = self._window(rng, w, self.crop_w, s, anchor_x)
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        if image.shape[:2] != (out_h, out_w):
            image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
        return image, mask


class TrainTransform:
    """Random scale -> random crop -> pad (mask with ignore) -> flip -> [extra] -> normalise.

    The scale+crop step is `RandomScaleCrop` (crop before the expensive resize); everything after it is an
    albumentations pipeline. Both draw from one per-sample seed, so augmentation is reproducible and resumable.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        extra: Sequence[A.BasicTransform] = (),
    ):
        self.scale_crop = RandomScaleCrop(crop_size, scale_range)
        crop_h, crop_w = self.scale_crop.crop_h, self.scale_crop.crop_w
        self.rng = np.random.default_rng()
        self.pipeline = A.Compose(
            [
                A.PadIfNeeded(min_height=crop_h, min_width=crop_w, border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=IGNORE_INDEX),
                A.HorizontalFlip(p=hflip),
                *extra,
                A.Normalize(mean=mean, std=std),
            ],
            strict=True,
        )

    def set_random_seed(self, seed: int) -> None:
        """Per-sample seeding makes augmentation a pure function of (sample position, run seed): resumable."""
        self.rng = np.random.default_rng(seed)
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, focus: int = -1) -> dict[str, torch.Tensor]:
        """`focus` >= 0: the crop must contain a pixel of that class (class-uniform sampling)."""
        image, mask = self.scale_crop(self.rng, image, mask, focus)
        out = self.pipeline(image=image, mask=mask)
        return _to_tensors(out["image"], out["mask"])


class EvalTransform:
    """Resize the image only (to `size`, or to `height` keeping the aspect ratio, e.g. Mapillary at 1536) and
    normalise; the mask keeps its native resolution, where predictions are scored."""

    def __init__(self, size: Sequence[int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, height: int | None = None):
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.height = None if height is None else int(height)
        self.normalize = A.Normalize(mean=mean, std=std)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        if self.height is not None:
            return self.height, max(1, round(w * self.height / h))
        return h, w

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        size = self.target_size(*image.shape[:2])
        if image.shape[:2] != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return _to_tensors(self.normalize(image=image)["image"], mask)


def build_train_transform(crop_size: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), hflip: float = 0.5,
                          **kwargs) -> TrainTransform:
    return TrainTransform(crop_size=crop_size, scale_range=scale_range, hflip=hflip, **kwargs)


def eval_transform_for(dataset, size: Sequence[int] | None = None) -> EvalTransform:
    """The eval preset for one dataset: an explicit `size` wins, else the dataset's protocol height (if any)."""
    return EvalTransform(size=size, height=None if size else getattr(dataset, "eval_height", None))
