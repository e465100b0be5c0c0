"""Opening datasets by name: the one way training, evaluation, `segbench data check|prepare` and the analysis tools
get a dataset.

`build_dataset("gta5", "train")` loads the plug-ins, looks the adapter up in `DATASETS` and opens it under
`<data root>/<its default_dir>` (or at an explicit `path`); `NAME@WxH` opens the resized cache instead, and
`A+B` the union of A and B (`multisource.MultiSourceDataset`), each part opened as above.
`open_every_split` opens every split of a name the same way (`segbench data check --split all`), and
`prepare_dataset` hands them to `cache.write_cache`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from ..spec import is_prepared, prepared_parts, source_parts
from .base import DatasetError, Problem, SegmentationDataset, SplitAbsentError
from .cache import DEFAULT_PNG_COMPRESSION, MANIFEST, open_prepared, parse_size, prepared_path, write_cache
from .multisource import MultiSourceDataset
from .plugins import dataset_class, load_plugins
from .registry import DATASETS, data_root


def build_dataset(name: str, split: str | None = None, root: str | os.PathLike | None = None,
                  transform: Callable | None = None, path: str | os.PathLike | None = None,
                  classes: Sequence[int] | None = None) -> SegmentationDataset | MultiSourceDataset:
    """Dataset `name` (a registered name, `NAME@WxH` for the copy `segbench data prepare` wrote, or `A+B` for the
    union of A and B), split `split` (default: its first), under the data root `root` (--data-root, $SEGBENCH_DATA,
    ./datasets) or at `path` (one dataset only). `classes`: the trainIds a union keeps in its labels, every other class
    ignored (cells.Cell.training_classes); a single dataset trains on its own decoding, so it takes none."""
    parts = source_parts(name)
    if len(parts) > 1:
        if path is not None:
            raise DatasetError(f"{name!r} is a union of {len(parts)} datasets; it opens under the data root, not at "
                               f"one path ({path})")
        return MultiSourceDataset([build_dataset(p, split, root) for p in parts], parts, classes, transform)
    if classes is not None:
        raise ValueError(f"classes={classes!r} applies to a union of datasets (A+B), not to {name!r}")
    if is_prepared(name):
        load_plugins(root)
        return open_prepared(name, split, root, transform, path)
    cls = dataset_class(name, root)
    directory = Path(path) if path else data_root(root) / cls.default_dir
    cls.prepare(directory)
    return cls(directory, split=split or cls.splits[0], transform=transform)


PRESENT, MISSING, GENERATED = "present", "missing", "generated on first use"


def dataset_directory(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where `name` (a registered name or NAME@WxH) is opened from under the data root `root`."""
    if is_prepared(name):
        source, size = prepared_parts(name)
        return prepared_path(source, parse_size(size), root)
    return data_root(root) / dataset_class(name, root).default_dir


def dataset_presence(name: str, root: str | os.PathLike | None = None) -> str:
    """PRESENT (its directory exists; a prepared copy: its manifest), GENERATED (missing, but the adapter writes it on
    first use) or MISSING. A look at the directory only: `segbench data check` reads the files."""
    directory = dataset_directory(name, root)
    if (directory / MANIFEST).is_file() if is_prepared(name) else directory.is_dir():
        return PRESENT
    return GENERATED if not is_prepared(name) and dataset_class(name, root).generated else MISSING


def dataset_splits(name: str, root: str | os.PathLike | None = None,
                   path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The splits `name` declares (a prepared copy: those its manifest lists)."""
    if is_prepared(name):
        return tuple(open_prepared(name, None, root, None, path).splits)
    return tuple(dataset_class(name, root).splits)


def open_every_split(name: str, root: str | os.PathLike | None = None, path: str | os.PathLike | None = None,
                     ) -> tuple[dict[str, SegmentationDataset], dict[str, str], dict[str, str]]:
    """(every split of `name` that can be opened here, {split: why not} for those present that cannot (e.g. GTA5's
    official-* need split.mat), {split: why} for those absent: no image directory, not downloaded). Fails only when
    no split opens."""
    opened, errors, absent = {}, {}, {}
    for split in dataset_splits(name, root, path):
        try:
            opened[split] = build_dataset(name, split, root, path=path)
        except SplitAbsentError as e:
            absent[split] = str(e).splitlines()[0]
        except DatasetError as e:
            errors[split] = str(e).splitlines()[0]
    if not opened:
        where = path or (data_root(root) / DATASETS.get(name).default_dir if name in DATASETS else name)
        why = {**absent, **errors}
        raise DatasetError(f"no split of {name} could be opened under {where}:\n"
                           + "\n".join(f"  {s}: {m}" for s, m in why.items()))
    return opened, errors, absent


def prepare_dataset(name: str, size: tuple[int, int], path: str | os.PathLike | None = None,
                    data_root_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    workers: int = 0, progress: bool = True,
                    png_compression: int = DEFAULT_PNG_COMPRESSION) -> tuple[Path, list[Problem]]:
    """Write the resized cache of every split of `name` (default: `<data root>/prepared/NAME@WxH`); returns where,
    and the pairs left out."""
    if is_prepared(name):
        raise DatasetError(f"{name!r} is already a prepared copy; prepare its source dataset {prepared_parts(name)[0]!r}")
    splits, unavailable, absent = open_every_split(name, data_root_dir, path)
    for split, message in {**absent, **unavailable}.items():  # whole: a cut path names no file
        print(f"prepare: split {split!r} not available here, left out: {message}", file=sys.stderr)
    out_dir = Path(out) if out else prepared_path(name, size, data_root_dir)
    return out_dir, write_cache(name, size, splits, out_dir, workers, progress, png_compression)
