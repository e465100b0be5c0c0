"""ACDC (adverse conditions): one registered name per condition, `acdc-fog` ... `acdc-snow`, and `acdc` for all four.

Its labels follow the Cityscapes format, so they are decoded by `cityscapes.CityscapesFormatLabels`.
"""
from __future__ import annotations

from pathlib import Path

from ..pairing import pair_by_suffix, require_dir
from ..registry import DATASETS
from .cityscapes import CityscapesFormatLabels

CONDITIONS = ("fog", "night", "rain", "snow")
TRAINIDS_SUFFIX = "_gt_labelTrainIds.png"
IDS_SUFFIX = "_gt_labelIds.png"


class ACDC(CityscapesFormatLabels):
    default_dir = "acdc"
    layout = (
        "  rgb_anon/{fog,night,rain,snow}/{train,val}/SEQ/NAME_rgb_anon.png\n"
        "  gt/{fog,night,rain,snow}/{train,val}/SEQ/NAME_gt_labelTrainIds.png   (or NAME_gt_labelIds.png)"
    )
    trainids_suffix = TRAINIDS_SUFFIX
    conditions: tuple[str, ...] = CONDITIONS

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        pairs = []
        for condition in self.conditions:
            images = require_dir(self, self.root / "rgb_anon" / condition / split, "image")
            labels = require_dir(self, self.root / "gt" / condition / split, "label")
            pairs += pair_by_suffix(images, "_rgb_anon.png", labels, (TRAINIDS_SUFFIX, IDS_SUFFIX), self.skipped)
        return pairs


DATASETS.add("acdc", ACDC)
for _condition in CONDITIONS:
    # module-level names, so instances pickle into DataLoader workers under any start method
    _name = f"ACDC{_condition.capitalize()}"
    globals()[_name] = type(_name, (ACDC,), {"conditions": (_condition,), "__module__": __name__})
    DATASETS.add(f"acdc-{_condition}", globals()[_name])
