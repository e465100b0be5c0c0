"""PASTA: Chattopadhyay, Sarangmath, Vijaykumar, Hoffman, "PASTA: Proportional Amplitude Spectrum Training
Augmentation for Syn-to-Real Domain Generalization", ICCV 2023.

Reproduces the segmentation release ksarangmath/PASTA_robustnet `datasets/pasta.py` (PASTA.__call__, mode 'prop';
the same transform as prithv1/PASTA `pasta.ipynb`). Synthetic images carry less high-frequency variation than real
ones, so the amplitude of each frequency is jittered in proportion to how high it is; the phase (the content) is
kept.
"""
from __future__ import annotations

import numpy as np


def _official_axis(n: int) -> np.ndarray:
    """Signed frequency index along one axis as the official code writes it, centred: odd n is
    -(n//2)..n//2; even n is -(n//2 - 1)..0 followed by 0..n//2 - 1, so 0 appears twice and -(n/2) never."""
    if n % 2 == 1:
        return np.arange(-(n // 2), n // 2 + 1)
    return np.concatenate([np.arange(-(n // 2) + 1, 1), np.arange(0, n // 2)])


def frequency_radius(height: int, width: int) -> np.ndarray:
    """The official frequency-radius grid, H x W, in centred (not yet fftshifted) order."""
    cols, rows = np.meshgrid(_official_axis(width), _official_axis(height))
    return np.sqrt(np.square(cols) + np.square(rows))


def amplitude_sigma(height: int, width: int, alpha: float = 3.0, k: float = 2, beta: float = 0.25) -> np.ndarray:
    """sigma_f = (alpha r / max r)^k + beta, moved onto numpy's FFT layout with fftshift as official; H x W.

    The official grid is reproduced exactly, and it is off by one on both parities. Along an axis of length n,
    frequency f gets the axis value: even n (0 listed twice): f for 0 <= f < n/2, n/2 - 1 for the Nyquist term,
    m - 1 for -m; odd n (fftshift where ifftshift would undo the centring): f + 1 for 0 <= f < n//2 (so the DC
    term gets 1), n//2 for f = n//2, m - 1 for -m. In both, frequency -1 gets 0."""
    radius = frequency_radius(height, width)
    if radius.max() == 0:
        raise ValueError(f"PASTA needs an image with more than 2 rows or columns, got {height} x {width}")
    scaled = radius * ((1.0 / radius.max()) * alpha)  # the official order of operations
    return np.fft.fftshift(np.power(scaled, k) + beta, axes=(-2, -1))


def _check_parameters(alpha: float, k: float, beta: float) -> None:
    for name, value in (("alpha", alpha), ("k", k), ("beta", beta)):
        if not value >= 0:
            raise ValueError(f"PASTA: {name}={value} must be >= 0")


def pasta(image: np.ndarray, rng: np.random.Generator, alpha: float = 3.0, k: float = 2,
          beta: float = 0.25) -> np.ndarray:
    """PASTA on an H x W x 3 uint8 image; returns a new H x W x 3 uint8 image.

    Per channel: A, phi = |FFT|, angle(FFT) of the image in [0, 1]; A' = A * N(1, sigma_f), drawn independently per
    channel and frequency from `rng`; real part of the inverse FFT of A' e^{i phi}, clipped to [0, 1]. The official
    code goes back to an image with torchvision's ToPILImage, which truncates (x * 255 cast to uint8, no
    rounding); this does the same. It computes in float64 throughout (the official forward FFT is float32), so a
    pixel can differ by one level where x * 255 lies within float32 round-off of an integer.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"pasta expects an H x W x 3 uint8 numpy image, got {got}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"pasta expects a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    _check_parameters(alpha, k, beta)
    height, width = image.shape[:2]
    sigma = np.broadcast_to(amplitude_sigma(height, width, alpha, k, beta), (3, height, width))
    channels = np.transpose(image, (2, 0, 1)).astype(np.float64) / 255.0
    spectrum = np.fft.fft2(channels, axes=(-2, -1))
    amplitude = np.abs(spectrum) * rng.normal(1.0, sigma)
    restored = np.fft.ifft2(amplitude * np.exp(1j * np.angle(spectrum)), axes=(-2, -1)).real
    levels = (np.clip(restored, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.transpose(levels, (1, 2, 0)))


class PASTA:
    """`pasta` with its parameters bound: a picklable transform for data-loader workers, called as
    transform(image, rng) with a per-sample generator so that resume reproduces each image."""

    def __init__(self, alpha: float = 3.0, k: float = 2, beta: float = 0.25):
        _check_parameters(alpha, k, beta)
        self.alpha = alpha
        self.k = k
        self.beta = beta

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return pasta(image, rng, self.alpha, self.k, self.beta)

    def __repr__(self) -> str:
        return f"PASTA(alpha={self.alpha}, k={self.k}, beta={self.beta})"
