"""Perturbing a feature map's channel statistics: the coin flip and input checks MixStyle, DSU and NP share, and
Normalization Perturbation itself.

Normalization Perturbation (NP): Fan, Segu, Tai, Yu, Tang, Schiele, Dai, "Normalization Perturbation: A Simple Domain
Generalization Method for Real-World Domain Shifts", ICLR 2023 (arXiv:2211.04393). No official code is public; the
layer follows the paper's formula.
"""
from __future__ import annotations

import torch
from torch import nn


def check_probability(owner: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}: p={p} is not a probability; use a value in [0, 1]")


def check_eps(owner: str, eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"{owner}: eps={eps} must be >= 0")


def instance_statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and sqrt(unbiased variance + eps) over H x W, B x C x 1 x 1 each: the style
    MixStyle and DSU mix and resample (Dassl mixstyle.py, DSU dsu.py)."""
    return x.mean(dim=(2, 3), keepdim=True), (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()


def check_feature_map(owner: str, x: torch.Tensor, min_batch: int = 1, min_pixels: int = 1) -> None:
    """Unbiased variances need two samples: fewer would make NaNs, not an error."""
    if x.dim() != 4:
        raise ValueError(f"{owner} expects a B x C x H x W feature map, got shape {tuple(x.shape)}")
    if x.shape[0] < min_batch:
        raise ValueError(f"{owner} needs a batch of at least {min_batch} in training, got {x.shape[0]}; "
                         "use a larger batch or put the module in eval mode")
    if x.shape[2] * x.shape[3] < min_pixels:
        raise ValueError(f"{owner} needs at least {min_pixels} pixels per channel, got H x W = "
                         f"{x.shape[2]} x {x.shape[3]}; place it at a layer with a larger feature map")


def coin_flip(p: float) -> bool:
    """True with probability p, from torch's global generator (checkpoints save its state, so resume is exact);
    drawn on every call, so the stream does not depend on p."""
    return bool(torch.rand(()) < p)


class NormalizationPerturbation(nn.Module):
    """NP: out = alpha (x - mu) + beta mu, mu the per-image channel mean, alpha, beta ~ N(1, std^2) per sample and
    channel, which rescales each channel's contrast and brightness so the network sees styles the source lacks.

    The paper places it at shallow layers (the ResNet stem / stage 1) and publishes no probability. p defaults to
    0.5, as in MixStyle and DSU, so that a benchmark comparing the three differs only in how statistics are
    perturbed, and half of the batches keep source statistics for the BatchNorm running estimates downstream.
    Gradients flow through mu (the paper's formula, no detach).

    NP+ (style-sensitive channels) is not implemented: its rule cannot be stated exactly without official code.
    """

    def __init__(self, std: float = 0.75, p: float = 0.5):
        super().__init__()
        if not std >= 0.0:
            raise ValueError(f"NormalizationPerturbation: std={std} must be >= 0")
        check_probability("NormalizationPerturbation", p)
        self.std = std
        self.p = p

    def extra_repr(self) -> str:
        return f"std={self.std}, p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        check_feature_map("NormalizationPerturbation", x)
        if not coin_flip(self.p):
            return x
        shape = (x.shape[0], x.shape[1], 1, 1)
        alpha = 1.0 + self.std * torch.randn(shape, dtype=x.dtype, device=x.device)
        beta = 1.0 + self.std * torch.randn(shape, dtype=x.dtype, device=x.device)
        mu = x.mean(dim=(2, 3), keepdim=True)
        return alpha * (x - mu) + beta * mu
