"""Datasets from outside segbench: a decorator for code, an entry-point group for pip packages, YAML files for no code.

`load_plugins()` is idempotent and cheap after the first call; `factory.build_dataset` and `segbench data list` call it
before looking a name up, so a plug-in's datasets appear wherever segbench's own do. The decorator itself is
`registry.register_dataset`.
"""
from __future__ import annotations

import importlib.metadata
import os
import types
import warnings
from pathlib import Path

from .base import SegmentationDataset
from .registry import DATASETS, data_root
from .yaml_dataset import register_yaml

ENTRY_POINT_GROUP = "segbench.datasets"
#: os.pathsep-separated YAML files or directories of them
YAML_PATH_ENV = "SEGBENCH_DATASETS"
YAML_SUFFIXES = (".yaml", ".yml")

class PluginWarning(UserWarning):
    """A plug-in could not be loaded; segbench goes on without its datasets."""


_loaded_entry_points: set[str] = set()


def load_entry_points() -> list[str]:
    """Import every `segbench.datasets` entry point: a SegmentationDataset subclass (registered under the entry
    point's name) or a module that registers its datasets on import. A broken plug-in warns instead of failing."""
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _loaded_entry_points:
            continue
        _loaded_entry_points.add(key)
        where = f"dataset plug-in {ep.name!r} ({ep.value}" + (f", from {ep.dist.name}" if ep.dist else "") + ")"
        try:
            obj = ep.load()
        except Exception as e:  # a plug-in's import error must not take segbench down
            warnings.warn(f"{where} failed to load: {type(e).__name__}: {e}; its datasets are unavailable", PluginWarning)
            continue
        if isinstance(obj, type) and issubclass(obj, SegmentationDataset):
            if ep.name in DATASETS and DATASETS.get(ep.name) is not obj:
                warnings.warn(f"{where}: the name is already taken by {DATASETS.get(ep.name)!r}; skipped", PluginWarning)
                continue
            DATASETS.add(ep.name, obj)
        elif not isinstance(obj, types.ModuleType):
            warnings.warn(f"{where} is a {type(obj).__name__}; expected a SegmentationDataset subclass or a module", PluginWarning)
            continue
        loaded.append(ep.name)
    return loaded


def yaml_files(data_root_dir: str | os.PathLike | None = None) -> list[Path]:
    """$SEGBENCH_DATASETS entries (files, or directories scanned for *.yaml), then *.yaml in the data root."""
    places = [Path(p) for p in os.environ.get(YAML_PATH_ENV, "").split(os.pathsep) if p]
    places.append(data_root(data_root_dir))
    files = []
    for place in places:
        if place.is_dir():
            files += sorted(p for p in place.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
        elif place.suffix in YAML_SUFFIXES:
            files.append(place)  # named explicitly: a missing file is an error, reported by register_yaml
    return files


def load_yaml_datasets(data_root_dir: str | os.PathLike | None = None) -> list[str]:
    return [register_yaml(path) for path in yaml_files(data_root_dir)]


def load_plugins(data_root_dir: str | os.PathLike | None = None) -> list[str]:
    """Entry points, then YAML datasets; returns the names they added or refreshed."""
    return load_entry_points() + load_yaml_datasets(data_root_dir)
