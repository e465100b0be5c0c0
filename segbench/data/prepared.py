"""Reading the resized cache written by `segbench data prepare`: `build_dataset("gta5@1280x720", ...)`.

Layout: `<data root>/prepared/NAME@WxH/{images,labels}/KEY.png` (labels hold trainIds) and `manifest.json` listing
the keys of every split. The manifest is written last, so a half-finished prepare is never mistaken for a cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .base import DATASETS, DatasetError, SegmentationDataset, data_root
from .tables import TRAINID_KNOWN, TRAINID_LUT

PREPARED_DIR = "prepared"
MANIFEST = "manifest.json"


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise DatasetError(f"bad size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1280x720") from None
    return w, h


def prepared_name(name: str, size: tuple[int, int]) -> str:
    return f"{name}@{size[0]}x{size[1]}"


def prepared_path(name: str, size: tuple[int, int], root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / PREPARED_DIR / prepared_name(name, size)


class PreparedDataset(SegmentationDataset):
    """Resized uint8 copies: images as RGB PNG, labels already decoded to trainIds."""

    default_dir = PREPARED_DIR
    layout = "  manifest.json\n  images/KEY.png\n  labels/KEY.png   (trainIds)"
    label_lut = TRAINID_LUT
    known_label_values = TRAINID_KNOWN

    def __init__(self, root, split: str, transform: Callable | None, manifest: dict, eval_height: int | None = None):
        # per-instance, not a generated class per cache: instances must pickle into DataLoader workers
        self.manifest = manifest
        self.name = manifest["name"]
        self.splits = tuple(manifest["splits"])
        self.eval_classes = tuple(manifest["eval_classes"])
        self.eval_height = eval_height
        super().__init__(root, split, transform)

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        return [(self.root / "images" / f"{k}.png", self.root / "labels" / f"{k}.png") for k in self.manifest["splits"][split]]


def load_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        source, _, size = path.name.partition("@")
        raise DatasetError(
            f"no prepared copy at {path} ({MANIFEST} missing): run `segbench data prepare {source} --size {size}` "
            f"with the same data root first (an interrupted prepare writes no manifest; rerun it to finish)"
        )
    return json.loads(manifest_path.read_text())


def open_prepared(name: str, split: str, root: str | os.PathLike | None = None, transform: Callable | None = None,
                  path: Path | None = None) -> PreparedDataset:
    """`NAME@WxH` -> the cached dataset; it keeps the source's eval classes and splits."""
    source, _, size_text = name.partition("@")
    path = path or prepared_path(source, parse_size(size_text), root)
    manifest = load_manifest(path)
    source_cls = DATASETS.get(source) if source in DATASETS else None
    return PreparedDataset(path, split, transform, manifest, getattr(source_cls, "eval_height", None))
