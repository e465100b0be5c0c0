"""segmentation-models-pytorch decoders as segbench heads (`smp-unet`, `smp-fpn`, `smp-deeplabv3plus`).

smp decoders need inputs divisible by 32 (GTA5's 1914x1052 is not): the wrapper pads bottom/right and crops the logits
back, so they follow the same dict-output contract as the native heads and accept any input size.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import segmentation_models_pytorch as smp
from segmentation_models_pytorch.encoders import encoders as SMP_ENCODERS
from segmentation_models_pytorch.encoders._base import EncoderMixin
from torch import nn

from .heads import aspp_rates, aux_head
from .registries import HEADS
from .segmenter import HeadSpec, Segmenter
from .smp_encoders import SegbenchEncoder

SMP_SIZE_DIVISOR = 32  # Unet/FPN concatenate or add maps from strides 2..32; they must tile exactly


class SmpDecoderHead(nn.Module):
    """smp decoder + segmentation head as one segbench head: encoder features in, low-resolution logits out.

    Wrapped in the native `Segmenter` (with `size_divisor=32`), so padding, cropping and the dict contract are shared.
    """

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.segmentation_head = segmentation_head

    def forward(self, feats):
        return self.segmentation_head(self.decoder(feats))


class _ChannelsOnly(nn.Module, EncoderMixin):
    """What smp builds in place of a second real encoder: decoders read only out_channels from it."""

    def __init__(self, out_channels: Sequence[int], depth: int = 5, output_stride: int = 32):
        nn.Module.__init__(self)
        self._out_channels, self._depth, self._in_channels = list(out_channels), depth, 3
        self._output_stride = output_stride

    def make_dilated(self, output_stride: int) -> None:
        pass


@contextmanager
def _placeholder_encoder(out_channels: Sequence[int]) -> Iterator[str]:
    name = "_segbench_placeholder"
    SMP_ENCODERS[name] = {"encoder": _ChannelsOnly, "pretrained_settings": {},
                          "params": {"out_channels": list(out_channels)}}
    try:
        yield name
    finally:
        del SMP_ENCODERS[name]


def _smp_head(smp_cls, **extra):
    def build(backbone: nn.Module, num_classes: int, aux: bool | str) -> Segmenter:
        encoder = SegbenchEncoder(backbone)
        kwargs = dict(extra)
        if smp_cls is smp.DeepLabV3Plus:
            kwargs.update(encoder_output_stride=encoder.output_stride,
                          decoder_atrous_rates=aspp_rates(encoder.output_stride))
        with _placeholder_encoder(encoder.out_channels) as name:
            model = smp_cls(encoder_name=name, encoder_weights=None, classes=num_classes, **kwargs)
        aux_module = aux_head(backbone.out_channels[2], num_classes, aux, in_index=4)  # feats[4] = layer3
        return Segmenter(encoder, SmpDecoderHead(model.decoder, model.segmentation_head), aux_module,
                         size_divisor=SMP_SIZE_DIVISOR)

    return build


HEADS.add("smp-unet", HeadSpec(_smp_head(smp.Unet), 32, (32,), "smp U-Net decoder (input padded to /32)"))
HEADS.add("smp-fpn", HeadSpec(_smp_head(smp.FPN), 32, (32,), "smp FPN decoder (input padded to /32)"))
HEADS.add("smp-deeplabv3plus", HeadSpec(_smp_head(smp.DeepLabV3Plus), 16, (8, 16),
                                        "smp DeepLabV3+ (separable ASPP, rates 6/12/18 at OS16; padded to /32)"))
