"""Importing this module registers every real-dataset adapter (the official downloads), in one place."""
from . import acdc, bdd100k, cityscapes, gta5, mapillary, synthia  # noqa: F401

REAL_DATASETS = ("cityscapes", "gta5", "synthia", "synthia16", "bdd100k", "mapillary", "acdc", "acdc-fog", "acdc-night", "acdc-rain", "acdc-snow")
