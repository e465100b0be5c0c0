"""Where datasets are found: the name -> adapter registry and the data root every adapter directory lives under."""
from __future__ import annotations

import os
from pathlib import Path

from ..registry import Registry

DATASETS = Registry("dataset")

#: decorator for code-defined datasets: `@register_dataset("mycity") class MyCity(SegmentationDataset): ...`
register_dataset = DATASETS.register

DATA_ROOT_ENV = "SEGBENCH_DATA"
DEFAULT_DATA_ROOT = "datasets"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """--data-root wins, then $SEGBENCH_DATA, then ./datasets."""
    return Path(explicit or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)
