"""RobustNet's photometric augmentation (`train.photometric: robustnet`): the parameters and probabilities hold in
distribution, and on a fixed image with fixed draws the output equals an independent computation of the official
operations (PIL's ImageEnhance and HSV for torchvision's ColorJitter, a separable Gaussian for skimage's filter)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance
from scipy import stats

from segbench.config import PHOTOMETRIC_PRESETS, ConfigError, apply_overrides, load_config, validate
from segbench.data.transforms import (JITTER_OPS, Photometric, apply_jitter, build_train_transform,
                                      gaussian_blur_truncated)

ROBUSTNET = Photometric.from_setting("robustnet")
DRAWS = 20000


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(12345)
    return [ROBUSTNET.draw(rng) for _ in range(DRAWS)]


def test_robustnet_preset_is_color_aug_half_and_gblur():
    assert PHOTOMETRIC_PRESETS["robustnet"] == {"jitter_p": 0.5, "brightness": 0.4, "contrast": 0.4,
                                                "saturation": 0.4, "hue": 0.1, "blur_sigma": [0.15, 1.3]}


def test_jitter_is_applied_half_the_time(draws):
    applied = sum(d.jitter is not None for d in draws) / DRAWS
    assert abs(applied - 0.5) < 0.015  # binomial sd 0.0035


def test_jitter_factors_are_uniform_over_colorjitter_ranges(draws):
    factors = {name: [] for name in JITTER_OPS}
    for d in draws:
        for name, f in d.jitter or ():
            factors[name].append(f)
    ranges = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.6, 1.4), "hue": (-0.1, 0.1)}
    for name, (low, high) in ranges.items():
        values = np.array(factors[name])
        assert len(values) > 9000  # every operation is drawn each time the jitter applies
        assert values.min() >= low and values.max() <= high
        assert stats.kstest(values, "uniform", args=(low, high - low)).pvalue > 1e-3, name


def test_jitter_order_is_a_uniform_permutation(draws):
    orders = [tuple(name for name, _ in d.jitter) for d in draws if d.jitter is not None]
    assert all(sorted(o) == sorted(JITTER_OPS) for o in orders)
    counts = np.array([[sum(o[pos] == name for o in orders) for name in JITTER_OPS] for pos in range(4)])
    assert np.all(np.abs(counts / len(orders) - 0.25) < 0.02)  # each operation equally often in each position
    assert len(set(orders)) == 24


def test_blur_is_on_every_image_with_sigma_uniform_in_range(draws):
    sigmas = np.array([d.blur_sigma for d in draws])
    assert sigmas.min() >= 0.15 and sigmas.max() < 1.3
    assert stats.kstest(sigmas, "uniform", args=(0.15, 1.15)).pvalue > 1e-3


def _image(h=37, w=53, seed=0):
    """A smooth colour image with some texture (hue shifts and blurs have something to act on)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    base = np.stack([128 + 100 * np.sin(xx / 7), 128 + 90 * np.cos(yy / 5), 60 + 3 * xx], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _pil_jitter(image: np.ndarray, ops) -> np.ndarray:
    """torchvision's PIL ColorJitter operations written out: ImageEnhance for the first three; hue as PIL's HSV with
    H shifted by int(factor * 255) modulo 256."""
    pil = Image.fromarray(image)
    for name, f in ops:
        if name == "brightness":
            pil = ImageEnhance.Brightness(pil).enhance(f)
        elif name == "contrast":
            pil = ImageEnhance.Contrast(pil).enhance(f)
        elif name == "saturation":
            pil = ImageEnhance.Color(pil).enhance(f)
        else:
            h, s, v = pil.convert("HSV").split()
            h = Image.fromarray(((np.asarray(h).astype(np.int64) + int(f * 255)) % 256).astype(np.uint8), "L")
            pil = Image.merge("HSV", (h, s, v)).convert("RGB")
    return np.asarray(pil)


@pytest.mark.parametrize("ops", [
    [("brightness", 1.31), ("contrast", 0.67), ("saturation", 1.22), ("hue", -0.073)],
    [("hue", 0.094), ("saturation", 0.61), ("brightness", 0.72), ("contrast", 1.38)],
])
def test_jitter_with_fixed_factors_equals_the_pil_operations(ops):
    image = _image()
    assert np.array_equal(apply_jitter(image, ops), _pil_jitter(image, ops))


def test_jitter_equals_torchvision_colorjitter_given_the_same_draw(monkeypatch):
    """The order semantics: ColorJitter.forward with get_params returning our draw gives the same image."""
    image = _image(seed=1)
    ops = [("saturation", 0.77), ("hue", 0.05), ("contrast", 1.12), ("brightness", 0.93)]
    ids = torch.tensor([JITTER_OPS.index(name) for name, _ in ops])
    factors = dict(ops)
    monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(
        lambda *ranges: (ids, factors["brightness"], factors["contrast"], factors["saturation"], factors["hue"])))
    expected = np.asarray(T.ColorJitter(0.4, 0.4, 0.4, 0.1)(Image.fromarray(image)))
    assert np.array_equal(apply_jitter(image, ops), expected)


