"""Counting raw label values outside a dataset's table over a whole split: what `train.unknown_labels: ignore` records.

With the "ignore" policy a damaged label no longer stops training, so the pixels trained as ignored are counted before
training, once per file: counting while training would see only the sampled files, once per DataLoader worker, and
twice after a resume. Like the class-uniform scan (`class_uniform.class_presence`) the count is cached under
$SEGBENCH_CACHE (default ~/.cache/segbench), keyed by the label files (path, size, mtime) and the dataset's table.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch.utils.data
from tqdm.auto import tqdm

from ..io import write_json
from .base import SegmentationDataset
from .registry import cache_dir
from .workers import worker_init_fn

#: offending files named in the training warning
SHOW_FILES = 3


@dataclass
class UnknownLabelCount:
    """Pixels and files of a split whose raw label value is outside the table, by value (as messages show it)."""

    pixels: int = 0
    files: int = 0
    values: dict[str, int] = field(default_factory=dict)
    first_files: list[str] = field(default_factory=list)

    def record_fields(self) -> dict:
        """The fields `record["training"]` carries when training ran with `train.unknown_labels: ignore`."""
        return {"unknown_label_pixels": self.pixels, "unknown_label_files": self.files,
                "unknown_label_values": dict(self.values)}


class _LabelUnknowns(torch.utils.data.Dataset):
    """One label file -> its unknown values, so DataLoader workers ship counts instead of pixels."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[int, int]:
        path = self.dataset.pairs[index][1]
        return self.dataset.unknown_label_values(self.dataset.read_raw_label(path), path)


def _as_is(item):
    return item


def _cache_path(dataset: SegmentationDataset) -> Path:
    stats = []
    for _, label in dataset.pairs:
        st = Path(label).stat()
        stats.append((str(label), st.st_size, st.st_mtime_ns))  # a label rewritten in place is counted again
    key = json.dumps([type(dataset).__qualname__, dataset.label_table_key(), stats])
    return cache_dir("unknown_labels") / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def count_unknown_labels(dataset: SegmentationDataset, workers: int = 0, progress: bool = False) -> UnknownLabelCount:
    """Read every label of `dataset` once (cached) and count the raw values its table does not know."""
    cache = _cache_path(dataset)
    if cache.is_file():
        try:
            return UnknownLabelCount(**json.loads(cache.read_text()))
        except (json.JSONDecodeError, TypeError):
            pass  # an older or damaged cache entry: count again
    loader = torch.utils.data.DataLoader(
        _LabelUnknowns(dataset), batch_size=None, num_workers=workers, collate_fn=_as_is,
        worker_init_fn=worker_init_fn if workers else None,
    )
    count = UnknownLabelCount()
    bar = tqdm(loader, total=len(dataset), desc="unknown label values: scanning", unit="label", disable=not progress)
    for index, unknown in enumerate(bar):
        if not unknown:
            continue
        count.files += 1
        if len(count.first_files) < SHOW_FILES:
            count.first_files.append(str(dataset.pairs[index][1]))
        for value, pixels in sorted(unknown.items()):
            shown = dataset.describe_label_value(value)
            count.values[shown] = count.values.get(shown, 0) + pixels
            count.pixels += pixels
    try:
        write_json(cache, asdict(count))
    except OSError:
        pass  # a read-only or full cache directory costs a rescan next time, never the count
    return count


def apply_unknown_label_policy(dataset: SegmentationDataset, policy: str, workers: int = 0) -> dict:
    """Set how `dataset` treats raw label values outside its table (`train.unknown_labels`); returns the fields for
    `record["training"]`: none under "error" (reading such a label stops training), the counts under "ignore"
    (config.UNKNOWN_LABEL_POLICIES; the study's validation checked which)."""
    dataset.unknown_labels = policy
    if policy != "ignore":
        return {}
    count = count_unknown_labels(dataset, workers, progress=True)
    if count.pixels and os.environ.get("RANK", "0") == "0":
        values = ", ".join(f"{v} ({n} px)" for v, n in count.values.items())
        more = ", ..." if count.files > len(count.first_files) else ""
        print(f"train.unknown_labels=ignore: {count.pixels} pixels in {count.files} label file(s) of "
              f"{dataset.dataset_name} {dataset.split!r} hold values outside its table ({values}; e.g. "
              f"{', '.join(count.first_files)}{more}); trained as ignored and counted in the record", file=sys.stderr)
    return count.record_fields()
