"""Class-uniform sampling (RobustNet's protocol): a fraction of samples first draws a class uniformly, then an image
containing it, and the crop is placed at random among the windows that hold a random pixel of that class
(transforms.RandomScaleCrop). Rare classes (train, motorcycle) are then seen as often as common ones.

Which classes each image holds is scanned once per (dataset, split) and cached under ~/.cache/segbench.

Where this differs from RobustNet (shachoi/RobustNet datasets/uniform.py, datasets/gtav.py GTAVUniform, run with
`--class_uniform_pct 0.5 --class_uniform_tile 1024`):
- RobustNet's crop holds a centroid: per image, per whole 1024 x 1024 tile (range(H // 1024) x range(W // 1024))
  and per class in it, the class's centre of mass in that tile, which can lie off the class. A 1914 x 1052 GTA5 frame
  has one tile, its top-left 1024 x 1024: a class found only outside it is never a focus of that frame; a 1280 x 760
  SYNTHIA frame has none. Here every pixel of the frame counts, and the crop holds one of the class's pixels.
- RobustNet draws from the (image, tile) entries of a class, so an image holding it in two tiles (Cityscapes'
  2048 x 1024) is drawn twice as often; here each image holding the class counts once.
- RobustNet rebuilds each epoch of N with exact counts (`build_epoch`): int(N * pct / 19) entries per class that has
  any (shuffled without replacement, wrapping) and N - 19 * int(N * pct / 19) random images, so a class without
  entries shortens the epoch. Here each stream position is class-uniform with probability `fraction`, the class
  drawn among those some image holds: the same shares in expectation, drawn independently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import write_json
from ..labels import NUM_CLASSES
from .registry import cache_dir
from .sampler import SeededStreamSampler, mix_seed

def class_presence(dataset) -> list[list[int]]:
    """For every pair of `dataset`, the trainIds present in its label (cached; key = the label files and their sizes)."""
    labels = [Path(label) for _, label in dataset.pairs]
    key_src = json.dumps([type(dataset).__name__] + [(str(p), p.stat().st_size) for p in labels])
    cache = cache_dir("class_presence") / f"{hashlib.sha1(key_src.encode()).hexdigest()[:16]}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())["classes"]
        except (json.JSONDecodeError, KeyError):
            pass
    presence = []
    for path in tqdm(labels, desc="class-uniform: scanning labels", unit="label", dynamic_ncols=True):
        train_ids = dataset.decode_label(dataset.read_raw_label(path), path)
        found = np.flatnonzero(np.bincount(train_ids.ravel(), minlength=256)[:NUM_CLASSES])
        presence.append(found.tolist())
    write_json(cache, {"dataset": type(dataset).__name__, "classes": presence})
    return presence


class ClassUniformStreamSampler(SeededStreamSampler):
    """The seeded stream of `SeededStreamSampler`, where each position is, with probability `fraction`, replaced by a
    class-uniform draw. Yields (index, sample_seed, focus_class) with focus_class = -1 for ordinary samples."""

    def __init__(self, presence: list[list[int]], fraction: float, seed: int, **kwargs):
        super().__init__(len(presence), seed, **kwargs)
        self.fraction = fraction
        self.by_class: dict[int, list[int]] = {}
        for index, classes in enumerate(presence):
            for c in classes:
                self.by_class.setdefault(c, []).append(index)
        self.classes = sorted(self.by_class)

    def _item(self, position: int) -> tuple[int, int, int]:
        rng = np.random.default_rng(mix_seed(self.seed, position, 2))
        if self.classes and rng.random() < self.fraction:
            c = self.classes[int(rng.integers(len(self.classes)))]
            images = self.by_class[c]
            return images[int(rng.integers(len(images)))], mix_seed(self.seed, position, 1), c
        return (*super()._item(position), -1)
