"""Appearance-shift robustness: mIoU of a model on one split, clean and under each appearance transform and level.

Only the image goes through the transform; the label reaches the confusion matrix as `segbench evaluate` scores it
(as the adapter decoded it, resized or cropped only where the cell's eval protocol does so to image and label alike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..data.transforms import eval_transform_for
from ..io import csv_text, markdown_table
from .appearance import TRANSFORMS, ImageTransform, StyleStats

CLEAN = "clean"
#: default order of the table and plot
DEFAULT_TRANSFORMS = tuple(TRANSFORMS)


class ShiftedDataset(torch.utils.data.Dataset):
    """`base` (an adapter opened without transform) seen through an appearance transform, then the eval preset."""

    def __init__(self, base, appearance: ImageTransform | None, eval_transform, indices: Sequence[int] | None = None):
        self.base, self.appearance, self.eval_transform = base, appearance, eval_transform
        self.indices = list(range(len(base))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, i: int):
        """(transformed RGB uint8, untouched label) for position `i`."""
        index = self.indices[i]
        image, label = self.base.load_pair(index)
        if self.appearance is not None:
            image = self.appearance(image, index)
        return image, label

    def __getitem__(self, i: int):
        image, label = self.raw(i)
        out = self.eval_transform(image=image, mask=label)
        return out["image"], out["mask"]


@dataclass
class ShiftRow:
    model: str
    dataset: str
    split: str
    transform: str
    level: float | None
    label: str
    miou: float
    drop: float  # clean mIoU - this mIoU (points); positive = worse
    images: int


def scored_as_evaluated(record: dict, base, size=None):
    """(eval transform, scored classes, inference settings) for `base` as `segbench evaluate` scores the cell of
    `record`: the eval section it was scored under (protocol, size, classes, mode, flip, scales). An explicit `size`
    (H, W) replaces the protocol's geometry: the image resized to it, the label scored at native resolution."""
    from ..engine.scoring import scoring_options, scoring_transform_and_classes
    from ..evaluate import eval_section

    ecfg = eval_section([], (record.get("config") or {}).get("eval"))
    transform, classes = scoring_transform_and_classes(base, ecfg)
    if size:
        transform = eval_transform_for(base, size)
    return transform, classes, scoring_options(ecfg)["settings"]


def run_shift(models, base, *, dataset: str, split: str, conditions: Sequence[tuple[str, float]],
              style: StyleStats | None = None, size=None, max_images: int | None = None, seed: int = 0,
              device="cpu", batch_size: int = 1) -> list[ShiftRow]:
    """Evaluate each `LoadedModel` clean and under each (transform, level) on the first `max_images` of `base`.

    Each model is scored as `segbench evaluate` scores its cell (`scored_as_evaluated`: the record's eval section), so
    clean mIoU here is the evaluated mIoU; `size` (H, W) resizes every image instead.
    """
    from ..engine.scoring import evaluate

    device = torch.device(device)
    indices = list(range(len(base) if max_images is None else min(max_images, len(base))))
    plan = [(CLEAN, None)] + list(conditions)
    rows: list[ShiftRow] = []
    bar = tqdm(total=len(models) * len(plan), desc="shift", unit="cond", dynamic_ncols=True)
    for m in models:
        clean = math.nan
        eval_t, classes, settings = scored_as_evaluated(m.record, base, size)
        for name, level in plan:
            appearance = None if name == CLEAN else ImageTransform(name, level, seed=seed, style=style)
            ds = ShiftedDataset(base, appearance, eval_t, indices)
            bar.set_postfix_str(f"{m.label} {name} {'' if level is None else f'{level:g}'}")
            res = evaluate(m.model, ds, device=device, eval_classes=classes, settings=settings,
                           batch_size=batch_size, workers=0, desc=f"{m.label} {name}")
            if name == CLEAN:
                clean = res["miou"]
            rows.append(ShiftRow(m.label, dataset, split, name, level, CLEAN if appearance is None else appearance.label,
                                 res["miou"], clean - res["miou"], len(ds)))
            bar.update(1)
    bar.close()
    return rows


CSV_FIELDS = ("model", "dataset", "split", "transform", "level", "label", "miou", "drop", "images")


def shift_csv(rows: Sequence[ShiftRow]) -> str:
    return csv_text(CSV_FIELDS, ([r.model, r.dataset, r.split, r.transform, "" if r.level is None else f"{r.level:g}",
                                  r.label, f"{r.miou:.2f}", f"{r.drop:.2f}", r.images] for r in rows))


def shift_markdown(rows: Sequence[ShiftRow]) -> str:
    """One row per condition, one column per model: 'mIoU (drop)'; the last row averages the drops."""
    models = list(dict.fromkeys(r.model for r in rows))
    conds = list(dict.fromkeys((r.transform, r.level, r.label) for r in rows))
    cell = {(r.model, r.transform, r.level): r for r in rows}
    first = rows[0] if rows else None
    title = f"mIoU (%) on {first.dataset} {first.split} ({first.images} images) under appearance shifts; " \
            f"in brackets the change from clean (points)" if first else "no rows"
    body = []
    for t, lev, lab in conds:
        vals = []
        for m in models:
            r = cell.get((m, t, lev))
            vals.append("" if r is None else (f"{r.miou:.1f}" if t == CLEAN else f"{r.miou:.1f} ({-r.drop:+.1f})"))
        body.append([t, lab if t != CLEAN else "", *vals])
    means = []
    for m in models:
        drops = [r.drop for r in rows if r.model == m and r.transform != CLEAN]
        means.append(f"{-sum(drops) / len(drops):+.1f}" if drops else "")
    body.append(["**mean change**", "all shifted", *means])
    return f"{title}\n\n" + markdown_table(["transform", "level", *models], body, left=2)
