"""The built-in adapters, one module per dataset family; importing this package registers them all in `DATASETS`.

Real downloads: cityscapes, gta5, synthia (+ synthia16), bdd100k, mapillary, acdc (+ acdc-fog/-night/-rain/-snow).
Embedded: synthetic (the generated `sim` and `photo` domains and their generator). `splitlists` reads the split lists
GTA5 and SYNTHIA select frames with; the lists shipped with segbench are in `splits/` (package data).
"""
from . import acdc, bdd100k, cityscapes, gta5, mapillary, synthetic, synthia  # noqa: F401  (register on import)
