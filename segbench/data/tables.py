"""The two label encodings several datasets share, each with the raw values it *knows* (maps or deliberately ignores).

`segbench data check` reports any other value, because training silently maps it to the ignore index. Used by the
adapters, the YAML datasets (`encoding: trainid | cityscapes`) and the resized cache (whose labels are trainIds). The
Cityscapes id -> trainId table itself is `labels.CITYSCAPES_LUT`; tables of one dataset only live in its adapter.
"""
from __future__ import annotations

from ..labels import IGNORE_INDEX, NUM_CLASSES, make_lut

#: labels already stored as trainIds (Cityscapes labelTrainIds, BDD100K, ACDC): 0..18 kept, everything else ignored
TRAINID_LUT = make_lut({i: i for i in range(NUM_CLASSES)})
TRAINID_KNOWN = tuple(range(NUM_CLASSES)) + (IGNORE_INDEX,)

#: Cityscapes label ids 0..33 (cityscapesScripts `helpers/labels.py`); the license plate's -1 is stored as 255 in
#: 8-bit files
CITYSCAPES_KNOWN = tuple(range(34)) + (255,)
