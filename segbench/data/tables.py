"""The two label encodings several datasets share, each with the raw values it *knows* (maps or deliberately ignores).

`segbench data check` reports any other value, and training refuses it unless told to ignore it. Used by the
adapters, the YAML datasets (`encoding: trainid | cityscapes`, and the void colours of `colors: cityscapes`) and the
resized cache (whose labels are trainIds). The Cityscapes id -> trainId table itself is `labels.CITYSCAPES_LUT`; tables of one dataset only live in its adapter.
"""
from __future__ import annotations

from ..labels import IGNORE_INDEX, NUM_CLASSES, make_lut

#: labels already stored as trainIds (Cityscapes labelTrainIds, BDD100K, ACDC): 0..18 kept, everything else ignored
TRAINID_LUT = make_lut({i: i for i in range(NUM_CLASSES)})
TRAINID_KNOWN = tuple(range(NUM_CLASSES)) + (IGNORE_INDEX,)

#: Cityscapes label ids 0..33 (cityscapesScripts `helpers/labels.py`), and 255 (decoded as ignored): -1 cast to 8 bits.
#: The official files never hold 255: cityscapesScripts `preparation/json2labelImg.py` skips polygons with a negative
#: id, so the license plate (-1) is never drawn and its pixels keep the class beneath (usually car).
CITYSCAPES_KNOWN = tuple(range(34)) + (255,)

#: Colours of the Cityscapes classes that have no trainId (unlabeled and the other void classes, parking, rail track,
#: guard rail, bridge, tunnel, caravan, trailer), from cityscapesScripts `helpers/labels.py`: a colour-coded copy
#: (`*_gtFine_color.png`, or a tool exporting that palette) shows them, so they are known and ignored. Polegroup and the
#: licence plate share the colours of pole and car, which keep their class.
CITYSCAPES_VOID_COLORS = (
    (0, 0, 0), (111, 74, 0), (81, 0, 81), (250, 170, 160), (230, 150, 140), (180, 165, 180), (150, 100, 100),
    (150, 120, 90), (0, 0, 90), (0, 0, 110),
)
