"""Training on several sources at once (`gta5+synthia->cityscapes`): one dataset that is the union of its parts.

Each part is an ordinary adapter, opened by name and decoding its own labels into the 19 trainIds; the union indexes
them part after part (torch's ConcatDataset layout: index i < n_0 is part 0's i, and so on). How often each part is
drawn is the sampler's business (`sampler.MultiSourceStreamSampler`, weights from `train.source_weights`:
source_weights.py).

With a study class set (`eval.classes: 16 | 13`) the classes outside it are trained as ignored in every part, so the
parts agree on one label space (SYNTHIA never labels terrain, truck or train: without this, GTA5 would teach "terrain"
on grass that SYNTHIA teaches as "vegetation"). Without one (the default, and 19), every part's labels are used as
decoded.

RobustNet (shachoi/RobustNet, `datasets/__init__.py`) trains multi-source in one of two ways. With
`--image_uniform_sampling`, a plain ConcatDataset shuffled as one: shares proportional to size, mixed batches, one
optimizer step per batch. That is segbench's default (`source_weights: null`), up to the order of the stream. Without
it (its default), `datasets/multi_loader.py` DomainUniformConcatDataset: every item holds one image of each domain, and
`train.py` then takes one optimizer step per domain on that domain's images alone (the lr schedule advancing once per
item). Equal weights here give the same shares of images (exactly, per block of the sampler), but in mixed batches
with one step each: not RobustNet's per-domain steps, which segbench does not reproduce.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch.utils.data

from ..labels import IGNORE_INDEX, NUM_CLASSES
from ..spec import JOIN
from .base import SegmentationDataset, transformed
from .label_scan import apply_unknown_label_policy


class MultiSourceDataset(torch.utils.data.Dataset):
    """The union of `parts` (already opened adapters, named `names`), with `classes` (trainIds) kept and every other
    class ignored; `classes=None` keeps all of them."""

    def __init__(self, parts: Sequence[SegmentationDataset], names: Sequence[str],
                 classes: Sequence[int] | None = None, transform=None):
        if len(parts) != len(names) or len(parts) < 2:
            raise ValueError("a multi-source dataset needs two or more parts, each with its name")
        self.parts, self.names = list(parts), list(names)
        self.name = JOIN.join(self.names)
        self.sizes = [len(p) for p in self.parts]
        self.offsets = list(np.cumsum([0, *self.sizes[:-1]]).tolist())
        self.transform = transform
        self.classes = None if classes is None else tuple(sorted(set(classes)))
        self._label_lut = None
        if self.classes is not None and len(self.classes) < NUM_CLASSES:
            self._label_lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            self._label_lut[list(self.classes)] = self.classes

    # -- what training reads ---------------------------------------------------------------------------------------
    @property
    def split(self) -> str:
        return "+".join(dict.fromkeys(p.split for p in self.parts))

    @property
    def dataset_name(self) -> str:
        return self.name

    @property
    def eval_classes(self) -> tuple[int, ...]:
        """Scoring the union as one dataset (the analysis tools do; a study scores each part): the classes every part
        is scored on, within the class set."""
        common = set.intersection(*(set(getattr(p, "eval_classes", range(NUM_CLASSES))) for p in self.parts))
        return tuple(sorted(common if self.classes is None else common & set(self.classes)))

    @property
    def pairs(self) -> list:
        return [pair for part in self.parts for pair in part.pairs]

    @property
    def unknown_labels(self) -> str:
        return self.parts[0].unknown_labels

    @unknown_labels.setter
    def unknown_labels(self, policy: str) -> None:
        for part in self.parts:
            part.unknown_labels = policy

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index within the part) of a union index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside {self.name} ({len(self)} pairs)")
        part = bisect.bisect_right(self.offsets, index) - 1
        return part, index - self.offsets[part]

    def keep_classes(self, label: np.ndarray) -> np.ndarray:
        """trainIds outside the study's class set -> IGNORE_INDEX (unchanged without a class set)."""
        return label if self._label_lut is None else self._label_lut[label]

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        part, local = self.locate(index)
        image, label = self.parts[part].load_pair(local)
        return image, self.keep_classes(label)

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int):
        return transformed(self.transform, *self.load_pair(index))

    def __repr__(self) -> str:
        return f"MultiSourceDataset({', '.join(map(repr, self.parts))})"


def source_datasets(dataset) -> list:
    """The adapters a training dataset reads: its parts, or the dataset itself."""
    return list(dataset.parts) if isinstance(dataset, MultiSourceDataset) else [dataset]


def source_part(dataset, index: int) -> int:
    """Which part of a training dataset an index reads (its domain, for methods that mix across domains): the part's
    position in a union, 0 for a single source."""
    return dataset.locate(index)[0] if isinstance(dataset, MultiSourceDataset) else 0


def apply_unknown_label_policy_per_source(dataset, policy: str, workers: int = 0) -> dict:
    """`label_scan.apply_unknown_label_policy` on every part; the record's counts are summed over the parts (values
    keyed as each part shows them)."""
    total: dict = {}
    for part in source_datasets(dataset):
        for key, value in apply_unknown_label_policy(part, policy, workers).items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for shown, pixels in value.items():
                    merged[shown] = merged.get(shown, 0) + pixels
            else:
                total[key] = total.get(key, 0) + value
    return total
