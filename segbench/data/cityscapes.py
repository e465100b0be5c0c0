"""Cityscapes (gtFine): nested city folders; labels from `*_gtFine_labelIds.png`, or `*_labelTrainIds.png` when made."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DATASETS, SegmentationDataset, apply_lut
from .pairing import pair_by_suffix, require_dir
from .tables import CITYSCAPES_KNOWN, CITYSCAPES_LUT, TRAINID_KNOWN, TRAINID_LUT

TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
IDS_SUFFIX = "_gtFine_labelIds.png"


def known_table(values) -> np.ndarray:
    known = np.zeros(256, dtype=bool)
    known[list(values)] = True
    return known


@DATASETS.register("cityscapes")
class Cityscapes(SegmentationDataset):
    """Works from the official download alone; uses the trainId files of cityscapesScripts when present (same result)."""

    default_dir = "cityscapes"
    layout = (
        "  leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png\n"
        "  gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png   (labelTrainIds.png used instead when present)"
    )
    splits = ("train", "val")

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = require_dir(self, self.root / "leftImg8bit" / split, "image")
        labels = require_dir(self, self.root / "gtFine" / split, "label")
        return pair_by_suffix(images, "_leftImg8bit.png", labels, (TRAINIDS_SUFFIX, IDS_SUFFIX), self.skipped)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, TRAINID_LUT if path.name.endswith(TRAINIDS_SUFFIX) else CITYSCAPES_LUT)

    def known_values(self, path: Path) -> np.ndarray:
        return known_table(TRAINID_KNOWN if path.name.endswith(TRAINIDS_SUFFIX) else CITYSCAPES_KNOWN)
