"""Mapillary Vistas v1.2: palette labels over 66 classes, mapped to the 19 trainIds with RobustNet's table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...labels import make_lut
from ..base import SegmentationDataset
from ..pairing import pair_by_suffix, require_dir
from ..readers import read_palette_index
from ..registry import register_dataset

#: Mapillary Vistas v1.2 ids (66 classes, 65 = unlabeled) grouped by the trainId they map to, as RobustNet maps them
#: (https://github.com/shachoi/RobustNet, datasets/mapillary.py, `gen_id_to_ignore`)
MAPILLARY_TO_TRAINID_GROUPS = {
    0: (13, 24, 41), 1: (2, 15), 2: (17,), 3: (6,), 4: (3,), 5: (45, 47), 6: (48,), 7: (50,), 8: (30,), 9: (29,),
    10: (27,), 11: (19,), 12: (20, 21, 22), 13: (55,), 14: (61,), 15: (54,), 16: (58,), 17: (57,), 18: (52,),
}
MAPILLARY_ID_TO_TRAINID = {raw: train for train, raws in MAPILLARY_TO_TRAINID_GROUPS.items() for raw in raws}
MAPILLARY_LUT = make_lut(MAPILLARY_ID_TO_TRAINID)
MAPILLARY_KNOWN = tuple(range(66))

SPLIT_DIRS = {"train": "training", "val": "validation"}
#: newer archives nest the v1.2 labels next to v2.0 ones
LABEL_DIRS = ("v1.2/labels", "labels")


@register_dataset("mapillary")
class Mapillary(SegmentationDataset):
    default_dir = "mapillary"
    layout = (
        "  {training,validation}/images/NAME.jpg\n"
        "  {training,validation}/labels/NAME.png        (v1.2 palette PNG; newer archives: .../v1.2/labels/NAME.png)"
    )
    label_lut = MAPILLARY_LUT
    known_label_values = MAPILLARY_KNOWN
    #: the `native` protocol feeds the model the image resized to this height (frames are large and vary in size) and
    #: scores the whole label at its native resolution; RobustNet's and Rein's own ways are the `robustnet` and `rein`
    #: protocols (data/eval_protocols.py)
    eval_height = 1536

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        base = self.root / SPLIT_DIRS[split]
        images = require_dir(self, base / "images", "image")
        labels = next((base / d for d in LABEL_DIRS if (base / d).is_dir()), base / LABEL_DIRS[-1])
        require_dir(self, labels, "label")
        return pair_by_suffix(images, ".jpg", labels, (".png",), self.skipped)

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_palette_index(path)
