"""Rein's training pipeline, as mmsegmentation 1.x runs it (w1oves/Rein
`configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py`):

    RandomChoiceResize(scales=[int(512 * x * 0.1) for x in range(5, 21)], resize_type=ResizeShortestEdge,
                       max_size=2048)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    (SegDataPreProcessor) normalise, pad right and bottom to 512 x 512: image 0 after normalisation, label 255

Each step follows mmseg 1.2.2's `mmseg/datasets/transforms/transforms.py` (ResizeShortestEdge, RandomCrop,
PhotoMetricDistortion, RandomFlip) and mmcv 2.x's `mmcv/transforms/processing.py` (Resize with keep_ratio,
RandomChoiceResize, RandomFlip) and `mmcv/image/geometric.py` (rescale_size, imrescale: cv2 bilinear for the image,
cv2 nearest for the label), and draws from a `numpy.random.RandomState` in the order and with the calls mmseg makes
on numpy's global one (randint, uniform, choice), so a test replays it draw for draw.

Differences, on purpose: the state is one RandomState per sample seeded from segbench's per-sample seed (mmseg:
numpy's global state, seeded once per worker), so a resumed run draws what an uninterrupted one did; the image is RGB
(mmseg loads BGR): every step is channel-wise or goes through HSV with the matching conversion (RGB2HSV here for
mmcv's bgr2hsv), so the result is the same image in the other channel order.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..labels import IGNORE_INDEX
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _to_tensors



def rein_short_edges(crop: int) -> tuple[int, ...]:
    """RandomChoiceResize's short edges in Rein's configs, `int(crop * x * 0.1) for x in range(5, 21)`: 0.5 to 2.0
    times the crop in steps of 0.1 (its 512 config: 256 .. 1024; its 1024 one, `rein_dinov2_mask2former_1024x1024_
    bs4x2.py`: 512 .. 2048), with the long edge capped at 4 x the crop (`max_size` 2048 and 4096)."""
    return tuple(int(crop * x * 0.1) for x in range(5, 21))


#: the short edges of Rein's 512 config
REIN_SHORT_EDGES = rein_short_edges(512)


def shortest_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_w, new_h) of mmseg's ResizeShortestEdge._get_output_shape (detectron2's rule)."""
    size = short * 1.0
    scale = size / min(h, w)
    new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h *= scale
        new_w *= scale
    return int(new_w + 0.5), int(new_h + 0.5)


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of mmcv's rescale_size with a tuple scale: as large as fits in it, aspect kept."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def random_choice_resize(rs: np.random.RandomState, image: np.ndarray, mask: np.ndarray,
                         scales: Sequence[int], max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """RandomChoiceResize over ResizeShortestEdge, then mmseg's Resize(keep_ratio=True)."""
    short = scales[rs.randint(len(scales))]
    h, w = mask.shape[:2]
    size = rescale_size(h, w, shortest_edge_size(h, w, short, max_size))
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))


def crop_box(rs: np.random.RandomState, mask: np.ndarray, crop: tuple[int, int], cat_max_ratio: float,
             ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int, int]:
    """mmseg RandomCrop.crop_bbox: a uniform window; with cat_max_ratio < 1, redrawn up to 10 times while one class
    fills at least that share of its labelled pixels (or it holds fewer than two classes); the 11th draw is kept
    unchecked."""

    def draw():
        margin_h, margin_w = max(mask.shape[0] - crop[0], 0), max(mask.shape[1] - crop[1], 0)
        y, x = rs.randint(0, margin_h + 1), rs.randint(0, margin_w + 1)
        return y, y + crop[0], x, x + crop[1]

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            labels, counts = np.unique(mask[box[0]:box[1], box[2]:box[3]], return_counts=True)
            counts = counts[labels != ignore_index]
            if len(counts) > 1 and np.max(counts) / np.sum(counts) < cat_max_ratio:
                break
            box = draw()
    return box


def _convert(img: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
    """PhotoMetricDistortion.convert: float32 affine, clipped, truncated back to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(rs: np.random.RandomState, img: np.ndarray, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg PhotoMetricDistortion.transform on an RGB uint8 image: brightness, then contrast first (mode 1) or last
    (mode 0), saturation and hue in OpenCV's HSV, each applied with probability 1/2."""

    def contrast(img):
        if rs.randint(2):
            return _convert(img, alpha=rs.uniform(*contrast_range))
        return img

    if rs.randint(2):
        img = _convert(img, beta=rs.uniform(-brightness_delta, brightness_delta))
    mode = rs.randint(2)
    if mode == 1:
        img = contrast(img)
    if rs.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rs.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rs.randint(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rs.randint(-hue_delta, hue_delta)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0:
        img = contrast(img)
    return img


class ReinTrainTransform:
    """The pipeline above as a segbench train transform (same interface as transforms.TrainTransform:
    `set_random_seed`, then `(image, mask)` -> normalised tensors). `image_method` is a DG method's step on the
    full-resolution image, drawn from its own stream. Class-uniform sampling (`focus`) is not part of this recipe
    and is refused."""

    def __init__(self, crop_size: Sequence[int] = (512, 512), scales: Sequence[int] = REIN_SHORT_EDGES,
                 max_size: int = 2048, cat_max_ratio: float = 0.75, hflip: float = 0.5, photometric: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, image_method=None):
        self.crop = (int(crop_size[0]), int(crop_size[1]))
        self.scales, self.max_size = tuple(int(s) for s in scales), int(max_size)
        self.cat_max_ratio, self.hflip, self.photometric = float(cat_max_ratio), float(hflip), bool(photometric)
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0
        self.image_method = image_method
        self.set_random_seed(0)

    @classmethod
    def for_crop(cls, crop_size: Sequence[int], **kwargs) -> "ReinTrainTransform":
        """Rein's pipeline at this crop, its scales and long-edge cap derived as its configs derive them from the
        (square) crop's side (`rein_short_edges`): the 512 config at 512 x 512, the 1024 config at 1024 x 1024."""
        side = int(crop_size[0])
        return cls(crop_size=crop_size, scales=rein_short_edges(side), max_size=4 * side, **kwargs)

    def set_random_seed(self, seed: int) -> None:
        self.rs = np.random.RandomState(np.random.SeedSequence(seed).generate_state(1)[0])
        self.method_rng = np.random.default_rng([seed, 1])

    def augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 steps: resize, crop, flip, photometric distortion (before normalisation and padding)."""
        rs = self.rs
        image, mask = random_choice_resize(rs, image, mask, self.scales, self.max_size)
        y1, y2, x1, x2 = crop_box(rs, mask, self.crop, self.cat_max_ratio)
        image, mask = image[y1:y2, x1:x2], mask[y1:y2, x1:x2]
        if rs.choice(["horizontal", None], p=[self.hflip, 1.0 - self.hflip]) == "horizontal":
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.photometric:
            image = photometric_distortion(rs, np.ascontiguousarray(image))
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def __call__(self, image: np.ndarray, mask: np.ndarray, focus: int = -1):
        if focus >= 0:
            raise ValueError("Rein's pipeline has no class-uniform sampling; set train.class_uniform to 0")
        if self.image_method is not None:
            image = self.image_method(image, self.method_rng)
        image, mask = self.augment(image, mask)
        normalised = (image.astype(np.float32) - self.mean) / self.std
        h, w = mask.shape
        ph, pw = max(self.crop[0] - h, 0), max(self.crop[1] - w, 0)
        normalised = np.pad(normalised, ((0, ph), (0, pw), (0, 0)), constant_values=0.0)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        return _to_tensors(normalised, mask)
