"""SYNTHIA-RAND-CITYSCAPES: 16-bit multi-channel labels with the class id in R, its own id table.

Two registered names share the reader: `synthia` scores the 19 Cityscapes classes, `synthia16` the 16-class protocol
(terrain, truck and train never occur in SYNTHIA). These sets apply to SYNTHIA as a target only; a study scores every
target on SYNTHIA's 16 (or the 13 of adaptation papers) with `eval.classes: 16` (`13`), as experiments/synthia_dg.yaml
does for SYNTHIA -> Cityscapes / BDD100K / Mapillary.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...labels import CLASS_SETS, make_lut
from ..base import SegmentationDataset
from ..pairing import pair_by_suffix, require_dir
from ..readers import read_label_channel
from ..registry import register_dataset
from .splitlists import SPLIT_DIR, read_first_split_list

#: SYNTHIA-RAND-CITYSCAPES class ids (R channel of the 16-bit labels) -> trainIds; 0, 13, 14, 22 are ignored.
#: The table of RobustNet (https://github.com/shachoi/RobustNet, datasets/synthia.py, `trainid_to_trainid`).
SYNTHIA_ID_TO_TRAINID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15,
    20: 16, 12: 17, 11: 18,
}
SYNTHIA_LUT = make_lut(SYNTHIA_ID_TO_TRAINID, size=1 << 16)
SYNTHIA_KNOWN = tuple(range(23))

#: RobustNet's split of the 9400 frames (train 6580, val 2820), shipped in segbench's splits folder (copies of RobustNet's
#: `split_data/synthia_split_{train,val}.txt`); RobustNet's own files under the dataset root are read when those are absent.
ROBUSTNET_SPLITS = {"train": "synthia_robustnet_train.txt", "val": "synthia_robustnet_val.txt"}
UPSTREAM_NAMES = {"train": "split_data/synthia_split_train.txt", "val": "split_data/synthia_split_val.txt"}
FRAME_DIGITS = 7


@register_dataset("synthia")
class Synthia(SegmentationDataset):
    default_dir = "synthia"
    layout = (
        "  RGB/0000000.png ... 0009399.png        (1280x760 RGB)\n"
        "  GT/LABELS/0000000.png ...              (16-bit multi-channel PNG, class id in the R channel)"
    )
    splits = ("all", *ROBUSTNET_SPLITS)
    label_lut = SYNTHIA_LUT
    known_label_values = SYNTHIA_KNOWN

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = require_dir(self, self.root / "RGB", "image")
        labels = require_dir(self, self.root / "GT" / "LABELS", "label")
        only = None
        if split in ROBUSTNET_SPLITS:
            candidates = [SPLIT_DIR / ROBUSTNET_SPLITS[split], self.root / UPSTREAM_NAMES[split]]
            only = read_first_split_list(candidates, FRAME_DIGITS)
        return pair_by_suffix(images, ".png", labels, (".png",), self.skipped, only=only)

    def read_raw_label(self, path: Path) -> np.ndarray:
        # PIL cannot read 16-bit multi-channel PNGs correctly; OpenCV returns BGR, so R is the last channel.
        return read_label_channel(path, "r")


@register_dataset("synthia16")
class Synthia16(Synthia):
    """Same frames and labels; scored on 16 classes."""

    eval_classes = CLASS_SETS[16]
