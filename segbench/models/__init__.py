"""Backbones (ResNet / IBN-a / IBN-b ...), heads (fcn, deeplabv3, deeplabv3plus, smp-*) and the factory API.

Importing this package fills the BACKBONES and HEADS registries (and registers the IBN backbones as
segmentation-models-pytorch encoders when smp is installed).
"""
from segbench.models.registries import BACKBONES, HEADS
from segbench.models import resnet as _resnet  # noqa: F401  (registers backbones)
from segbench.models import heads as _heads  # noqa: F401  (registers native heads)
from segbench.models.factory import count_parameters, create_backbone, create_model, list_backbones, list_heads

__all__ = ["BACKBONES", "HEADS", "create_backbone", "create_model", "list_backbones", "list_heads", "count_parameters"]
