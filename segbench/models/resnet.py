"""ResNet / ResNeXt / SE-ResNet backbones with optional IBN-a / IBN-b, as feature extractors.

Module names follow torchvision's ResNet and the official IBN-Net release (`conv1, bn1, relu, maxpool, layer1..layer4`;
blocks `conv1, bn1, conv2, bn2, [conv3, bn3], [se], downsample`; IBN sub-modules `IN`/`BN`; IBN-b post-add `IN`), so
torchvision or official ImageNet state dicts load with strict key matching once `fc.*` is dropped.
Output stride 16/8 replaces strides by dilation (torchvision's `replace_stride_with_dilation`), renaming nothing.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .ibn import IBN
from .registries import BACKBONES

# which of layer2..layer4 trade their stride for dilation, per output stride
DILATE_FOR_OUTPUT_STRIDE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


def _norm1(planes: int, ibn: str | None) -> nn.Module:
    """The norm after a block's first conv: IBN for IBN-a, BN otherwise."""
    return IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)


def _post_add_in(channels: int, ibn: str | None) -> nn.Module | None:
    """IBN-b: InstanceNorm after the residual addition (only blocks built with ibn='b' get one)."""
    return nn.InstanceNorm2d(channels, affine=True) if ibn == "b" else None


class SELayer(nn.Module):
    """Squeeze-and-excitation gate; `fc.0`/`fc.2` bias-free Linears as in the official SE-ResNet-IBN release."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = int(channels / reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(n, c)).view(n, c, 1, 1)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Unlike torchvision, dilation > 1 is allowed so ResNet-18/34 can run at OS 8/16."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 ibn: str | None = None, dilation: int = 1, groups: int = 1, width_per_group: int = 64,
                 se_reduction: int | None = None):
        super().__init__()
        if groups != 1 or width_per_group != 64 or se_reduction:
            raise ValueError("BasicBlock supports neither groups, width_per_group nor SE")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = _norm1(planes, ibn)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.IN = _post_add_in(planes, ibn)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation, groups) -> 1x1; optional SE gate before the residual add (SE-ResNet)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 ibn: str | None = None, dilation: int = 1, groups: int = 1, width_per_group: int = 64,
                 se_reduction: int | None = None):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # = official ResNeXt D*C
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = _norm1(width, ibn)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.se = SELayer(planes * self.expansion, se_reduction) if se_reduction else None
        self.IN = _post_add_in(planes * self.expansion, ibn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        out = out + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


def _block_ibn(stage_ibn: str | None, index: int, blocks: int) -> str | None:
    """Official placement (XingangPan/IBN-Net `ibnnet/resnet_ibn.py` ResNet_IBN._make_layer): IBN-a in every block of
    the stage; IBN-b only in the stage's last block, and never in its first (a one-block stage gets none)."""
    if stage_ibn == "b":
        return "b" if 0 < index == blocks - 1 else None
    return stage_ibn


class ResNet(nn.Module):
    """Feature-extractor ResNet: `forward(x)` -> [layer1, layer2, layer3, layer4] outputs.

    ibn_cfg gives the IBN type per stage: IBN-a = ('a','a','a',None), IBN-b = ('b','b',None,None); a 'b' in the
    first stage also turns the stem's bn1 into InstanceNorm2d(64, affine=True).
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], ibn_cfg: Sequence[str | None] = (None,) * 4,
                 output_stride: int = 32, groups: int = 1, width_per_group: int = 64, se_reduction: int | None = None):
        super().__init__()
        if output_stride not in DILATE_FOR_OUTPUT_STRIDE:
            raise ValueError(f"output_stride must be one of {sorted(DILATE_FOR_OUTPUT_STRIDE)}, got {output_stride}")
        self._feature_stride = output_stride
        self.ibn_cfg = tuple(ibn_cfg)
        self._block_kwargs = dict(groups=groups, width_per_group=width_per_group, se_reduction=se_reduction)
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.InstanceNorm2d(64, affine=True) if ibn_cfg[0] == "b" else nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = DILATE_FOR_OUTPUT_STRIDE[output_stride]
        self.layer1 = self._make_layer(block, 64, layers[0], 1, ibn_cfg[0], False)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, ibn_cfg[1], dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, ibn_cfg[2], dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, ibn_cfg[3], dilate[2])
        self._feature_channels = tuple(p * block.expansion for p in (64, 128, 256, 512))
        del self.inplanes, self.dilation  # construction state only
        self._init_weights()

    # properties, not attributes, so the smp encoder subclass can swap in smp's own meaning of these names
    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        """Channels of [layer1, layer2, layer3, layer4]."""
        return self._feature_channels

    @property
    def output_stride(self) -> int:
        """Input size / layer4 size."""
        return self._feature_stride

    def _make_layer(self, block, planes: int, blocks: int, stride: int, ibn: str | None, dilate: bool) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, _block_ibn(ibn, 0, blocks),
                        previous_dilation, **self._block_kwargs)]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, 1, None, _block_ibn(ibn, i, blocks), self.dilation,
                                **self._block_kwargs))
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """Official IBN-Net init: conv ~ N(0, sqrt(2/n)), n = k*k*out_channels; BN and IN weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1-bn1-relu, stride 2 (before max pooling); encoders that need a stride-2 map use it."""
        return self.relu(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.stem(x))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


IBN_A, IBN_B, PLAIN = ("a", "a", "a", None), ("b", "b", None, None), (None,) * 4
_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}

#: backbone name -> ResNet(**kwargs). The single source of truth for BACKBONES and the smp encoders.
SPECS: dict[str, dict] = {}
for _depth, (_block, _layers) in _DEPTHS.items():
    for _suffix, _cfg in (("", PLAIN), ("_ibn_a", IBN_A), ("_ibn_b", IBN_B)):
        SPECS[f"resnet{_depth}{_suffix}"] = dict(block=_block, layers=_layers, ibn_cfg=_cfg)
# the two other official IBN-Net releases: ResNeXt-101 32x4d and SE-ResNet-101 (reduction 16), both IBN-a
SPECS["resnext101_ibn_a"] = dict(block=Bottleneck, layers=(3, 4, 23, 3), ibn_cfg=IBN_A, groups=32, width_per_group=4)
SPECS["se_resnet101_ibn_a"] = dict(block=Bottleneck, layers=(3, 4, 23, 3), ibn_cfg=IBN_A, se_reduction=16)


def _factory(name: str, spec: dict) -> Callable[..., ResNet]:
    def build(output_stride: int = 32) -> ResNet:
        return ResNet(output_stride=output_stride, **spec)

    build.__name__ = name
    build.__doc__ = f"{name} feature extractor (randomly initialised; see segbench.models.pretrained for weights)."
    return build


for _name, _spec in SPECS.items():
    BACKBONES.add(_name, _factory(_name, _spec))
