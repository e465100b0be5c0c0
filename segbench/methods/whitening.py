"""The instance-whitening family of RobustNet: IW, IRW and ISW (Choi et al., CVPR 2021, "RobustNet: Improving Domain
Generalization in Urban-Scene Segmentation via Instance Selective Whitening").

An InstanceNorm output is pushed towards a whitened one by a loss on its per-image covariance: IW penalises every
off-diagonal entry, IRW allows a margin, ISW penalises only the entries whose value moves most under a photometric
change (the style-sensitive ones), found by 1-D k-means on their variance. Every formula matches the official code,
shachoi/RobustNet: `network/instance_whitening.py` (get_covariance_matrix, instance_whitening_loss, InstanceWhitening),
`network/cov_settings.py` (CovMatrix_IRW, CovMatrix_ISW), `network/deepv3.py` (the cal_covstat pass) and `train.py`
(--relax_denom 64 for IRW, --clusters 3 and --trials 10 for ISW in `scripts/train_*_isw.sh`).

Statistics are computed in float32 at least and outside autocast: a C x C sum of HW products overflows float16.
"""
from __future__ import annotations

import torch
from torch import nn

EPS = 1e-5  # get_covariance_matrix's eps, added on the diagonal
IRW_RELAX_DENOM = 64.0  # --relax_denom in scripts/train_*_irw.sh


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def covariance(x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """B x C x H x W -> B x C x C: F F^T / (HW - 1) + eps I per image, without centring (the input is an IN output,
    already zero-mean per channel), as RobustNet's get_covariance_matrix."""
    if x.dim() != 4:
        raise ValueError(f"covariance needs a B x C x H x W feature map, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    hw = h * w
    if hw < 2:
        raise ValueError(f"covariance divides by H*W - 1, so it needs H*W >= 2, got H={h}, W={w}")
    dtype = _statistics_dtype(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        f = x.reshape(b, c, hw).to(dtype)
        eye = torch.eye(c, dtype=dtype, device=x.device)
        return torch.bmm(f, f.transpose(1, 2)).div(hw - 1) + eps * eye


def strict_upper(channels: int, device=None) -> torch.Tensor:
    """C x C bool, True above the diagonal: each off-diagonal pair counted once (RobustNet's reversal_i)."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    return torch.ones(channels, channels, dtype=torch.bool, device=device).triu(diagonal=1)


def _check_mask(mask: torch.Tensor, channels: int) -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != (channels, channels):
        raise ValueError(f"the whitening mask must be a {channels} x {channels} bool tensor, got dtype {mask.dtype} "
                         f"shape {tuple(mask.shape)}; build it with strict_upper or isw_mask")


def instance_whitening_loss(features: torch.Tensor, mask: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """mean over images of max(0, (sum |S * M| - margin) / |M|), S = covariance(features): RobustNet's
    instance_whitening_loss with num_remove_cov = mask.sum()."""
    if features.dim() != 4:
        raise ValueError(f"features must be B x C x H x W, got shape {tuple(features.shape)}")
    _check_mask(mask, features.shape[1])
    selected = mask.sum()
    if selected == 0:
        raise ValueError("the whitening mask selects no covariance entry, so the loss would be 0/0; "
                         "use a mask with at least one True (ISW: fewer trials or more channels)")
    cov = covariance(features)
    off_diagonal = torch.sum(torch.abs(cov * mask), dim=(1, 2)) - margin
    per_image = torch.clamp(off_diagonal / selected.to(cov.dtype), min=0)
    return per_image.sum() / features.shape[0]


def irw_margin(channels: int, relax_denom: float = IRW_RELAX_DENOM) -> float:
    """IRW's margin: (number of strict-upper entries) // relax_denom, floored as CovMatrix_IRW does on floats."""
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if relax_denom <= 0:
        raise ValueError(f"relax_denom must be > 0 (RobustNet's IRW uses 64), got {relax_denom}")
    return float((channels * (channels - 1) // 2) // relax_denom)


def isw_mask(variance: torch.Tensor, clusters: int = 3) -> torch.Tensor:
    """C x C variance of covariance -> C x C mask of the entries outside the lowest of `clusters` 1-D k-means clusters
    (CovMatrix_ISW.set_mask_matrix, one trial).

    As official, all C^2 values are clustered and the k = C^2 - |cluster 0| largest are kept; the diagonal and lower
    triangle of a variance from CovarianceVariance are 0 and so fall in cluster 0. Exact 1-D k-means never splits
    equal values between clusters (when there are at least `clusters` distinct values), so the k largest are
    well defined; where they are not, ties go to the lower flat index (official torch.topk leaves them unspecified).
    """
    if variance.dim() != 2 or variance.shape[0] != variance.shape[1]:
        raise ValueError(f"isw_mask needs a square C x C variance map, got shape {tuple(variance.shape)}")
    if not isinstance(clusters, int) or clusters < 1:
        raise ValueError(f"clusters must be a positive int (RobustNet's ISW uses 3), got {clusters!r}")
    values = variance.detach().flatten()
    if not torch.isfinite(values).all():
        raise ValueError("the variance map has NaN or inf entries; check the features of the selection pass")
    try:
        import kmeans1d
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ISW's mask selection needs the kmeans1d package (pip install kmeans1d)") from e
    labels, _ = kmeans1d.cluster(values.tolist(), clusters)
    keep = values.numel() - labels.count(0)
    largest = torch.sort(values, descending=True, stable=True).indices[:keep]
    mask = torch.zeros(values.numel(), dtype=torch.bool, device=variance.device)
    mask[largest] = True
    return mask.view_as(variance)


class CovarianceVariance:
    """One ISW selection trial: the variance, over each (image, photometric twin) pair, of their strict-upper
    covariance entries, averaged over the pairs seen (CovMatrix_ISW.set_variance_of_covariance / set_mask_matrix;
    the official pass feeds one pair per call, so torch.var over its batch of 2 is the pair's unbiased variance)."""

    def __init__(self, channels: int):
        self.channels = channels
        self.upper = strict_upper(channels)
        self.images = 0
        self._total: torch.Tensor | None = None

    def update(self, features: torch.Tensor, twin_features: torch.Tensor) -> None:
        if features.shape != twin_features.shape:
            raise ValueError(f"features {tuple(features.shape)} and twin_features {tuple(twin_features.shape)} "
                             "must have the same shape: image i of one is paired with image i of the other")
        if features.dim() != 4 or features.shape[1] != self.channels:
            raise ValueError(f"features must be B x {self.channels} x H x W, got shape {tuple(features.shape)}")
        with torch.no_grad():
            upper = self.upper.to(features.device)
            cov = covariance(features) * upper
            twin_cov = covariance(twin_features) * upper
            for i in range(features.shape[0]):  # one pair at a time, summed in the official order
                pair_variance = torch.var(torch.stack((twin_cov[i], cov[i])), dim=0)
                self._total = pair_variance if self._total is None else self._total + pair_variance
                self.images += 1

    def variance(self) -> torch.Tensor:
        if self._total is None:
            raise ValueError("CovarianceVariance has seen no image pair; call update(features, twin_features) first")
        return self._total / self.images


class InstanceWhitening(nn.Module):
    """InstanceNorm2d without affine whose training output feeds the whitening loss (RobustNet's InstanceWhitening).

    The mask of the penalised covariance entries is a persistent buffer, so a resumed run keeps ISW's selection.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.instance_standardization = nn.InstanceNorm2d(channels, affine=False)
        self.register_buffer("mask", strict_upper(channels))
        self.register_buffer("mask_selected", torch.tensor(False))
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.instance_standardization(x)
        self.output = out if self.training else None
        return out

    def set_mask(self, mask: torch.Tensor) -> None:
        _check_mask(mask, self.mask.shape[0])
        with torch.no_grad():
            self.mask.copy_(mask)
            self.mask_selected.fill_(True)

    def whitening_loss(self, margin: float = 0.0) -> torch.Tensor:
        if self.output is None:
            raise RuntimeError("InstanceWhitening has no training-mode output to whiten; run forward in train() "
                               "mode before whitening_loss")
        return instance_whitening_loss(self.output, self.mask, margin)
