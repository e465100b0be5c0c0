"""Mapillary Vistas v1.2: palette labels over 66 classes, mapped to the 19 trainIds as RobustNet does."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DATASETS, SegmentationDataset
from .pairing import pair_by_suffix, require_dir
from .readers import read_palette_index
from .tables import MAPILLARY_KNOWN, MAPILLARY_LUT

SPLIT_DIRS = {"train": "training", "val": "validation"}
#: newer archives nest the v1.2 labels next to v2.0 ones
LABEL_DIRS = ("v1.2/labels", "labels")


@DATASETS.register("mapillary")
class Mapillary(SegmentationDataset):
    default_dir = "mapillary"
    layout = (
        "  {training,validation}/images/NAME.jpg\n"
        "  {training,validation}/labels/NAME.png        (v1.2 palette PNG; newer archives: .../v1.2/labels/NAME.png)"
    )
    label_lut = MAPILLARY_LUT
    known_label_values = MAPILLARY_KNOWN
    #: RobustNet evaluates Mapillary resized to this height (frames are large and vary in size)
    eval_height = 1536

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        base = self.root / SPLIT_DIRS[split]
        images = require_dir(self, base / "images", "image")
        labels = next((base / d for d in LABEL_DIRS if (base / d).is_dir()), base / LABEL_DIRS[-1])
        require_dir(self, labels, "label")
        return pair_by_suffix(images, ".jpg", labels, (".png",), self.skipped)

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_palette_index(path)
