"""MixStyle: Zhou, Yang, Qiao, Xiang, "Domain Generalization with MixStyle", ICLR 2021.

Reproduces KaiyangZhou/Dassl.pytorch `dassl/modeling/ops/mixstyle.py` (MixStyle.forward; the same layer as
KaiyangZhou/mixstyle-release `reid/models/mixstyle.py`, whose 'crossdomain' branch assumes an even batch).

'crossdomain' pairs samples of different domains. The official layer knows no domains: it assumes a batch of two
domains in halves (`crossdomain_permutation`). Given each sample's domain (`MixStyle.domains`, set before the forward
pass by whoever knows them), partners are drawn as Dassl's own domain-labelled cross-domain mix draws them
(Dassl.pytorch `dassl/engine/dg/domain_mix.py`, DomainMix.domain_mix): `labelled_crossdomain_partners`.
"""
from __future__ import annotations

import torch
from torch import nn

from .perturbation import check_eps, check_feature_map, check_probability, coin_flip, instance_statistics

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


def labelled_crossdomain_partners(domains: torch.Tensor) -> torch.Tensor:
    """Partner of each sample from ANOTHER domain, given each sample's domain label (any integers, one per sample).

    As Dassl's DomainMix (`dassl/engine/dg/domain_mix.py`, mix_type 'crossdomain'): a random permutation is drawn
    first and kept when the batch holds one domain (nothing to mix across: random mixing, as DomainMix falls back);
    otherwise, for each domain d in increasing order, its n_d samples draw partners uniformly among the m_d samples
    of the other domains, without replacement when n_d <= m_d (distinct partners), with replacement otherwise.

    Against the official halves rule: for a batch that is two domains in equal halves, each half draws a uniformly
    random one-to-one map onto the other half, the same distribution as `crossdomain_permutation` (a shuffled
    reversed half); but the partners here follow the labels, whatever their order and proportions, and never the
    sample itself (the halves rule lets the middle sample of an odd batch draw itself). Draws come from torch's
    global generator, on the CPU: the permutation, then one multinomial per domain.
    """
    if domains.dim() != 1:
        raise ValueError(f"domains must be one label per sample (a 1-D tensor), got shape {tuple(domains.shape)}")
    domains = domains.cpu()
    partners = torch.randperm(domains.shape[0])
    labels = torch.unique(domains)
    if labels.numel() < 2:
        return partners
    for label in labels:
        mine = domains == label
        others = torch.nonzero(~mine).squeeze(1)
        count = int(mine.sum())
        draw = torch.ones(others.shape[0]).multinomial(count, replacement=count > others.shape[0])
        partners[mine] = others[draw]
    return partners


class MixStyle(nn.Module):
    """With probability p in training, re-styles each sample with a convex mix of its own channel statistics and
    a partner's: out = (x - mu) / sigma * (lam sigma + (1 - lam) sigma[perm]) + lam mu + (1 - lam) mu[perm],
    lam ~ Beta(alpha, alpha) per sample; mu, sigma = mean and sqrt(unbiased var + eps) over H, W, detached as in
    the official code (the mix is a style augmentation, not a path for gradients).

    `mix` ('random' or 'crossdomain') may be switched between calls, as the official update_mix_method does.
    `domains` (None, or one domain label per sample of the next batches, set by `MixStyleMethod.before_forward`)
    makes 'crossdomain' follow the labels (`labelled_crossdomain_partners`); without it, the official halves rule.
    It is a plain attribute, not a buffer: it describes the current batch, not the model, so checkpoints skip it.
    Draw order from torch's global generator: the coin flip, lam (on the CPU, as official), the permutation.
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6, mix: str = "random"):
        super().__init__()
        check_probability("MixStyle", p)
        if not alpha > 0.0:
            raise ValueError(f"MixStyle: alpha={alpha} must be > 0 (the Beta(alpha, alpha) concentration)")
        check_eps("MixStyle", eps)
        self.p = p
        self.alpha = alpha
        self.eps = eps
        self.mix = mix
        self.domains: torch.Tensor | None = None
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
        labelled = self.mix == "crossdomain" and self.domains is not None
        halves = self.mix == "crossdomain" and not labelled
        check_feature_map("MixStyle", x, min_batch=2 if halves else 1, min_pixels=2)
        batch = x.shape[0]
        if labelled and self.domains.shape != (batch,):
            raise ValueError(f"MixStyle: domains of shape {tuple(self.domains.shape)} for a batch of {batch}; set "
                             "one domain label per sample of the batch (or None for the halves rule)")
        if not coin_flip(self.p):
            return x
        mu, sigma = (stat.detach() for stat in instance_statistics(x, self.eps))
        concentration = torch.tensor(float(self.alpha))
        lam = torch.distributions.Beta(concentration, concentration).sample((batch, 1, 1, 1))
        # 1 - lam in the sampler's float32, as official, then both weights in x's dtype
        own, other = lam.to(device=x.device, dtype=x.dtype), (1 - lam).to(device=x.device, dtype=x.dtype)
        if labelled:
            perm = labelled_crossdomain_partners(self.domains)
        else:
            perm = crossdomain_permutation(batch) if halves else torch.randperm(batch)
        perm = perm.to(x.device)
        mu_mix = own * mu + other * mu[perm]
        sigma_mix = own * sigma + other * sigma[perm]
        return (x - mu) / sigma * sigma_mix + mu_mix
