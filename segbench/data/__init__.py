"""Datasets: the adapter contract, every registered domain (real downloads and the embedded pair) and the presets."""
from .base import DATASETS, DatasetError, SegmentationDataset, build_dataset, data_root
from . import real  # noqa: F401  (registers cityscapes, gta5, synthia, synthia16, bdd100k, mapillary, acdc*)
from . import synthetic  # noqa: F401  (registers the embedded domains)
from .plugins import load_plugins, register_dataset
from .yaml_dataset import register_yaml
from .workers import worker_init_fn

__all__ = ["DATASETS", "DatasetError", "SegmentationDataset", "build_dataset", "data_root", "load_plugins",
           "register_dataset", "register_yaml", "worker_init_fn"]
