"""timm-like entry points: create_backbone / create_model / list_* / count_parameters."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .registries import BACKBONES, HEADS


def create_backbone(name: str, pretrained: str | Path | None = None, output_stride: int | None = None) -> nn.Module:
    """Backbone `name` at `output_stride` (32, 16 or 8 for a ResNet; None: the backbone's own); `pretrained` = None |
    'imagenet' (official weights, strict) | 'torchvision' (torchvision's ResNet into a plain or IBN-b ResNet,
    partial: RobustNet's "IBN-Net") | path."""
    backbone = BACKBONES.get(name)(**({} if output_stride is None else {"output_stride": output_stride}))
    if pretrained is not None:
        from .pretrained import load_pretrained  # lazy: keeps building free of hub/network code

        load_pretrained(backbone, name, pretrained)
    return backbone


def create_model(backbone: str, head: str = "fcn", num_classes: int = 19, output_stride: int | None = None,
                 pretrained: str | Path | None = None, aux: bool | str = False) -> nn.Module:
    """Segmentation model; `model(x)` -> {"out": logits at input size[, "aux": ...while training]}.

    `aux`: False, True (FCN aux head on layer3) or "robustnet" (RobustNet's dsn head), as `model.aux`.

    output_stride=None takes the head's default (fcn 8, deeplabv3 8, deeplabv3plus 16; smp-unet/fpn 32), or the
    backbone's own where its pyramid is fixed (a ViT: `fixed_output_stride`), which any head then takes.
    """
    spec = HEADS.get(head)
    fixed = fixed_output_stride(backbone)
    if fixed is not None and output_stride in (None, fixed):
        return spec.build(create_backbone(backbone, pretrained, None), num_classes, aux)
    output_stride = spec.default_output_stride if output_stride is None else output_stride
    if spec.output_strides is not None and output_stride not in spec.output_strides:
        raise ValueError(f"head {head!r} supports output_stride in {spec.output_strides}, got {output_stride}")
    return spec.build(create_backbone(backbone, pretrained, output_stride), num_classes, aux)


def fixed_output_stride(backbone: str) -> int | None:
    """The output stride a backbone always has (a ViT's pyramid: vit.py), or None where the stride is a choice."""
    return getattr(BACKBONES.get(backbone), "fixed_output_stride", None)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONES.names(pattern)


def list_heads(pattern: str = "*") -> list[str]:
    return HEADS.names(pattern)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
