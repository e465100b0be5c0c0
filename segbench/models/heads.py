"""Native segbench heads: `fcn` (the IBN-Net paper's), `deeplabv3`, `deeplabv3plus`, `robustnet-deeplabv3plus`
(RobustNet's exact network), plus the aux heads.

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


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> list[nn.Module]:
    """Bias-free conv ("same" padding) -> BN -> ReLU."""
    return [nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


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
    final2), but not the same network; RobustNetDeepLabV3PlusHead (`robustnet-deeplabv3plus`) is. Where it differs:
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


def robustnet_init(module: nn.Module) -> None:
    """RobustNet's `network/mynn.py` initialize_weights: Kaiming-normal convs (fan-in, ReLU gain) with zero bias,
    BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class RobustNetASPP(nn.Module):
    """RobustNet's `_AtrousSpatialPyramidPoolingModule` (shachoi/RobustNet `network/deepv3.py`): image pooling, a 1x1
    and three atrous 3x3 branches (6/12/18 at OS16, scaled with the stride), each conv (no bias) -> BN -> ReLU with
    256 channels, concatenated in that order to 1280 channels with no projection (the decoder's bot_aspp is it)."""

    def __init__(self, in_channels: int, output_stride: int, channels: int = ASPP_CHANNELS):
        super().__init__()
        self.features = nn.ModuleList([nn.Sequential(*conv_bn_relu(in_channels, channels, kernel=1))] + [
            nn.Sequential(*conv_bn_relu(in_channels, channels, dilation=r)) for r in aspp_rates(output_stride)])
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(*conv_bn_relu(in_channels, channels, kernel=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # RobustNet upsamples the 1x1 pooled map with align_corners=True: every pixel takes its one value
        pooled = self.img_conv(self.img_pooling(x)).expand(-1, -1, *x.shape[-2:])
        return torch.cat([pooled] + [branch(x) for branch in self.features], dim=1)


class RobustNetDeepLabV3PlusHead(nn.Module):
    """RobustNet's DeepV3Plus decoder (shachoi/RobustNet `network/deepv3.py`, DeepR50V3PlusD), module for module and
    under its names: aspp (RobustNetASPP), bot_aspp (1x1 1280 -> 256, BN, ReLU; no dropout), bot_fine (1x1 layer1 ->
    48, BN, ReLU), final1 (two 3x3 conv-BN-ReLU, 304 -> 256 -> 256), final2 (1x1 with bias to the classes);
    `initialize_weights` on all of them; bilinear upsampling with align_corners=True (`mynn.Upsample`), here and, through
    `align_corners`, in the Segmenter's upsampling to the input. Its builder also dilates the backbone as RobustNet's
    variants do (`robustnet_dilation`)."""

    align_corners = True

    def __init__(self, in_channels: Sequence[int], num_classes: int, output_stride: int):
        super().__init__()
        self.aspp = RobustNetASPP(in_channels[3], output_stride)
        self.bot_aspp = nn.Sequential(*conv_bn_relu(5 * ASPP_CHANNELS, ASPP_CHANNELS, kernel=1))
        self.bot_fine = nn.Sequential(*conv_bn_relu(in_channels[0], LOW_LEVEL_CHANNELS, kernel=1))
        self.final1 = nn.Sequential(*conv_bn_relu(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, ASPP_CHANNELS),
                                    *conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS))
        self.final2 = nn.Sequential(nn.Conv2d(ASPP_CHANNELS, num_classes, 1, bias=True))
        robustnet_init(self)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        low = feats[0]
        up = upsample_to(self.bot_aspp(self.aspp(feats[3])), low.shape[-2:], align_corners=True)
        return self.final2(self.final1(torch.cat([self.bot_fine(low), up], dim=1)))


def robustnet_dilation(backbone: nn.Module) -> None:
    """RobustNet's variants D16 and D (`network/deepv3.py`): every 3x3 conv (`conv2`) of a stage that traded its stride
    for dilation takes the stage's dilation, the first block's too; torchvision's rule, which segbench's ResNet follows,
    leaves that first block at the previous dilation (layer4.0.conv2 at 1 under OS16). Parameters are unchanged."""
    from .resnet import Bottleneck

    for name in ("layer3", "layer4"):
        blocks = list(getattr(backbone, name))
        if not all(isinstance(block, Bottleneck) for block in blocks):
            raise ValueError(f"robustnet-deeplabv3plus dilates bottleneck ResNets as RobustNet's DeepR50/R101V3PlusD "
                             f"do; {type(backbone).__name__} has {type(blocks[0]).__name__} blocks: use a "
                             "ResNet-50/101 (or an IBN / SE / ResNeXt variant of one), or the deeplabv3plus head")
        dilation = blocks[-1].conv2.dilation
        for block in blocks:
            block.conv2.dilation = block.conv2.padding = dilation


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
        robustnet_init(self)

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


class LinearHead(nn.Module):
    """DINOv2's linear segmentation probe (facebookresearch/dinov2 `dinov2/eval/segmentation/models/decode_heads/
    linear_head.py` BNHead with mmseg's `resize_concat` input transform and no dropout): every level resized
    bilinearly to the finest one's size and concatenated, one BatchNorm, one 1x1 convolution. The head that lets a
    frozen or adapted ViT run end to end without a mask-classification head."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, output_stride: int | None = None):
        super().__init__()
        total = sum(in_channels)
        self.bn = nn.BatchNorm2d(total)
        self.conv_seg = nn.Conv2d(total, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        return self.conv_seg(self.bn(torch.cat([upsample_to(f, size) for f in feats], 1)))


def _native(head_cls):
    def build(backbone: nn.Module, num_classes: int, aux: bool | str) -> Segmenter:
        if head_cls is FCNHead:
            head = FCNHead(backbone.out_channels[3], num_classes)
        else:
            head = head_cls(backbone.out_channels, num_classes, backbone.output_stride)
        if head_cls is RobustNetDeepLabV3PlusHead:
            robustnet_dilation(backbone)
        return Segmenter(backbone, head, aux_head(backbone.out_channels[2], num_classes, aux),
                         size_divisor=getattr(backbone, "size_divisor", 1))

    return build


HEADS.add("fcn", HeadSpec(_native(FCNHead), 8, (8, 16, 32),
                          "IBN-Net paper: dilated backbone, PSPNet head without pyramid pooling, x8 bilinear"))
HEADS.add("deeplabv3", HeadSpec(_native(DeepLabV3Head), 8, (8, 16, 32), "ASPP on layer4"))
HEADS.add("deeplabv3plus", HeadSpec(_native(DeepLabV3PlusHead), 16, (8, 16, 32),
                                    "ASPP rates 6/12/18 at OS16 + 48-channel layer1 skip (torchvision's ASPP "
                                    "and dilation; RobustNet's exact network is robustnet-deeplabv3plus)"))
HEADS.add("linear", HeadSpec(_native(LinearHead), None, None,
                             "DINOv2's linear probe: the levels upsampled and concatenated, BatchNorm, 1x1 conv; "
                             "at the backbone's own output stride"))
HEADS.add("robustnet-deeplabv3plus", HeadSpec(_native(RobustNetDeepLabV3PlusHead), 16, (8, 16, 32),
                                              "RobustNet's DeepV3Plus exactly: its ASPP, decoder, init, "
                                              "align_corners=True and dilation of every block"))
