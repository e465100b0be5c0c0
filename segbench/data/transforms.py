"""Train and eval presets. Image and mask always travel together; masks stay uint8 until the very end.

Albumentations 2.x is used with `strict=True` so a 1.x-style argument (e.g. `mask_value`) fails instead of silently
padding masks with 0 (= road).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import ndimage

import albumentations as A

from ..config import PHOTOMETRIC_PRESETS
from ..labels import IGNORE_INDEX
from .base import LABEL_NEAREST
from .eval_protocols import DEFAULT_PROTOCOL, Geometry, ImageResize, geometry_for

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

    Resizing the whole frame by s and cropping (what mmseg and torchvision's reference do), up to snapping the window
    to whole source pixels (the window spans crop / s plus up to 2 source pixels), but at s=2 on a 1914x1052 GTA5
    frame it resizes ~0.15 Mpx of source instead of producing 8 Mpx to throw most of it away. Where the scaled frame
    is smaller than the crop, the whole extent is kept and the pipeline pads it (mask with IGNORE_INDEX).

    Where this differs from RobustNet's RandomSizeAndCrop (shachoi/RobustNet transforms/joint_transforms.py, with its
    defaults pre_size None, crop_nopad False): there the whole frame is resized to int(size * s) with Pillow bicubic
    (antialiased when shrinking) and the label with Pillow nearest; here OpenCV bilinear (not antialiased) on the
    window, the label with Pillow's nearest rule (base.LABEL_NEAREST) on the window, sizes round(size * s). A frame
    smaller than the crop is padded there by (crop - h) // 2 + 1 on each side and then randomly cropped (0 to 2 pixels
    of shift), here centred. With a class to hold (`anchor`), RobustNet's RandomCrop draws x1 = randint(c - crop, c)
    and clamps it to the frame (the clamp piles the draws on the frame's edges); here the start is uniform over the
    windows that hold the pixel.
    """

    def __init__(self, crop_size: Sequence[int], scale_range: Sequence[float]):
        self.crop_h, self.crop_w = int(crop_size[0]), int(crop_size[1])
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])  # 0 < lo <= hi: `train.scale_range`'s rule

    def _window(self, rng: np.random.Generator, size: int, crop: int, s: float, anchor: int | None = None):
        """Source interval [a, b) and its output length for one axis; with `anchor`, the window covers that pixel."""
        scaled = max(1, int(round(size * s)))
        if scaled <= crop:
            return 0, size, scaled
        lo, hi = 0, scaled - crop
        if anchor is not None:
            # `scaled` is rounded: below s = 0.5 the last row / column can land at int(anchor * s) == scaled
            pos = min(int(anchor * s), scaled - 1)
            lo, hi = max(lo, pos - crop + 1), min(hi, pos)
        start = int(rng.integers(lo, hi + 1))
        a = int(np.floor(start / s))
        b = min(size, max(a + 1, int(np.ceil((start + crop) / s))))
        if anchor is not None:
            b = max(b, anchor + 1)  # the clamped case: the last window still reaches the anchor's row / column
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
            mask = cv2.resize(mask, (out_w, out_h), interpolation=LABEL_NEAREST)
        return image, mask


#: torchvision's ColorJitter applies its four operations in a random order; these are its ids 0..3
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_JITTER_FUNCTIONS = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast,
                     "saturation": TF.adjust_saturation, "hue": TF.adjust_hue}


def jitter_ranges(brightness: float, contrast: float, saturation: float, hue: float) -> dict[str, tuple[float, float]]:
    """torchvision ColorJitter's factor ranges: [max(0, 1 - x), 1 + x] for the first three, [-hue, hue] for hue; an
    operation whose parameter is 0 is left out, as ColorJitter leaves it out."""
    ranges = {name: (max(0.0, 1 - x), 1 + x) for name, x in
              (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)) if x > 0}
    if hue > 0:
        ranges["hue"] = (-hue, hue)
    return ranges


def draw_jitter(rng: np.random.Generator, ranges: Mapping[str, tuple[float, float]]) -> list[tuple[str, float]]:
    """ColorJitter.get_params from `rng`: a random order of the four operations and one uniform factor each, as
    (operation, factor) pairs in the order they apply."""
    order = rng.permutation(len(JITTER_OPS))
    factors = {name: float(rng.uniform(*ranges[name])) for name in JITTER_OPS if name in ranges}
    return [(JITTER_OPS[i], factors[JITTER_OPS[i]]) for i in order if JITTER_OPS[i] in factors]


def apply_jitter(image: np.ndarray, ops: Sequence[tuple[str, float]]) -> np.ndarray:
    """ColorJitter.forward on the PIL image of a uint8 RGB array, with the factors already drawn: torchvision's PIL
    operations (ImageEnhance Brightness / Contrast / Color, hue as a uint8 shift of PIL's HSV H channel)."""
    pil = Image.fromarray(image)
    for name, factor in ops:
        pil = _JITTER_FUNCTIONS[name](pil, factor)
    return np.asarray(pil)


