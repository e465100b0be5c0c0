"""segbench: cross-domain semantic segmentation benchmark (IBN-Net, ECCV 2018, and the studies that followed)."""
import os as _os

# albumentations otherwise checks PyPI for updates at import time (no network on clusters; slow everywhere).
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
