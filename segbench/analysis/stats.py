"""Streaming per-channel statistics and the Gaussian symmetric KL divergence used by the feature-divergence analysis.

Constant memory in the number of samples: a `ChannelMoments` keeps count, mean and M2 per channel (float64) and merges
each batch with Chan et al.'s parallel form of Welford's update, which stays accurate where sum/sum-of-squares cancels.
"""
from __future__ import annotations

import torch

#: added to both variances before the KL: a channel that is constant in both domains (e.g. dead after ReLU)
#: then contributes 0 instead of 0/0. Features are O(0.1-1) after BN, so it does not move live channels.
VAR_EPS = 1e-6


class ChannelMoments:
    """Mean and variance per channel of a stream of (N, C) batches."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).reshape(x.shape[0], -1).cpu()
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"channel count changed from {self.mean.numel()} to {mean_b.numel()}")
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.count * n_b / total)
        self.count = total

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance (needs at least 2 samples)."""
        if self.mean is None or self.count < 2:
            raise ValueError(f"variance needs at least 2 samples, have {self.count}")
        return self.m2 / (self.count - 1)


def gaussian_symmetric_kl(mu_a: torch.Tensor, var_a: torch.Tensor, mu_b: torch.Tensor, var_b: torch.Tensor,
                          eps: float = VAR_EPS) -> torch.Tensor:
    """Elementwise KL(N_a || N_b) + KL(N_b || N_a); the log-variance terms of the two directions cancel."""
    var_a, var_b = var_a + eps, var_b + eps
    d2 = (mu_a - mu_b) ** 2
    return (var_a + d2) / (2 * var_b) + (var_b + d2) / (2 * var_a) - 1.0


def moments_divergence(a: ChannelMoments, b: ChannelMoments, eps: float = VAR_EPS) -> float:
    """Symmetric KL between the per-channel Gaussians of `a` and `b`, averaged over channels."""
    return float(gaussian_symmetric_kl(a.mean, a.var, b.mean, b.var, eps).mean())
