"""BDD100K semantic segmentation (10k subset): labels are already trainIds. Current and legacy archive layouts."""
from __future__ import annotations

from pathlib import Path

from ..base import SegmentationDataset
from ..pairing import pair_by_suffix, require_dir
from ..registry import register_dataset
from ..tables import TRAINID_KNOWN, TRAINID_LUT

#: (image dir, image suffix, label dir, label suffix) per archive layout, newest first
LAYOUTS = (
    ("images/10k/{split}", ".jpg", "labels/sem_seg/masks/{split}", ".png"),
    ("seg/images/{split}", ".jpg", "seg/labels/{split}", "_train_id.png"),
)


@register_dataset("bdd100k")
class BDD100K(SegmentationDataset):
    default_dir = "bdd100k"
    layout = (
        "  current archive: images/10k/{train,val}/NAME.jpg + labels/sem_seg/masks/{train,val}/NAME.png\n"
        "  legacy archive:  seg/images/{train,val}/NAME.jpg + seg/labels/{train,val}/NAME_train_id.png"
    )
    label_lut = TRAINID_LUT
    known_label_values = TRAINID_KNOWN

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        for image_dir, image_suffix, label_dir, label_suffix in LAYOUTS:
            images = self.root / image_dir.format(split=split)
            if images.is_dir():
                labels = require_dir(self, self.root / label_dir.format(split=split), "label")
                return pair_by_suffix(images, image_suffix, labels, (label_suffix,), self.skipped)
        require_dir(self, self.root / LAYOUTS[0][0].format(split=split), "image")
        return []
