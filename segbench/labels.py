"""The Cityscapes 19-class evaluation space (cityscapesScripts `helpers/labels.py`) that every domain is mapped into."""
from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Cityscapes label id -> trainId for the 19 evaluated classes; every other id (0-6, 9, 10, 14-16, 18, 29, 30, -1) is ignored.
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# SYNTHIA classes absent from its 16-class protocol: terrain, truck, train (SYNTHIA never labels them).
SYNTHIA16_EXCLUDED = (9, 14, 16)
# ... and from the 13-class protocol of SYNTHIA -> Cityscapes adaptation papers: wall, fence and pole as well
# (MaxSquareLoss, https://github.com/ZJULearning/MaxSquareLoss, utils/eval.py: `synthia_set_13`).
SYNTHIA13_EXCLUDED = (*SYNTHIA16_EXCLUDED, 3, 4, 5)

#: `eval.classes` -> the trainIds a study's mIoU averages over, on every target (19: all of Cityscapes')
CLASS_SETS: dict[int, tuple[int, ...]] = {
    19: tuple(range(NUM_CLASSES)),
    16: tuple(c for c in range(NUM_CLASSES) if c not in SYNTHIA16_EXCLUDED),
    13: tuple(c for c in range(NUM_CLASSES) if c not in SYNTHIA13_EXCLUDED),
}


def scored_classes(dataset_classes: Sequence[int] | None, study_classes: int | None) -> tuple[int, ...] | None:
    """The trainIds one target's mIoU averages over: the study's set (`eval.classes`) among the classes the dataset is
    scored on at all (a dataset that never labels a class cannot score it), or the dataset's own set when the study
    names none (the default, which is how segbench scored before `eval.classes` existed)."""
    if study_classes is None:
        return None if dataset_classes is None else tuple(dataset_classes)
    own = set(range(NUM_CLASSES) if dataset_classes is None else dataset_classes)
    return tuple(c for c in CLASS_SETS[study_classes] if c in own)


def make_lut(mapping: dict[int, int], size: int = 256, default: int = IGNORE_INDEX) -> np.ndarray:
    """A uint8 lookup table so that `lut[ids]` maps a whole label image in one vectorised step."""
    lut = np.full(size, default, dtype=np.uint8)
    for src, dst in mapping.items():
        if not 0 <= src < size:
            raise ValueError(f"label id {src} outside the lookup table of size {size}")
        lut[src] = dst
    return lut


CITYSCAPES_LUT = make_lut(CITYSCAPES_ID_TO_TRAINID)


def ids_to_train_ids(ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id image to trainIds (255 = ignore)."""
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"Cityscapes label ids must lie in 0..255, got {ids.min()}..{ids.max()}")
        ids = ids.astype(np.uint8)
    return CITYSCAPES_LUT[ids]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """trainId image -> RGB image in the Cityscapes palette (ignored pixels black)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:NUM_CLASSES] = PALETTE
    return table[train_ids]
