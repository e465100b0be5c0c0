"""DSU (Distribution Uncertainty): Li, Dai, Ge, Liu, Shan, Duan, "Uncertainty Modeling for Out-of-Distribution
Generalization", ICLR 2022.

Reproduces lixiaotong97/DSU `dsu.py` (DistributionUncertainty), the same class its segmentation experiments use
(`semantic-segmentation/core/models/resnet.py`).
"""
from __future__ import annotations

import torch
from torch import nn

from .perturbation import check_eps, check_feature_map, check_probability, coin_flip, instance_statistics


class DistributionUncertainty(nn.Module):
    """With probability p in training, treats each sample's channel statistics as uncertain: they are resampled
    from Gaussians whose spread is the statistic's spread over the batch.

    mu, sigma: mean and sqrt(unbiased var + eps) over H, W; Sigma_mu, Sigma_sigma: sqrt(unbiased var over the batch
    + eps), per channel; beta = mu + e1 * factor * Sigma_mu, gamma = sigma + e2 * factor * Sigma_sigma with
    e1, e2 ~ N(0, 1) per sample and channel; out = gamma (x - mu) / sigma + beta. Nothing is detached: the
    official code backpropagates through all statistics. Draw order: the coin flip, e1, e2 (torch's global
    generator; e1, e2 on x's device).
    """

    def __init__(self, p: float = 0.5, factor: float = 1.0, eps: float = 1e-6):
        super().__init__()
        check_probability("DistributionUncertainty", p)
        if not factor >= 0.0:
            raise ValueError(f"DistributionUncertainty: factor={factor} must be >= 0")
        check_eps("DistributionUncertainty", eps)
        self.p = p
        self.factor = factor
        self.eps = eps

    def extra_repr(self) -> str:
        return f"p={self.p}, factor={self.factor}, eps={self.eps}"

    def _batch_spread(self, stat: torch.Tensor) -> torch.Tensor:
        return (stat.var(dim=0, keepdim=True) + self.eps).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        check_feature_map("DistributionUncertainty", x, min_batch=2, min_pixels=2)
        if not coin_flip(self.p):
            return x
        mu, sigma = instance_statistics(x, self.eps)  # not detached: DSU's gradient flows through them
        beta = mu + torch.randn_like(mu) * self.factor * self._batch_spread(mu)
        gamma = sigma + torch.randn_like(sigma) * self.factor * self._batch_spread(sigma)
        return (x - mu) / sigma * gamma + beta
