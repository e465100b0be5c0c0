"""Datasets: the adapter contract, every registered domain (real downloads and the embedded pair) and the presets."""
from .base import DATASETS, DatasetError, SegmentationDataset, build_dataset, data_root
from . import real  # noqa: F401  (registers the official-download adapters)
from . import synthetic  # noqa: F401  (registers the embedded domains)

__all__ = ["DATASETS", "DatasetError", "SegmentationDataset", "build_dataset", "data_root"]
