"""The adapter contract every domain follows: find (image, label) pairs on disk, read them, map labels to trainIds.

Training, evaluation and `segbench data check` all go through `load_pair`, so what a check reports is what training sees.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import cv2
import numpy as np
import torch.utils.data

from ..labels import IGNORE_INDEX, NUM_CLASSES
from ..registry import Registry

DATASETS = Registry("dataset")

DATA_ROOT_ENV = "SEGBENCH_DATA"
DEFAULT_DATA_ROOT = "datasets"


class DatasetError(RuntimeError):
    """Bad or missing data on disk; the message says which path, what was expected and how to fix it."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """--data-root wins, then $SEGBENCH_DATA, then ./datasets."""
    return Path(explicit or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path}: missing, truncated or not an image file; re-extract it from the download")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_gray(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    label = cv2.imread(str(path), flags)
    if label is None:
        raise DatasetError(f"cannot read label {path}: missing, truncated or not a PNG; re-extract it from the download")
    return label


class SegmentationDataset(torch.utils.data.Dataset):
    """Base adapter. Subclasses set the class attributes and implement `find_pairs` and `decode_label`."""

    #: directory under the data root where the official download is unpacked
    default_dir: ClassVar[str] = ""
    #: human-readable expected layout, quoted in every "not found" error and in datasets/README.md
    layout: ClassVar[str] = ""
    splits: ClassVar[Sequence[str]] = ("train", "val")
    #: trainIds this dataset is scored on (SYNTHIA has a 16-class protocol too)
    eval_classes: ClassVar[Sequence[int]] = tuple(range(NUM_CLASSES))

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if split not in self.splits:
            raise DatasetError(f"{type(self).__name__}: unknown split {split!r} for {self.root}; valid splits: {', '.join(self.splits)}")
        if not self.root.is_dir():
            raise DatasetError(self.missing_message(f"directory {self.root} does not exist"))
        self.pairs: list[tuple[Path, Path]] = self.find_pairs(split)
        if not self.pairs:
            raise DatasetError(self.missing_message(f"no image/label pairs for split {split!r} under {self.root}"))

    # -- what subclasses provide -------------------------------------------------------------------
    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label image as stored on disk -> uint8 trainIds with IGNORE_INDEX for everything outside the 19 classes."""
        raise NotImplementedError

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_gray(path)

    # -- shared behaviour --------------------------------------------------------------------------
    @classmethod
    def missing_message(cls, what: str) -> str:
        return (
            f"{what}.\nExpected layout for {cls.__name__} ({cls.default_dir}/ under the data root):\n{cls.layout}\n"
            f"Point segbench at your data with --data-root DIR or the {DATA_ROOT_ENV} environment variable "
            f"(default: ./{DEFAULT_DATA_ROOT}); see datasets/README.md."
        )

    @classmethod
    def prepare(cls, root: Path) -> None:
        """Hook for datasets that can create themselves (the embedded synthetic domains); real downloads do nothing."""

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        label = self.decode_label(self.read_raw_label(label_path), label_path)
        if image.shape[:2] != label.shape[:2]:
            raise DatasetError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}; remove the pair or re-extract it"
            )
        return image, label

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, label = self.load_pair(index)
        if self.transform is None:
            return image, label
        out = self.transform(image=image, mask=label)
        return out["image"], out["mask"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


def build_dataset(name: str, split: str, root: str | os.PathLike | None = None, transform: Callable | None = None):
    """Look the adapter up by name and open it under `<data root>/<its default_dir>`."""
    cls = DATASETS.get(name)
    path = data_root(root) / cls.default_dir
    cls.prepare(path)
    return cls(path, split=split, transform=transform)


__all__ = [
    "DATASETS", "DatasetError", "SegmentationDataset", "build_dataset", "data_root", "read_rgb", "read_gray",
    "IGNORE_INDEX", "NUM_CLASSES",
]
