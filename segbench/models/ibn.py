"""Instance-Batch Normalization (Pan et al., ECCV 2018).

IN removes per-image appearance (style, colour, contrast) from the first half of the channels; BN keeps the
content-discriminative statistics in the rest. Sub-module names `IN` and `BN` match the official release so its
weights load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """First `int(planes * ratio)` channels: InstanceNorm2d(affine); the rest: BatchNorm2d."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        if not 0 < self.half < planes:
            raise ValueError(f"IBN needs 0 < int(planes * ratio) < planes, got planes={planes}, ratio={ratio}")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)
