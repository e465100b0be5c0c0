"""Backbones (ResNet / IBN-a / IBN-b ...), heads (fcn, deeplabv3, deeplabv3plus, smp-*) and the factory API.

Importing this package fills the BACKBONES and HEADS registries (and registers the IBN backbones as
segmentation-models-pytorch encoders when smp is installed).
"""
from .registries import BACKBONES, HEADS
from . import resnet as _resnet  # noqa: F401  (registers backbones)
from . import vit as _vit  # noqa: F401  (registers the DINOv2 backbones)
from . import heads as _heads  # noqa: F401  (registers native heads)
from . import mask2former as _mask2former  # noqa: F401  (registers the Mask2Former heads; transformers on first use)
try:  # segmentation-models-pytorch is a dependency, but the native models must not need it
    from . import smp_encoders as _smp_encoders
    from . import smp_heads as _smp_heads  # noqa: F401  (registers smp-* heads)

    _smp_encoders.register_smp_encoders()
except ImportError:  # pragma: no cover
    pass
from .factory import count_parameters, create_backbone, create_model, list_backbones, list_heads

__all__ = ["BACKBONES", "HEADS", "create_backbone", "create_model", "list_backbones", "list_heads", "count_parameters"]
