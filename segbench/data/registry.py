"""Where datasets are found: the name -> adapter registry, the data root every adapter directory lives under, and
the cache of what segbench learns by scanning a split's labels once."""
from __future__ import annotations

import os
from pathlib import Path

from ..registry import Registry
from ..spec import dataset_name_problem

#: names are plain tokens (spec.DATASET_NAME_RULE): the same rule as a spec's, so whatever registers can be named there
DATASETS = Registry("dataset", name_problem=dataset_name_problem)

#: decorator for code-defined datasets: `@register_dataset("mycity") class MyCity(SegmentationDataset): ...`
register_dataset = DATASETS.register

DATA_ROOT_ENV = "SEGBENCH_DATA"
DEFAULT_DATA_ROOT = "datasets"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """--data-root wins, then $SEGBENCH_DATA, then ./datasets."""
    return Path(explicit or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def data_root_origin(explicit: str | os.PathLike | None = None) -> str:
    """Which of data_root's three sources gave the data root, as messages name it."""
    if explicit:
        return "--data-root"
    return f"${DATA_ROOT_ENV}" if os.environ.get(DATA_ROOT_ENV) else f"the default ./{DEFAULT_DATA_ROOT}"


CACHE_ENV = "SEGBENCH_CACHE"


def cache_dir(kind: str) -> Path:
    """$SEGBENCH_CACHE/KIND (default ~/.cache/segbench/KIND): one home for every cached label scan."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "segbench") / kind
