"""Image-only appearance transforms at graded strengths: what a domain shift changes while the scene stays put.

Each transform maps an RGB uint8 image to an RGB uint8 image of the same size; labels are never touched. Randomness
(only the noise uses any) comes from a generator seeded by (seed, transform, level, image index) through SHA-256, so a
condition gives the same pixels in every process and on every run. Blur scales with the image's short side so a level
means the same on a 128-px synthetic frame and a 1024-px Cityscapes frame.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from .stats import ChannelMoments

Fn = Callable[[np.ndarray, float, np.random.Generator, "StyleStats | None"], np.ndarray]


@dataclass(frozen=True)
class StyleStats:
    """Target colour statistics for the Reinhard transfer: mean over images of per-image Lab mean and std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str = ""


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _lab(image: np.ndarray) -> np.ndarray:
    """float Lab (L 0..100, a/b about -128..127) of a uint8 RGB image."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _brightness(img, s, rng, style):
    return _u8(img.astype(np.float32) + s)


def _red_shift(img, s, rng, style):
    out = img.astype(np.float32)
    out[..., 0] += s
    return _u8(out)


def _contrast(img, factor, rng, style):
    """Scale each channel's deviation from its image mean: the per-channel std is multiplied by `factor`."""
    x = img.astype(np.float32)
    m = x.mean(axis=(0, 1), keepdims=True)
    return _u8(m + factor * (x - m))


def _gamma(img, g, rng, style):
    return _u8(255.0 * (img.astype(np.float32) / 255.0) ** g)


def _hue(img, degrees, rng, style):
    hsv = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # float: H in degrees, no 8-bit rounding
    hsv[..., 0] = (hsv[..., 0] + degrees) % 360.0
    return _u8(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0)


def _saturation(img, factor, rng, style):
    x = img.astype(np.float32)
    gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return _u8(gray + factor * (x - gray))


def _blur(img, frac, rng, style):
    return cv2.GaussianBlur(img, (0, 0), max(frac * min(img.shape[:2]), 1e-3))


def _noise(img, std, rng, style):
    return _u8(img.astype(np.float32) + rng.normal(0.0, std, img.shape).astype(np.float32))


def _jpeg(img, quality, rng, style):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _style(img, alpha, rng, style):
    """Reinhard et al. (2001) colour transfer in Lab, moved a fraction `alpha` of the way to the target statistics."""
    if style is None:
        raise ValueError("the 'style' transform needs target statistics: pass --style-from DATASET")
    lab = _lab(img)
    mu, sd = lab.mean(axis=(0, 1)), lab.std(axis=(0, 1)) + 1e-6
    mu_t = mu + alpha * (np.asarray(style.mean, np.float32) - mu)
    sd_t = sd + alpha * (np.asarray(style.std, np.float32) - sd)
    out = cv2.cvtColor(((lab - mu) / sd * sd_t + mu_t).astype(np.float32), cv2.COLOR_LAB2RGB)
    return _u8(out * 255.0)


@dataclass(frozen=True)
class AppearanceKind:
    """A family of transforms: the function, its default levels (mild -> strong) and how a level reads in tables."""

    fn: Fn
    levels: tuple[float, ...]
    fmt: str
    random: bool = False


#: name -> family. Levels were chosen so the strongest stays a plausible photograph of the same scene.
TRANSFORMS: dict[str, AppearanceKind] = {
    "brightness": AppearanceKind(_brightness, (25, 50, 75), "RGB{:+g}"),
    "red": AppearanceKind(_red_shift, (25, 50, 75), "R{:+g}"),
    "contrast_up": AppearanceKind(_contrast, (1.25, 1.5, 2.0), "std x{:g}"),
    "contrast_down": AppearanceKind(_contrast, (0.75, 0.5, 0.25), "std x{:g}"),
    "gamma": AppearanceKind(_gamma, (1.5, 2.0, 3.0), "gamma {:g}"),
    "hue": AppearanceKind(_hue, (30, 60, 120), "hue {:+g} deg"),
    "saturation": AppearanceKind(_saturation, (0.5, 0.25, 0.0), "sat x{:g}"),
    "blur": AppearanceKind(_blur, (0.005, 0.01, 0.02), "sigma {:.1%} of side"),
    "noise": AppearanceKind(_noise, (10, 20, 40), "noise std {:g}", random=True),
    "jpeg": AppearanceKind(_jpeg, (50, 20, 5), "JPEG q{:g}"),
    "style": AppearanceKind(_style, (0.33, 0.67, 1.0), "style {:.0%}"),
}


def per_image_rng(seed: int, name: str, level: float, index: int) -> np.random.Generator:
    """A generator that depends only on its arguments (not on Python's salted hash, not on call order)."""
    key = f"{seed}/{name}/{level!r}/{index}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


class ImageTransform:
    """`t(image, index) -> image`: one transform at one level; deterministic per image index."""

    def __init__(self, name: str, level: float, seed: int = 0, style: StyleStats | None = None):
        if name not in TRANSFORMS:
            raise ValueError(f"unknown appearance transform {name!r}; valid: {', '.join(TRANSFORMS)}")
        self.name, self.level, self.seed, self.style = name, float(level), seed, style
        self.kind = TRANSFORMS[name]
        if name == "style" and style is None:
            raise ValueError("the 'style' transform needs target statistics (StyleStats); pass --style-from DATASET")

    @property
    def label(self) -> str:
        return self.kind.fmt.format(self.level)

    @property
    def title(self) -> str:
        """The label, prefixed with the transform's name where the label alone would not say it."""
        return self.label if self.label.lower().startswith(self.name[:3]) else f"{self.name} {self.label}"

    def __call__(self, image: np.ndarray, index: int) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        rng = per_image_rng(self.seed, self.name, self.level, index) if self.kind.random else None
        out = self.kind.fn(image, self.level, rng, self.style)
        assert out.shape == image.shape and out.dtype == np.uint8
        return out

    def __repr__(self) -> str:
        return f"ImageTransform({self.name!r}, {self.level:g})"


def parse_transform_spec(spec: str) -> tuple[str, float | None]:
    """'name' or 'name:level' -> (name, level or None)."""
    name, _, level = spec.partition(":")
    name = name.strip()
    if name not in TRANSFORMS:
        raise ValueError(f"unknown appearance transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    return name, (float(level) if level else None)


def style_statistics(dataset, max_images: int | None = 50, desc: str = "style stats") -> StyleStats:
    """Streamed mean of per-image Lab mean and std over the first `max_images` images of `dataset` (an adapter)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    means, stds = ChannelMoments(), ChannelMoments()
    import torch

    for i in tqdm(range(n), desc=desc, unit="img", leave=False, dynamic_ncols=True):
        lab = _lab(dataset.load_pair(i)[0]).reshape(-1, 3)
        means.update(torch.from_numpy(lab.mean(0, dtype=np.float64))[None])
        stds.update(torch.from_numpy(lab.std(0, dtype=np.float64))[None])
    name = getattr(dataset, "root", "")
    return StyleStats(tuple(float(v) for v in means.mean), tuple(float(v) for v in stds.mean), str(name))


def conditions(names: Sequence[str], levels: dict[str, Sequence[float]] | None = None) -> list[tuple[str, float]]:
    """(name, level) for every requested transform at its default (or given) levels, in order."""
    out = []
    for name in names:
        if name not in TRANSFORMS:
            raise ValueError(f"unknown appearance transform {name!r}; valid: {', '.join(TRANSFORMS)}")
        for level in (levels or {}).get(name, TRANSFORMS[name].levels):
            out.append((name, float(level)))
    return out
