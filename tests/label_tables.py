"""Raw label id -> trainId tables typed in from the primary sources, for the tests only.

They repeat the adapters' tables (segbench/data/tables.py, data/adapters/*.py) on purpose: the miniature trees are written, and the adapters checked, against these
copies, so a wrong entry in the package cannot round-trip unnoticed. Any raw id absent from a table is ignored (255).
"""
from __future__ import annotations

IGNORE = 255

#: cityscapesScripts `helpers/labels.py`: `labels` list, columns id and trainId (ids 0..33; trainId 255 left out)
CITYSCAPES_ID_TO_TRAINID = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
#: every id a Cityscapes labelIds PNG holds (0 unlabeled .. 33 bicycle); 0-6, 9, 10, 14-16, 18, 29, 30 are ignored
CITYSCAPES_RAW_IDS = tuple(range(34))

#: shachoi/RobustNet `datasets/synthia.py`, `trainid_to_trainid` (SYNTHIA-RAND-CITYSCAPES class id in R);
#: 0 void, 13 parking-slot, 14 road-work, 22 lane marking are ignored
SYNTHIA_ID_TO_TRAINID = {
    1: 10,   # sky
    2: 2,    # building
    3: 0,    # road
    4: 1,    # sidewalk
    5: 4,    # fence
    6: 8,    # vegetation
    7: 5,    # pole
    8: 13,   # car
    9: 7,    # traffic sign
    10: 11,  # pedestrian -> person
    11: 18,  # bicycle
    12: 17,  # motorcycle
    15: 6,   # traffic light
    16: 9,   # terrain
    17: 12,  # rider
    18: 14,  # truck
    19: 15,  # bus
    20: 16,  # train
    21: 3,   # wall
}
SYNTHIA_RAW_IDS = tuple(range(23))

#: shachoi/RobustNet `datasets/mapillary.py`, `gen_id_to_ignore` (Mapillary Vistas v1.2 ids; 65 = unlabeled)
MAPILLARY_ID_TO_TRAINID = {
    13: 0, 24: 0, 41: 0,   # road, lane marking - general, manhole -> road
    2: 1, 15: 1,           # curb, sidewalk -> sidewalk
    17: 2,                 # building
    6: 3,                  # wall
    3: 4,                  # fence
    45: 5, 47: 5,          # pole, utility pole -> pole
    48: 6,                 # traffic light
    50: 7,                 # traffic sign
    30: 8,                 # vegetation
    29: 9,                 # terrain
    27: 10,                # sky
    19: 11,                # person
    20: 12, 21: 12, 22: 12,  # bicyclist, motorcyclist, other rider -> rider
    55: 13,                # car
    61: 14,                # truck
    54: 15,                # bus
    58: 16,                # on rails -> train
    57: 17,                # motorcycle
    52: 18,                # bicycle
}
MAPILLARY_RAW_IDS = tuple(range(66))

#: labels stored as trainIds already (Cityscapes labelTrainIds, BDD100K masks, ACDC `_gt_labelTrainIds.png`)
TRAINID_TO_TRAINID = {t: t for t in range(19)}
TRAINID_RAW_IDS = tuple(range(19)) + (IGNORE,)