def gaussian_blur_truncated(image: np.ndarray, sigma: float) -> np.ndarray:
    """RobustNet's RandomGaussianBlur with `sigma` given: skimage `gaussian(img, sigma, multichannel=True)` on a uint8
    image, then `* 255` and `astype(uint8)`.

    skimage's steps, written out: img_as_float (x * (1/255) in float64), scipy.ndimage.gaussian_filter with sigma
    (sigma, sigma, 0) (no mixing across channels), mode 'nearest', truncate 4.0 (kernel radius int(4 sigma + 0.5)).
    The same calls in the same order, so the result is bit-identical to skimage's (`multichannel=True` then,
    `channel_axis=-1` now; tests/test_protocol_augment.py compares when skimage is installed). The float result goes
    back to uint8 by truncation, not rounding, as in the official code: a flat region whose filtered value lands a
    hair below its integer drops by one level.
    """
    x = np.multiply(image, 1.0 / 255, dtype=np.float64)
    blurred = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
    blurred *= 255
    return blurred.astype(np.uint8)


@dataclass(frozen=True)
class PhotometricDraw:
    """One sample's draws: the jitter's (operation, factor) list in order (None: not applied) and the blur sigma."""

    jitter: list[tuple[str, float]] | None
    blur_sigma: float | None


