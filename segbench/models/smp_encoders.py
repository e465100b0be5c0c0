"""segbench backbones as segmentation-models-pytorch (0.6) encoders.

After `import segbench.models`, `smp.Unet(encoder_name="resnet50_ibn_a", encoder_weights=None)` works for every IBN
backbone. Plain `resnet18..101` are already smp encoders (the same torchvision architecture and keys), so smp keeps its
own entries for them. smp's weight download goes through the Hugging Face hub, where the IBN-Net weights are not
published: use `segbench.models.create_model(..., head="smp-unet", pretrained="imagenet")` for pretrained IBN encoders.
"""
from __future__ import annotations

from typing import Sequence

import torch
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn

from .registries import BACKBONES
from .resnet import SPECS

_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class SegbenchEncoder(nn.Module, EncoderMixin):
    """smp encoder view of a segbench ResNet: the same modules under the same names (official state-dict keys),
    forward returning depth+1 maps [input, stem (/2), layer1 (/4), layer2, layer3, layer4]."""

    def __init__(self, backbone: str | nn.Module, depth: int = 5, output_stride: int = 32,
                 out_channels: Sequence[int] | None = None):
        nn.Module.__init__(self)
        if not 1 <= depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {depth}")
        if isinstance(backbone, str):
            backbone = BACKBONES.get(backbone)(output_stride=output_stride)
        for name in _MODULES:
            self.add_module(name, getattr(backbone, name))
        self._depth = depth
        self._in_channels = 3
        self._out_channels = [3, 64, *backbone.out_channels]
        self._output_stride = backbone.output_stride  # dilation is already built, torchvision-style
        if out_channels is not None and list(out_channels) != self._out_channels:
            raise ValueError(f"out_channels {list(out_channels)} != the backbone's {self._out_channels}")

    def get_stages(self) -> dict[int, Sequence[nn.Module]]:
        return {16: [self.layer3], 32: [self.layer4]}

    def make_dilated(self, output_stride: int) -> None:
        """smp calls this after construction; the backbone was built at that stride already (stride -> dilation
        exactly as torchvision does), so only a mismatch is an error."""
        if output_stride != self._output_stride:
            raise ValueError(f"encoder was built at output stride {self._output_stride}, not {output_stride}; "
                             "pass output_stride to the constructor instead")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        if self._depth >= 1:
            x = self.relu(self.bn1(self.conv1(x)))
            features.append(x)
        if self._depth >= 2:
            x = self.layer1(self.maxpool(x))
            features.append(x)
        for layer in (self.layer2, self.layer3, self.layer4)[: max(self._depth - 2, 0)]:
            x = layer(x)
            features.append(x)
        return features

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """Accepts official files as they are: the ImageNet classifier (fc.*) is dropped."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        return super().load_state_dict(state_dict, strict=strict, **kwargs)


def _smp_channels(name: str) -> list[int]:
    """smp's out_channels list; read off the spec table when possible (building 14 networks at import is slow)."""
    spec = SPECS.get(name)
    if spec is not None:
        return [3, 64, *(p * spec["block"].expansion for p in (64, 128, 256, 512))]
    return [3, 64, *BACKBONES.get(name)(output_stride=32).out_channels]


def register_smp_encoders() -> list[str]:
    """Add every segbench backbone that smp lacks to smp's encoder table; returns the names added."""
    from .vit import DINOV2_SPECS  # ViTs have no convolutional stem and stages for smp's decoders

    added = []
    for name in BACKBONES.names():
        if name in DINOV2_SPECS:
            continue
        if name in SMP_ENCODERS and SMP_ENCODERS[name]["encoder"] is not SegbenchEncoder:
            continue  # smp's own resnet18..101: same network, keep smp's entry (and its weights)
        SMP_ENCODERS[name] = {"encoder": SegbenchEncoder, "pretrained_settings": {},
                              "params": {"backbone": name, "out_channels": _smp_channels(name)}}
        added.append(name)
    return added