def _separable_gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian(img, sigma, channel_axis=-1) * 255 -> uint8, written with OpenCV: kernel
    exp(-x^2 / 2 sigma^2) normalised over radius int(4 sigma + 0.5), edge pixels repeated, float64."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / sigma ** 2 * x ** 2)
    kernel /= kernel.sum()
    img = image.astype(np.float64) * (1.0 / 255)
    out = cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    return (out * 255).astype(np.uint8)


@pytest.mark.parametrize("sigma", [0.15, 0.6, 1.0, 1.2999])
def test_blur_equals_an_independent_separable_gaussian(sigma):
    """Equal but for the order of float additions: where the filtered value lands within ~1e-12 of an integer,
    truncation can go either way, so a few pixels may differ by exactly one level."""
    image = _image(h=41, w=67, seed=2)
    ours, ref = gaussian_blur_truncated(image, sigma).astype(int), _separable_gaussian(image, sigma).astype(int)
    assert np.abs(ours - ref).max() <= 1
    assert (ours != ref).mean() < 0.01


def test_blur_equals_skimage_when_installed():
    skimage_filters = pytest.importorskip("skimage.filters")
    image = _image(seed=3)
    for sigma in (0.15, 0.8, 1.29):
        ref = skimage_filters.gaussian(image, sigma=sigma, channel_axis=-1)
        ref *= 255
        assert np.array_equal(gaussian_blur_truncated(image, sigma), ref.astype(np.uint8))


def test_blur_truncates_like_the_official_code():
    """A flat image blurred is the same image in exact arithmetic; the official x/255 -> filter -> *255 ->
    astype(uint8) drops some levels by one, and so does ours (the level set is the same as the reference's)."""
    flat = np.kron(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), np.ones((9, 9, 3), np.uint8))
    ours, ref = gaussian_blur_truncated(flat, 0.5), _separable_gaussian(flat, 0.5)
    centres = (slice(4, None, 9), slice(4, None, 9), 0)
    drop = flat[centres].astype(int) - ours[centres]
    assert set(np.unique(drop)) == {0, 1}
    assert np.abs(ours[centres].astype(int) - ref[centres]).max() <= 1


def test_train_transform_jitters_and_blurs_the_flipped_crop_before_normalising():
    """Same seed: TrainTransform(photometric) == normalise(Photometric.apply(the crop it produces without it,
    Photometric.draw from the per-sample generator right after the scale/crop draws))."""
    image, mask = _image(h=60, w=90, seed=4), np.random.default_rng(5).integers(0, 19, (60, 90), dtype=np.uint8)
    identity = dict(mean=(0, 0, 0), std=(1 / 255,) * 3)  # A.Normalize: (x / 255 - 0) / (1 / 255) = x
    on = build_train_transform((40, 64), (0.7, 1.3), photometric="robustnet", **identity)
    off = build_train_transform((40, 64), (0.7, 1.3), **identity)
    seen_jitter = seen_plain = 0
    for seed in range(12):
        on.set_random_seed(seed)
        off.set_random_seed(seed)
        got, crop = on(image, mask), off(image, mask)
        assert torch.equal(got["mask"], crop["mask"])
        rng = np.random.default_rng(seed)
        off.scale_crop(rng, image, mask)  # the draws made before the photometric step
        drawn = ROBUSTNET.draw(rng)
        seen_jitter += drawn.jitter is not None
        seen_plain += drawn.jitter is None
        crop_u8 = crop["image"].permute(1, 2, 0).round().to(torch.uint8).numpy()
        expected = on.normalize(image=Photometric.apply(crop_u8, drawn))["image"]
        assert np.array_equal(got["image"].permute(1, 2, 0).numpy(), expected)
    assert seen_jitter and seen_plain


def test_photometric_is_a_pure_function_of_the_sample_seed():
    image, mask = _image(h=60, w=90, seed=6), np.zeros((60, 90), np.uint8)
    t = build_train_transform((40, 64), (0.7, 1.3), photometric="robustnet")
    t.set_random_seed(7)
    first = t(image, mask)["image"]
    t.set_random_seed(8)
    t(image, mask)
    t.set_random_seed(7)
    assert torch.equal(t(image, mask)["image"], first)


def test_explicit_mapping_sets_every_parameter():
    cfg = validate(apply_overrides(load_config("embedded"), [
        "train.photometric={jitter_p: 1.0, brightness: 0, contrast: 0, saturation: 0, hue: 0.2, blur_sigma: null}"]))
    p = Photometric.from_setting(cfg["train"]["photometric"])
    drawn = p.draw(np.random.default_rng(0))
    assert drawn.blur_sigma is None and [name for name, _ in drawn.jitter] == ["hue"]
    assert -0.2 <= drawn.jitter[0][1] <= 0.2


@pytest.mark.parametrize("value, hint", [
    ("robustnett", "expected null, 'robustnet' or a mapping"),
    ("{jitter_p: 0.5}", "the mapping needs exactly jitter_p, brightness"),
    ("{jitter_p: 0.5, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.7, blur_sigma: null}", "hue"),
    ("{jitter_p: 0.5, brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1, blur_sigma: [1.3, 0.1]}",
     "expected null"),
])
def test_bad_photometric_settings_are_refused(value, hint):
    with pytest.raises(ConfigError, match="train.photometric") as info:
        validate(apply_overrides(load_config("embedded"), [f"train.photometric={value}"]))
    assert hint in str(info.value)
