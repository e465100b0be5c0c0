"""Cityscapes (gtFine): nested city folders; labels from `*_gtFine_labelIds.png`, or `*_labelTrainIds.png` when made.

Also home of `CityscapesFormatLabels`, the one decoder of label files in the cityscapesScripts format, which ACDC
publishes too.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ...labels import CITYSCAPES_LUT
from ..base import SegmentationDataset, apply_lut, known_mask
from ..pairing import pair_by_suffix, require_dir
from ..registry import register_dataset
from ..tables import CITYSCAPES_KNOWN, TRAINID_KNOWN, TRAINID_LUT

TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
IDS_SUFFIX = "_gtFine_labelIds.png"


class CityscapesFormatLabels(SegmentationDataset):
    """Labels as cityscapesScripts writes them: `*_labelTrainIds.png` holds trainIds, `*_labelIds.png` Cityscapes label
    ids. A copy may hold either, so each file is decoded by its name."""

    #: file-name ending of the trainId files; any other label file holds label ids
    trainids_suffix: ClassVar[str] = ""

    def label_table(self, path: Path) -> tuple[np.ndarray, Sequence[int]]:
        """(raw value -> trainId lookup table, raw values it knows) for this label file."""
        if path.name.endswith(self.trainids_suffix):
            return TRAINID_LUT, TRAINID_KNOWN
        return CITYSCAPES_LUT, CITYSCAPES_KNOWN

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self.label_table(path)[0])

    def known_values(self, path: Path) -> np.ndarray:
        return known_mask(self.label_table(path)[1])

    def label_table_key(self) -> str:
        return repr((self.trainids_suffix, TRAINID_KNOWN, CITYSCAPES_KNOWN))


@register_dataset("cityscapes")
class Cityscapes(CityscapesFormatLabels):
    """Works from the official download alone; uses the trainId files of cityscapesScripts when present (same result)."""

    default_dir = "cityscapes"
    layout = (
        "  leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png\n"
        "  gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png   (labelTrainIds.png used instead when present)"
    )
    splits = ("train", "val")
    trainids_suffix = TRAINIDS_SUFFIX

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = require_dir(self, self.root / "leftImg8bit" / split, "image")
        labels = require_dir(self, self.root / "gtFine" / split, "label")
        return pair_by_suffix(images, "_leftImg8bit.png", labels, (TRAINIDS_SUFFIX, IDS_SUFFIX), self.skipped)
