"""Datasets from outside segbench: a decorator for code, an entry-point group for pip packages, YAML files for no code.

`load_plugins()` is idempotent and cheap after the first call; `factory.build_dataset` and `segbench data list` call it
before looking a name up, so a plug-in's datasets appear wherever segbench's own do. The decorator itself is
`registry.register_dataset`.

Which YAML files are datasets: in a directory (the data root, or a directory listed in $SEGBENCH_DATASETS) only the
`*.yaml` / `*.yml` files that declare themselves with a top-level line `segbench_dataset: 1` (in their first 64 KiB;
best as the first line). Any other YAML file there (a conda `environment.yml`, notes, configs) is none of segbench's
business and is skipped without a word, unless a name it describes is asked for and unknown: then the error names the
file and the line to add (`dataset_class`). A file listed in $SEGBENCH_DATASETS by name must declare itself too, or
loading it fails saying so. A declared file with an error fails, naming the file and the field.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .base import DatasetError, SegmentationDataset
from .registry import DATASETS, data_root
from .yaml_dataset import DECLARATION, FORMAT_VERSION, register_yaml

ENTRY_POINT_GROUP = "segbench.datasets"
#: os.pathsep-separated YAML files or directories of them
YAML_PATH_ENV = "SEGBENCH_DATASETS"
YAML_SUFFIXES = (".yaml", ".yml")
#: how much of a YAML file in a scanned directory is read to find its declaration line
DECLARATION_WINDOW = 64 * 1024
_DECLARATION_LINE = re.compile(rb"^" + re.escape(DECLARATION.encode()) + rb"[ \t]*:", re.MULTILINE)

class PluginWarning(UserWarning):
    """A plug-in could not be loaded; segbench goes on without its datasets."""


def load_entry_points() -> list[str]:
    """Import every `segbench.datasets` entry point: a SegmentationDataset subclass (registered under the entry
    point's name) or a module that registers its datasets on import. A broken plug-in warns instead of failing."""
    return DATASETS.load_entry_points(ENTRY_POINT_GROUP, SegmentationDataset, PluginWarning)


def declares_dataset(path: Path) -> bool:
    """Whether a YAML file found in a scanned directory says it is a segbench dataset (`segbench_dataset:` at the top
    level). Read as bytes, not parsed: a declared file with a syntax error must still be reported, not skipped."""
    try:
        with open(path, "rb") as f:
            head = f.read(DECLARATION_WINDOW)
    except OSError:
        return False  # unreadable: not ours to judge, like any other stranger in the directory
    return _DECLARATION_LINE.search(head.removeprefix(b"\xef\xbb\xbf")) is not None


def _search_path(data_root_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where YAML datasets are looked for: $SEGBENCH_DATASETS entries, then the data root."""
    places = [Path(p) for p in os.environ.get(YAML_PATH_ENV, "").split(os.pathsep) if p]
    return places + [data_root(data_root_dir)]


def yaml_files(data_root_dir: str | os.PathLike | None = None) -> list[Path]:
    """$SEGBENCH_DATASETS entries (files, or directories scanned for declared *.yaml), then the declared *.yaml in the
    data root."""
    places = _search_path(data_root_dir)
    files = []
    for place in places:
        if place.is_dir():
            files += sorted(p for p in place.iterdir()
                            if p.suffix in YAML_SUFFIXES and p.is_file() and declares_dataset(p))
        elif place.suffix in YAML_SUFFIXES:
            files.append(place)  # named explicitly: a missing file is an error, reported by register_yaml
    return files


def skipped_files_naming(name: str, data_root_dir: str | os.PathLike | None = None) -> list[Path]:
    """YAML files that the scan of the search path skipped (no declaration line) although they describe a dataset
    called `name`: files written before the declaration existed. Looked at only when a name is unknown."""
    found = []
    for place in _search_path(data_root_dir):
        if not place.is_dir():
            continue
        for path in sorted(place.iterdir()):
            if path.suffix not in YAML_SUFFIXES or not path.is_file() or declares_dataset(path):
                continue
            try:
                with open(path, "rb") as f:
                    spec = yaml.safe_load(f.read(DECLARATION_WINDOW))
            except (OSError, yaml.YAMLError):
                continue  # not ours to judge
            if isinstance(spec, dict) and spec.get("name") == name:
                found.append(path)
    return found


def unknown_name_hint(name: str, data_root_dir: str | os.PathLike | None = None) -> str:
    """What to add to "unknown dataset NAME" when a skipped YAML file describes NAME: the file and the line; else ""."""
    files = skipped_files_naming(name, data_root_dir)
    if not files:
        return ""
    return (f"; {', '.join(map(str, files))} describes a dataset {name!r} but was skipped: it lacks the line "
            f"`{DECLARATION}: {FORMAT_VERSION}` that declares a dataset file; add that line at its top")


def dataset_class(name: str, data_root_dir: str | os.PathLike | None = None) -> type[SegmentationDataset]:
    """The adapter registered as `name` (plug-ins loaded first); an unknown name says which valid names there are
    and, when a skipped YAML file describes it, the file and the line to add."""
    load_plugins(data_root_dir)
    try:
        return DATASETS.get(name)
    except KeyError as e:
        hint = unknown_name_hint(name, data_root_dir)
        if not hint:
            raise
        raise DatasetError(f"{e.args[0]}{hint}") from None


def load_yaml_datasets(data_root_dir: str | os.PathLike | None = None) -> list[str]:
    return [register_yaml(path) for path in yaml_files(data_root_dir)]


def load_plugins(data_root_dir: str | os.PathLike | None = None) -> list[str]:
    """Entry points, then YAML datasets; returns the names they added or refreshed."""
    return load_entry_points() + load_yaml_datasets(data_root_dir)