@dataclass(frozen=True)
class Photometric:
    """Colour jitter with probability `jitter_p`, then a Gaussian blur with sigma ~ U[blur_sigma) (None: no blur).

    With `PHOTOMETRIC_PRESETS["robustnet"]` this is RobustNet's `--color_aug 0.5 --gblur` (shachoi/RobustNet
    `datasets/__init__.py` get_input_transforms: `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.5)`, then
    `transforms/transforms.py` RandomGaussianBlur, sigma = 0.15 + random() * 1.15, on every image). The semantics are
    the official ones (torchvision's PIL operations, skimage's filter as `gaussian_blur_truncated` spells it out);
    what differs is only where the randomness comes from: every draw is taken from the per-sample generator of the
    TrainTransform (jitter applied when rng.random() < p, as RandomApply's `p < torch.rand(1)` test skips it
    otherwise; the order from rng.permutation(4) where ColorJitter uses torch.randperm(4); factors from
    rng.uniform in float64 where ColorJitter draws float32), so augmentation stays a pure function of the sample's
    seed and a resumed run repeats it bit for bit. The hue shift is today's torchvision's
    (`np.int32(hue * 255).astype(uint8)` added to H); the torchvision of RobustNet's time wrote `np.uint8(hue * 255)`,
    which wraps a negative shift to the same value on common platforms.
    """

    jitter_p: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    blur_sigma: tuple[float, float] | None

    @classmethod
    def from_setting(cls, value: str | Mapping[str, Any] | None) -> "Photometric | None":
        """`train.photometric`: None, a preset name (config.PHOTOMETRIC_PRESETS) or a mapping of every field."""
        if value is None:
            return None
        params = dict(PHOTOMETRIC_PRESETS[value] if isinstance(value, str) else value)
        sigma = params.pop("blur_sigma")
        return cls(**{k: float(v) for k, v in params.items()},
                   blur_sigma=None if sigma is None else (float(sigma[0]), float(sigma[1])))

    def draw(self, rng: np.random.Generator) -> PhotometricDraw:
        """Everything random about one sample's photometric step, in the order RobustNet draws it."""
        jitter = None
        if self.jitter_p > 0 and rng.random() < self.jitter_p:
            jitter = draw_jitter(rng, jitter_ranges(self.brightness, self.contrast, self.saturation, self.hue))
        sigma = None
        if self.blur_sigma is not None:
            low, high = self.blur_sigma
            sigma = low + rng.random() * (high - low)  # RobustNet: 0.15 + random.random() * 1.15
        return PhotometricDraw(jitter, sigma)

    @staticmethod
    def apply(image: np.ndarray, drawn: PhotometricDraw) -> np.ndarray:
        if drawn.jitter is not None:
            image = apply_jitter(image, drawn.jitter)
        if drawn.blur_sigma is not None:
            image = gaussian_blur_truncated(image, drawn.blur_sigma)
        return image

    def __call__(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        return self.apply(image, self.draw(rng))


#: the second word of the seed of a method's per-sample generator ([sample seed, METHOD_STREAM])
METHOD_STREAM = 0x5E6B
#: the second word of the seeds of the `extra` transforms' generators ([sample seed, EXTRA_STREAM, k])
EXTRA_STREAM = 0xE8A


class TrainTransform:
    """[method] -> random scale -> random crop -> pad (mask with ignore) -> flip -> [extra] -> [photometric] ->
    normalise. `image_method` is a DG method's step on the full-resolution image (methods.base.Method.transform_image).

    The scale+crop step is `RandomScaleCrop` (crop before the expensive resize); pad, flip and `extra` are an
    albumentations pipeline; `photometric` (colour jitter, blur) works on the padded, flipped uint8 crop, as
    RobustNet's input transform runs after its joint scale/crop/flip. All draw from one per-sample seed, so
    augmentation is reproducible and resumable.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        extra: Sequence[A.BasicTransform] = (),
        photometric: Photometric | None = None,
        image_method: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ):
        self.image_method = image_method
        self.method_rng = np.random.default_rng()
        self.scale_crop = RandomScaleCrop(crop_size, scale_range)
        crop_h, crop_w = self.scale_crop.crop_h, self.scale_crop.crop_w
        self.rng = np.random.default_rng()
        self.extra = list(extra)
        self.pipeline = A.Compose(
            [
                A.PadIfNeeded(min_height=crop_h, min_width=crop_w, border_mode=cv2.BORDER_CONSTANT,
                              fill=0, fill_mask=IGNORE_INDEX),
                A.HorizontalFlip(p=hflip),
                *self.extra,
            ],
            strict=True,
        )
        self.photometric = photometric
        self.normalize = A.Normalize(mean=mean, std=std)

    def set_random_seed(self, seed: int) -> None:
        """Per-sample seeding makes augmentation a pure function of (sample position, run seed): resumable."""
        self.rng = np.random.default_rng(seed)
        # its own stream: a method's draws leave the crop and flip of every sample as plain training has them
        self.method_rng = np.random.default_rng([seed, METHOD_STREAM])
        self.pipeline.set_random_seed(seed)
        # Compose.set_random_seed hands every transform random.Random(seed): an `extra` transform's `p` test would
        # repeat the flip's draw (applied exactly when flipped). Each extra gets its own stream; the flip keeps its.
        for k, transform in enumerate(self.extra, 1):
            own = int(np.random.SeedSequence([seed, EXTRA_STREAM, k]).generate_state(1)[0])
            transform.set_random_state(np.random.default_rng(own), random.Random(own))

    def __call__(self, image: np.ndarray, mask: np.ndarray, focus: int = -1) -> dict[str, torch.Tensor]:
        """`focus` >= 0: the crop must contain a pixel of that class (class-uniform sampling)."""
        if self.image_method is not None:  # a method's full-resolution step (PASTA), before crop and photometric
            image = self.image_method(image, self.method_rng)
        image, mask = self.scale_crop(self.rng, image, mask, focus)
        out = self.pipeline(image=image, mask=mask)
        image = out["image"] if self.photometric is None else self.photometric(self.rng, out["image"])
        return _to_tensors(self.normalize(image=image)["image"], out["mask"])


class EvalTransform:
    """One target's scored pair: a protocol geometry (data/eval_protocols.py) resizes or crops the image and the
    label, then the image is normalised. Without one: the image resized to `size` (H, W), or to `height` keeping the
    aspect ratio, or left alone; the mask keeps its native resolution, where predictions are scored."""

    def __init__(self, size: Sequence[int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, height: int | None = None, geometry: Geometry | None = None):
        if geometry is None:
            geometry = ImageResize(size=None if size is None else (int(size[0]), int(size[1])),
                                   height=None if height is None else int(height))
        self.geometry = geometry
        self.normalize = A.Normalize(mean=mean, std=std)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """The size of the image the model sees for an h x w frame."""
        return self.geometry.image_size(h, w)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        image, mask = self.geometry(image, mask)
        return _to_tensors(self.normalize(image=image)["image"], mask)


def normalized_tensor(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """An H x W x 3 uint8 image as the model takes it: 3 x H x W float, normalised as every preset normalises."""
    return _to_tensors(A.Normalize(mean=mean, std=std)(image=image)["image"], image[..., 0])["image"]


def build_train_transform(crop_size: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), hflip: float = 0.5,
                          photometric: str | Mapping[str, Any] | None = None, **kwargs) -> TrainTransform:
    """`photometric` is the `train.photometric` setting: None, a preset name or a mapping (Photometric.from_setting)."""
    return TrainTransform(crop_size=crop_size, scale_range=scale_range, hflip=hflip,
                          photometric=Photometric.from_setting(photometric), **kwargs)


def train_transform(settings, image_method=None):
    """The sample pipeline `train.pipeline` names, from the train settings: "scale_crop" (`build_train_transform`)
    or "rein" (mmsegmentation's, data/mmseg_pipeline.py, which has no scale range or photometric preset of its
    own: it takes `crop`, from which Rein's configs derive their scales, and `hflip`)."""
    if settings.pipeline == "rein":
        from .mmseg_pipeline import ReinTrainTransform  # it builds on this module

        return ReinTrainTransform.for_crop(settings.crop, hflip=settings.hflip, image_method=image_method)
    return build_train_transform(settings.crop, settings.scale_range, settings.hflip, settings.photometric,
                                 image_method=image_method)


def eval_transform_for(dataset, size: Sequence[int] | None = None, protocol: str = DEFAULT_PROTOCOL) -> EvalTransform:
    """The eval preset for one dataset under `protocol` (`eval.protocol`, data/eval_protocols.py). An explicit `size`
    (`eval.size`) replaces the image size of the `native` protocol; the other protocols fix their own sizes, so the
    study's validation refuses a size with them (config.SECTION_RULES)."""
    if size:
        return EvalTransform(size=size)
    return EvalTransform(geometry=geometry_for(dataset, protocol))
