"""`segbench data check`: read every pair through the training reader and report what is wrong, in constant memory.

Problems found while pairing (missing labels, size mismatches seen in headers) come from the adapter's construction;
problems only decoding reveals (truncated files, labels of another size, ids outside the table) come from reading
each pair exactly as training does (`load_pair_raw`). A raw value outside the table is a problem: training and
evaluation refuse it (`base.UnknownLabelError`) unless `train.unknown_labels: ignore`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch.utils.data
from tqdm import tqdm

from ..labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from .base import DatasetError, Problem, SegmentationDataset, SizeMismatchError
from .workers import worker_init_fn

#: problems of one kind printed in the text report before it abbreviates (--json lists them all)
SHOW_PER_KIND = 20


@dataclass
class CheckReport:
    dataset: str
    split: str
    root: str
    pairs: int  # pairs training and scoring can read (readable, every label value in the table)
    problems: list[Problem] = field(default_factory=list)
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES + 1, dtype=np.int64))  # 19 classes + ignored
    unknown_values: dict[str, int] = field(default_factory=dict)  # raw value as shown -> pixels, over the whole split

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "root": self.root,
            "pairs": self.pairs,
            "ok": self.ok,
            "problem_counts": self.problem_counts(),
            "problems": [{"kind": p.kind, "path": p.path, "detail": p.detail} for p in self.problems],
            "pixels_per_class": {**{n: int(c) for n, c in zip(CLASS_NAMES, self.pixels[:NUM_CLASSES])}, "ignored": int(self.pixels[-1])},
            "label_values_outside_mapping": dict(self.unknown_values),
        }

    def to_text(self) -> str:
        # "usable" whatever the split is for: training and scoring read a pair alike and refuse the same ones
        lines = [f"{self.dataset} split {self.split!r} under {self.root}: {self.pairs} pairs usable (readable, every "
                 "label value in the table)"]
        if self.ok:
            lines.append("no problems found")
        else:
            summary = ", ".join(f"{n} {k}" for k, n in self.problem_counts().items())
            lines.append(f"PROBLEMS: {summary}")
            shown: dict[str, int] = {}
            for p in self.problems:
                shown[p.kind] = shown.get(p.kind, 0) + 1
                if shown[p.kind] <= SHOW_PER_KIND:
                    lines.append(f"  {p}")
            hidden = sum(max(0, n - SHOW_PER_KIND) for n in shown.values())
            if hidden:
                lines.append(f"  ... and {hidden} more (--json lists all)")
        if self.unknown_values:
            values = ", ".join(f"{v} ({c} px)" for v, c in self.unknown_values.items())
            lines.append(f"label values outside the mapping (training and evaluation stop on them; "
                         f"train.unknown_labels=ignore trains them as ignored): {values}")
        total = max(int(self.pixels.sum()), 1)
        lines.append("pixels per trainId:")
        for i, (name, count) in enumerate(zip((*CLASS_NAMES, "ignored"), self.pixels)):
            tid = str(i) if i < NUM_CLASSES else str(IGNORE_INDEX)
            lines.append(f"  {tid:>3} {name:<14} {int(count):>14,d}  {100 * count / total:6.2f}%")
        return "\n".join(lines)


class _PairStats(torch.utils.data.Dataset):
    """One pair -> its small summary (class histogram, unknown raw values, or the error), so workers ship no pixels."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            _, raw, label = self.dataset.load_pair_raw(index)
        except SizeMismatchError as e:
            return index, None, {}, ("size mismatch", str(e))
        except DatasetError as e:
            return index, None, {}, ("unreadable", str(e))
        except Exception as e:  # a decoder's own exception: still a bad file, never a reason to stop the scan
            return index, None, {}, ("unreadable", f"{type(e).__name__}: {e}")
        counts = np.bincount(label.ravel(), minlength=256)
        hist = np.append(counts[:NUM_CLASSES], counts[NUM_CLASSES:].sum())
        return index, hist, self.dataset.unknown_label_values(raw, self.dataset.pairs[index][1]), None


def _as_is(batch):
    return batch


def check_dataset(dataset: SegmentationDataset, name: str = "", workers: int = 0, progress: bool = True) -> CheckReport:
    report = CheckReport(name or dataset.dataset_name, dataset.split, str(dataset.root), len(dataset), list(dataset.skipped))
    loader = torch.utils.data.DataLoader(
        _PairStats(dataset), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
        worker_init_fn=worker_init_fn if workers else None,
    )
    unusable = 0
    unknown_values: dict[int, int] = {}
    for index, hist, unknown, error in tqdm(loader, total=len(dataset), unit="pair", file=sys.stderr, disable=not progress):
        image_path, label_path = dataset.pairs[index]
        if error is not None:
            report.problems.append(Problem(error[0], str(image_path), error[1]))
            unusable += 1
            continue
        report.pixels += hist
        if unknown:
            for value, count in unknown.items():
                unknown_values[value] = unknown_values.get(value, 0) + count
            detail = ", ".join(f"value {dataset.describe_label_value(v)}: {c} px" for v, c in sorted(unknown.items()))
            report.problems.append(Problem("label values outside the mapping", str(label_path), detail))
            unusable += 1  # by default training stops on it
    report.unknown_values = {dataset.describe_label_value(v): c for v, c in sorted(unknown_values.items())}
    report.pairs = len(dataset) - unusable
    return report
