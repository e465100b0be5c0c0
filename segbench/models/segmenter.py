"""Backbone + head glue: the dict-output contract shared by every segbench model.

`model(x)` -> {"out": N x C x H x W logits at the input size} plus "aux" while training with an aux head: at the
input size too, or at the aux head's own resolution for a head with `scored_at_own_resolution` (RobustNet's).
Heads take the backbone's list of stage features, so any head plugs onto any backbone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of logits (align_corners=False, as torchvision's segmentation models; a head that follows
    RobustNet's `mynn.Upsample` asks for True)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right so H and W divide `multiple` (zero = the mean after normalisation); crop back later."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class Segmenter(nn.Module):
    """`backbone` (list of 4 stage maps) -> `head` logits at low resolution -> bilinear upsampling to input size
    (with the head's `align_corners` when it has one).

    The attribute names fix the checkpoint key prefixes: `backbone.*`, `head.*`, `aux_head.*`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None, size_divisor: int = 1):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.size_divisor = size_divisor

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, self.size_divisor)
        feats = self.backbone(padded)
        if getattr(self.head, "mask_classification", False):
            return self._mask_classification(feats, padded.shape[-2:], h, w)
        align_corners = getattr(self.head, "align_corners", False)
        out = {"out": upsample_to(self.head(feats), padded.shape[-2:], align_corners)[..., :h, :w]}
        if self.aux_head is not None and self.training:
            aux = self.aux_head(feats)
            if getattr(self.aux_head, "scored_at_own_resolution", False):
                # keep the cells that cover the unpadded input (all of them unless size_divisor padded it)
                ah, aw = aux.shape[-2:]
                out["aux"] = aux[..., :math.ceil(h * ah / padded.shape[-2]), :math.ceil(w * aw / padded.shape[-1])]
            else:
                out["aux"] = upsample_to(aux, padded.shape[-2:])[..., :h, :w]
        return out


    def _mask_classification(self, feats, size, h: int, w: int) -> dict:
        """A mask-classification head (models/mask2former.py): its per-layer class and mask logits while training
        (its own loss reads them), the semantic scores at the input size otherwise; its queries from the model's
        method (Rein's tokens) when it takes them."""
        queries = self.queries() if getattr(self.head, "takes_queries", False) else None
        out = self.head(feats, out_size=size, queries=queries)
        return out if self.training else {"out": out[..., :h, :w]}

    def queries(self) -> torch.Tensor:
        """The queries a method's module offers the head (Rein's `queries()`)."""
        for module in getattr(self, "method_modules", {}).values():
            if hasattr(module, "queries"):
                return module.queries()
        raise ValueError("this head takes its queries from a method's tokens (rein-mask2former: --methods rein); "
                         "no method of this model offers them")


@dataclass(frozen=True)
class HeadSpec:
    """What HEADS holds: `build(backbone, num_classes, aux) -> model` plus the output strides it supports; `aux` is
    the `model.aux` kind (False, True or "robustnet": heads.aux_head)."""

    build: Callable[[nn.Module, int, "bool | str"], nn.Module]
    default_output_stride: int | None  # None: the backbone's own (a ViT's fixed pyramid, a ResNet's 32)
    output_strides: tuple[int, ...] | None  # None: any the backbone offers
    description: str
