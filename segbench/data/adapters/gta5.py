"""GTA5 (Playing for Data): flat images/ + labels/, palette labels whose index is the Cityscapes id.

Real copies contain image/label pairs of different sizes and images without labels: they are found at construction
from the PNG headers alone (no decoding) and left out with one warning, so an epoch never dies half-way.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ...labels import CITYSCAPES_LUT
from ..base import Problem, SegmentationDataset
from ..pairing import pair_by_suffix, require_dir
from ..readers import image_size, read_palette_index
from ..registry import register_dataset
from ..tables import CITYSCAPES_KNOWN
from .splitlists import SPLIT_DIR, read_split_list, read_split_mat

#: RobustNet's domain-generalization split (train 12388 / val 6382 / test 6181), shipped as text
ROBUSTNET_SPLITS = {"train": "gta5_robustnet_train.txt", "val": "gta5_robustnet_val.txt", "test": "gta5_robustnet_test.txt"}
#: the dataset's own split.mat (read_mapping archive), when the user has put it in the dataset root
OFFICIAL_SPLITS = {"official-train": "trainIds", "official-val": "valIds", "official-test": "testIds"}
FRAME_DIGITS = 5
#: header reads are I/O bound; threads hide the latency of network file systems
HEADER_THREADS = 16


def pair_sizes(pair: tuple[Path, Path]):
    try:
        return image_size(pair[0]), image_size(pair[1])
    except Exception as e:  # a broken header is reported by `data check`; training would fail on it later anyway
        return e


@register_dataset("gta5")
class GTA5(SegmentationDataset):
    """Splits: `all` (24966, the UDA protocol), `train`/`val`/`test` (RobustNet), `official-*` (split.mat)."""

    default_dir = "gta5"
    layout = (
        "  images/00001.png ... 24966.png   (1914x1052 RGB)\n"
        "  labels/00001.png ... 24966.png   (palette PNG, index = Cityscapes label id)\n"
        "  split.mat                        (optional, for the official-* splits)"
    )
    splits = ("all", *ROBUSTNET_SPLITS, *OFFICIAL_SPLITS)
    label_lut = CITYSCAPES_LUT
    known_label_values = CITYSCAPES_KNOWN

    def split_names(self, split: str) -> list[str] | None:
        if split in ROBUSTNET_SPLITS:
            return read_split_list(SPLIT_DIR / ROBUSTNET_SPLITS[split], FRAME_DIGITS)
        if split in OFFICIAL_SPLITS:
            return read_split_mat(self.root / "split.mat", OFFICIAL_SPLITS[split], FRAME_DIGITS)
        return None

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = require_dir(self, self.root / "images", "image")
        labels = require_dir(self, self.root / "labels", "label")
        pairs = pair_by_suffix(images, ".png", labels, (".png",), self.skipped, only=self.split_names(split))
        return self.drop_mismatched(pairs)

    def drop_mismatched(self, pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            sizes = list(pool.map(pair_sizes, pairs))
        kept = []
        for pair, size in zip(pairs, sizes):
            if isinstance(size, Exception):
                self.skipped.append(Problem("unreadable", str(pair[0]), str(size)))
            elif size[0] != size[1]:
                (iw, ih), (lw, lh) = size
                self.skipped.append(Problem("size mismatch", str(pair[0]), f"image {iw}x{ih}, label {lw}x{lh}"))
            else:
                kept.append(pair)
        return kept

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_palette_index(path)
