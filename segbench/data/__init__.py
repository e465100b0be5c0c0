"""Datasets: the adapter contract, every registered domain, opening them by name, the resized cache and the presets.

One job per module (the `models/` pattern: a registry, a factory, implementations registered on import):

* `registry`     DATASETS, `register_dataset` and where the data lives (`data_root`, $SEGBENCH_DATA, ./datasets).
* `base`         the adapter contract: `SegmentationDataset`, `DatasetError` and friends (`UnknownLabelError`: a raw
                 label value outside the table), `Problem`, `apply_lut`, the default image/label readers.
* `adapters/`    the built-in adapters (Cityscapes, GTA5, SYNTHIA, BDD100K, Mapillary, ACDC, the embedded synthetic
                 domains) and the split lists GTA5 and SYNTHIA ship with; importing it registers them.
* `factory`      `build_dataset(name, split)`: the one way to open a dataset by name (plug-ins, `NAME@WxH` caches);
                 `prepare_dataset` opens every split of a name for the cache.
* `cache`        the resized cache: its writer (`segbench data prepare`) and its reader (`NAME@WxH`).
* `plugins`      datasets from outside segbench: entry points and YAML files that declare `segbench_dataset: 1`.
* `yaml_dataset` a dataset described by a YAML file (`register_yaml`).
* `tables`       the label encodings several datasets share (trainIds, Cityscapes ids).
* `pairing`      matching image and label files on disk; `readers`: PNG headers, palette indices, label channels.
* `check`, `cli` `segbench data list | check | prepare`.
* `label_scan`   counts label values outside the table over a split (`train.unknown_labels: ignore`), cached.
* `transforms`, `sampler`, `class_uniform`, `workers`: augmentation presets and what the DataLoader needs.
* `multisource`  the union of several training sources (`A+B`); `streams` picks the seeded sampler a run draws from.
"""
from .registry import DATASETS, data_root, register_dataset
from .base import DatasetError, SegmentationDataset, UnknownLabelError
from . import adapters  # noqa: F401  (registers the built-in adapters)
from .yaml_dataset import register_yaml
from .plugins import load_plugins
from .factory import build_dataset
from .workers import worker_init_fn

__all__ = ["DATASETS", "DatasetError", "SegmentationDataset", "UnknownLabelError", "build_dataset", "data_root",
           "load_plugins", "register_dataset", "register_yaml", "worker_init_fn"]
