"""Raw label id -> trainId tables of every real dataset (FACTS §1-2), named once, next to nothing else.

Each table comes with the set of raw values it *knows* (mapped or deliberately ignored): `segbench data check` reports
any other value, because training silently maps it to the ignore index.
"""
from __future__ import annotations

from ..labels import CITYSCAPES_ID_TO_TRAINID, IGNORE_INDEX, NUM_CLASSES, make_lut

#: labels already stored as trainIds (Cityscapes labelTrainIds, BDD100K, ACDC): 0..18 kept, everything else ignored
TRAINID_LUT = make_lut({i: i for i in range(NUM_CLASSES)})
TRAINID_KNOWN = tuple(range(NUM_CLASSES)) + (IGNORE_INDEX,)

#: Cityscapes label ids 0..33; the license plate's -1 is stored as 255 in 8-bit files
CITYSCAPES_LUT = make_lut(CITYSCAPES_ID_TO_TRAINID)
CITYSCAPES_KNOWN = tuple(range(34)) + (255,)

#: SYNTHIA-RAND-CITYSCAPES class ids (R channel of the 16-bit labels); 0, 13, 14, 22 are ignored
SYNTHIA_ID_TO_TRAINID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15,
    20: 16, 12: 17, 11: 18,
}
SYNTHIA_LUT = make_lut(SYNTHIA_ID_TO_TRAINID, size=1 << 16)
SYNTHIA_KNOWN = tuple(range(23))

#: Mapillary Vistas v1.2 (66 classes, 65 = unlabeled) -> trainIds, as in RobustNet
MAPILLARY_TO_TRAINID_GROUPS = {
    0: (13, 24, 41), 1: (2, 15), 2: (17,), 3: (6,), 4: (3,), 5: (45, 47), 6: (48,), 7: (50,), 8: (30,), 9: (29,),
    10: (27,), 11: (19,), 12: (20, 21, 22), 13: (55,), 14: (61,), 15: (54,), 16: (58,), 17: (57,), 18: (52,),
}
MAPILLARY_ID_TO_TRAINID = {raw: train for train, raws in MAPILLARY_TO_TRAINID_GROUPS.items() for raw in raws}
MAPILLARY_LUT = make_lut(MAPILLARY_ID_TO_TRAINID)
MAPILLARY_KNOWN = tuple(range(66))
