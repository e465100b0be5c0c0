"""MixStyle: Zhou, Yang, Qiao, Xiang, "Domain Generalization with MixStyle", ICLR 2021.

Reproduces KaiyangZhou/Dassl.pytorch `dassl/modeling/ops/mixstyle.py` (MixStyle.forward; the same layer as
KaiyangZhou/mixstyle-release `reid/models/mixstyle.py`, whose 'crossdomain' branch assumes an even batch).
"""
from __future__ import annotations

import torch
from torch import nn

from .perturbation import check_feature_map, check_probability, coin_flip

MIX_MODES = ("random", "crossdomain")


def crossdomain_permutation(batch: int) -> torch.Tensor:
    """Partner of each sample for a batch whose first half is one domain and second half another: the reversed
    index split in two, each half shuffled, so the first half mixes only with the second (odd batches: the first
    chunk is the longer one, as torch.chunk splits, and its last sample may draw itself)."""
    if batch < 2:
        raise ValueError(f"MixStyle(mix='crossdomain') needs a batch of at least 2 (two domains), got {batch}")
    reversed_index = torch.arange(batch - 1, -1, -1)
    first, second = reversed_index.chunk(2)
    first = first[torch.randperm(first.shape[0])]
    second = second[torch.randperm(second.shape[0])]
    return torch.cat([first, second])


class MixStyle(nn.Module):
    """With probability p in training, re-styles each sample with a convex mix of its own channel statistics and
    a partner's: out = (x - mu) / sigma * (lam sigma + (1 - lam) sigma[perm]) + lam mu + (1 - lam) mu[perm],
    lam ~ Beta(alpha, alpha) per sample; mu, sigma = mean and sqrt(unbiased var + eps) over H, W, detached as in
    the official code (the mix is a style augmentation, not a path for gradients).

    `mix` ('random' or 'crossdomain') may be switched between calls, as the official update_mix_method does.
    Draw order from torch's global generator: the coin flip, lam (on the CPU, as official), the permutation.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = "random"):
        super().__init__()
        check_probability("MixStyle", p)
        if not alpha > 0.0:
            raise ValueError(f"MixStyle: alpha={alpha} must be > 0 (the Beta(alpha, alpha) concentration)")
        if not eps >= 0.0:
            raise ValueError(f"MixStyle: eps={eps} must be >= 0")
        self.p = p
        self.alpha = alpha
        self.eps = eps
        self.mix = mix
        self._check_mix()

    def _check_mix(self) -> None:
        if self.mix not in MIX_MODES:
            raise ValueError(f"MixStyle: mix={self.mix!r} is unknown; use one of {MIX_MODES}")

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}, eps={self.eps}, mix={self.mix!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        self._check_mix()
        check_feature_map("MixStyle", x, min_batch=2 if self.mix == "crossdomain" else 1, min_pixels=2)
        if not coin_flip(self.p):
            return x
        batch = x.shape[0]
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        concentration = torch.tensor(float(self.alpha))
        lam = torch.distributions.Beta(concentration, concentration).sample((batch, 1, 1, 1))
        # 1 - lam in the sampler's float32, as official, then both weights in x's dtype
        own, other = lam.to(device=x.device, dtype=x.dtype), (1 - lam).to(device=x.device, dtype=x.dtype)
        perm = torch.randperm(batch) if self.mix == "random" else crossdomain_permutation(batch)
        perm = perm.to(x.device)
        mu_mix = own * mu + other * mu[perm]
        sigma_mix = own * sigma + other * sigma[perm]
        return (x - mu) / sigma * sigma_mix + mu_mix
