"""Native segbench heads: `fcn` (the IBN-Net paper's), `deeplabv3`, `deeplabv3plus`, plus the aux heads.

Every head maps the backbone's feature list [layer1, layer2, layer3, layer4] to low-resolution logits; the Segmenter
upsamples. All of them accept any input size, so no padding is needed.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from .registries import HEADS
from .segmenter import HeadSpec, Segmenter, upsample_to

ASPP_RATES_AT_OS16 = (6, 12, 18)  # DeepLab's rates; they scale inversely with the output stride
ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48  # DeepLabV3+ reduces the layer1 skip to 48 channels


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """(6, 12, 18) at OS16, (12, 24, 36) at OS8, (3, 6, 9) at OS32: the same receptive field in pixels."""
    return tuple(r * 16 // output_stride for r in ASPP_RATES_AT_OS16)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FCNHead(nn.Sequential):
    """PSPNet's final block without the pyramid pooling: 3x3 conv -> BN -> ReLU -> Dropout(0.1) -> 1x1 conv.

    Hidden width = in_channels // 4 (torchvision's FCNHead): 512 on Bottleneck nets' layer4 (2048), which is PSPNet's
    512; 128 on ResNet-18/34 (512). `in_index` picks the stage (3 = layer4 for the main head, 2 = layer3 for aux).
    """

    def __init__(self, in_channels: int, num_classes: int, in_index: int = 3, channels: int | None = None,
                 dropout: float = 0.1):
        channels = channels or in_channels // 4
        super().__init__(*conv_bn_relu(in_channels, channels), nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))
        self.in_index = in_index

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(feats[self.in_index])


class DeepLabV3Head(nn.Module):
    """ASPP on layer4 (torchvision's ASPP: 1x1 + three atrous 3x3 + image pooling, 256 ch) -> 3x3 conv -> classifier."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, output_stride: int):
        super().__init__()
        self.aspp = ASPP(in_channels[3], list(aspp_rates(output_stride)), ASPP_CHANNELS)
        self.fuse = nn.Sequential(*conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS))
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.fuse(self.aspp(feats[3])))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ decoder: ASPP(layer4) upsampled to layer1's size, concatenated with a 48-channel 1x1 projection of
    layer1, two 3x3 conv-BN-ReLU (256), 1x1 classifier. Output at stride 4.

    The layout of RobustNet's DeepV3Plus (shachoi/RobustNet `network/deepv3.py`: aspp, bot_aspp, bot_fine, final1,
    final2), which the robustnet_* experiments compare with, but not the same network. Where it differs:
    - the ASPP is torchvision's, whose 1x1 projection ends in Dropout(0.5); RobustNet's bot_aspp has no dropout;
    - PyTorch's default init; RobustNet runs `network/mynn.py` initialize_weights (Kaiming-normal, zero bias) on
      aspp, bot_*, final* (RobustNetAuxHead does follow it);
    - bilinear upsampling here and in the Segmenter uses align_corners=False; RobustNet's `mynn.Upsample` uses
      align_corners=True;
    - the backbone dilates as torchvision does, the first block of a dilated stage at the previous dilation
      (layer4.0.conv2 dilation 1 at OS16); RobustNet's variant D16 gives every layer4 conv2 dilation 2 (variant D,
      OS8: every layer3 conv2 2, every layer4 conv2 4).
    The ASPP branch and skip concatenation orders differ too, which only permutes weights."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, output_stride: int):
        super().__init__()
        self.aspp = ASPP(in_channels[3], list(aspp_rates(output_stride)), ASPP_CHANNELS)
        self.low_level = nn.Sequential(*conv_bn_relu(in_channels[0], LOW_LEVEL_CHANNELS, kernel=1))
        self.fuse = nn.Sequential(*conv_bn_relu(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, ASPP_CHANNELS),
                                  *conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS))
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        low = self.low_level(feats[0])
        x = upsample_to(self.aspp(feats[3]), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


class RobustNetAuxHead(nn.Sequential):
    """RobustNet's `dsn` head (shachoi/RobustNet `network/deepv3.py`): 3x3 conv (with bias) to 512 channels, BN,
    ReLU, Dropout2d(0.1), 1x1 conv (with bias) to the classes; initialised by its `initialize_weights` (Kaiming-normal
    convs with zero bias, BN weight 1 and bias 0). 512 is fixed, whatever the input width (1024 on ResNet-50's layer3).

    `scored_at_own_resolution`: the Segmenter returns these logits as they are, and the loss scores them against
    the label downsampled (nearest) to their size (engine/train.py segmentation_loss), as RobustNet's forward does.
    """

    scored_at_own_resolution = True
    HIDDEN = 512

    def __init__(self, in_channels: int, num_classes: int, in_index: int = 2):
        super().__init__(nn.Conv2d(in_channels, self.HIDDEN, 3, padding=1, bias=True), nn.BatchNorm2d(self.HIDDEN),
                         nn.ReLU(inplace=True), nn.Dropout2d(0.1), nn.Conv2d(self.HIDDEN, num_classes, 1, bias=True))
        self.in_index = in_index
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(feats[self.in_index])


def aux_head(in_channels: int, num_classes: int, kind: bool | str, in_index: int = 2) -> nn.Module | None:
    """The training-time auxiliary head on layer3 (`feats[in_index]`) that `model.aux` names: False none, True the
    torchvision-style FCNHead (hidden in/4, logits upsampled to the input for the loss), "robustnet"
    RobustNetAuxHead."""
    if kind is False or kind is None:
        return None
    if kind is True:
        return FCNHead(in_channels, num_classes, in_index=in_index)
    if kind == "robustnet":
        return RobustNetAuxHead(in_channels, num_classes, in_index=in_index)
    raise ValueError(f"aux must be false, true or 'robustnet', got {kind!r}")


def _native(head_cls):
    def build(backbone: nn.Module, num_classes: int, aux: bool | str) -> Segmenter:
        if head_cls is FCNHead:
            head = FCNHead(backbone.out_channels[3], num_classes)
        else:
            head = head_cls(backbone.out_channels, num_classes, backbone.output_stride)
        return Segmenter(backbone, head, aux_head(backbone.out_channels[2], num_classes, aux))

    return build


HEADS.add("fcn", HeadSpec(_native(FCNHead), 8, (8, 16, 32),
                          "IBN-Net paper: dilated backbone, PSPNet head without pyramid pooling, x8 bilinear"))
HEADS.add("deeplabv3", HeadSpec(_native(DeepLabV3Head), 8, (8, 16, 32), "ASPP on layer4"))
HEADS.add("deeplabv3plus", HeadSpec(_native(DeepLabV3PlusHead), 16, (8, 16, 32),
                                    "ASPP rates 6/12/18 at OS16 + 48-channel layer1 skip (RobustNet's layout, "
                                    "not its exact network)"))
