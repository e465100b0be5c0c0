"""Normalisation and horizontal flips of the train/eval presets, checked against hand computations.

The ImageNet statistics are the ones IBN-Net's ImageNet weights were trained with (XingangPan/IBN-Net `imagenet.py`:
`transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])` after `ToTensor()` on PIL RGB images, so
the first entry belongs to red); torchvision's ResNet weights use the same.
"""
import math

import numpy as np
import pytest

from segbench.data.sampler import SeededStreamSampler
from segbench.data.transforms import EvalTransform, build_train_transform

MEAN = (0.485, 0.456, 0.406)  # R, G, B
STD = (0.229, 0.224, 0.225)


def _solid(rgb, h=6, w=10):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (h, w, 3)).copy(), np.zeros((h, w), np.uint8)


def _presets(h=6, w=10):
    """Both presets, configured so that nothing but normalisation (and, for train, a possible flip) happens."""
    return {"train": build_train_transform((h, w), scale_range=(1.0, 1.0), hflip=0.0),
            "eval": EvalTransform()}


@pytest.mark.parametrize("preset", ["train", "eval"])
def test_pure_red_is_normalised_with_imagenet_statistics_in_rgb_order(preset):
    """An RGB (255, 0, 0) image: channel 0 is red, so it gets (1 - 0.485) / 0.229; the others (0 - mean) / std."""
    image, mask = _solid((255, 0, 0))
    out = _presets()[preset](image=image, mask=mask)["image"].numpy()
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    assert out.shape == (3, 6, 10)
    for c in range(3):
        np.testing.assert_allclose(out[c], expected[c], rtol=1e-5)


@pytest.mark.parametrize("preset", ["train", "eval"])
def test_every_channel_is_normalised_with_its_own_statistics(preset):
    """Random colours: out[c] = (pixel[c] / 255 - mean[c]) / std[c] for every pixel, in CHW layout."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    out = _presets()[preset](image=image, mask=np.zeros((6, 10), np.uint8))["image"].numpy()
    for c in range(3):
        np.testing.assert_allclose(out[c], (image[..., c] / 255.0 - MEAN[c]) / STD[c], rtol=1e-5, atol=1e-6)


def _x_coded(h=4, w=8):
    """Image and mask that both hold the column index, so a flip shows as a reversed row."""
    xs = np.tile(np.arange(w, dtype=np.uint8), (h, 1))
    return np.repeat((xs * 30)[..., None], 3, axis=2), xs


def _count_flips(transform, draws, seed=0):
    """Augment one sample with the per-sample seeds a training run would use; count mirrored outputs."""
    image, mask = _x_coded()
    w = mask.shape[1]
    plain, mirrored = np.arange(w), np.arange(w)[::-1]
    flips = 0
    for _, sample_seed in SeededStreamSampler(1, seed, total=draws):
        transform.set_random_seed(sample_seed)
        out = transform(image=image, mask=mask)
        m = out["mask"].numpy()
        row = m[0]
        assert (m == row).all() and (row.tolist() in (plain.tolist(), mirrored.tolist()))
        # the image went the same way as the mask (normalised red channel back to 0..255, /30 back to x)
        x_img = np.rint((out["image"][0].numpy() * STD[0] + MEAN[0]) * 255 / 30)
        np.testing.assert_array_equal(x_img, m)
        flips += int(row[0] == w - 1)
    return flips


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_train_flips_happen_at_the_configured_rate(rate):
    """Seeded draws: the flip count lies within 4 binomial standard deviations of draws * rate."""
    draws = 1000
    t = build_train_transform((4, 8), scale_range=(1.0, 1.0), hflip=rate)
    flips = _count_flips(t, draws)
    assert abs(flips - draws * rate) <= 4 * math.sqrt(draws * rate * (1 - rate)), flips


def test_train_never_flips_at_rate_zero_and_always_at_one():
    t0 = build_train_transform((4, 8), scale_range=(1.0, 1.0), hflip=0.0)
    t1 = build_train_transform((4, 8), scale_range=(1.0, 1.0), hflip=1.0)
    assert _count_flips(t0, 200) == 0
    assert _count_flips(t1, 200) == 200


def test_eval_transform_never_flips():
    image, mask = _x_coded()
    t = EvalTransform()
    for _ in range(50):
        out = t(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"].numpy(), mask)
        np.testing.assert_array_equal(np.rint((out["image"][0].numpy() * STD[0] + MEAN[0]) * 255 / 30), mask)
