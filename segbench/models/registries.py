"""The two model registries; kept apart from the builders so any module can register without import cycles."""
from __future__ import annotations

from ..registry import Registry

#: name -> factory(output_stride: int = 32) -> backbone module (see segbench.models.resnet.ResNet)
BACKBONES = Registry("backbone")
#: name -> HeadSpec (see segbench.models.heads)
HEADS = Registry("head")
