"""The adapter contract every domain follows: find (image, label) pairs on disk, read them, map labels to trainIds.

Training, evaluation and `segbench data check` all read through `load_pair_raw`, so what a check reports is what
training sees. A raw label value outside the dataset's table is never trained or scored as "ignore" without a word:
`load_pair` refuses it (`UnknownLabelError`, naming the file and the values) unless the dataset's `unknown_labels` policy
is "ignore", which training sets from `train.unknown_labels` after counting them (`label_scan`).
The adapters themselves live in `adapters/`; opening one by name is `factory.build_dataset`.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import cv2
import numpy as np
import torch.utils.data

from ..labels import IGNORE_INDEX, NUM_CLASSES
from .registry import DATA_ROOT_ENV, DATASETS, DEFAULT_DATA_ROOT


class DatasetError(RuntimeError):
    """Bad or missing data on disk; the message says which path, what was expected and how to fix it."""

    def __init__(self, *args):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_from_loader_worker(args[0], type(self).__name__),)
        super().__init__(*args)


_WORKER_WRAPPED = re.compile(r"\ACaught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _from_loader_worker(message: str, name: str) -> str:
    """The message itself, when a DataLoader re-raises a worker's error: torch rebuilds the exception from "Caught X in
    DataLoader worker process N. Original Traceback ...", which would bury the file name under a worker's stack."""
    if not _WORKER_WRAPPED.match(message):
        return message
    lines = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}: ", message, re.MULTILINE))
    return message[lines[-1].end():].rstrip("\n") if lines else message


class SizeMismatchError(DatasetError):
    """Image and label differ in size: the pair cannot be aligned, so it must not be trained on."""


class UnknownLabelError(DatasetError):
    """A label file holds raw values its dataset's table does not know: a damaged file or a wrong table."""


class SplitAbsentError(DatasetError):
    """A split whose image directory does not exist: not downloaded (BDD100K's val alone), rather than damaged;
    `data check --split all` lists it as absent instead of failing the check."""


class MissingPairsError(DatasetError):
    """A split to be scored has files without their partner; scoring it would shrink the test set without a word."""


class DatasetWarning(UserWarning):
    """Pairs were left out at construction (one warning per dataset, naming them)."""


@dataclass(frozen=True)
class Problem:
    """One defect of a download: what kind, which file, the details. Collected at construction and by `data check`."""

    kind: str  # one of PROBLEM_KINDS
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


PROBLEM_KINDS = ("missing label", "missing image", "unreadable", "size mismatch", "label values outside the mapping")
#: the kinds that leave a file of the download without its partner (an image without its label or the reverse): a
#: split missing them is smaller than the download it came from, so scoring refuses it (`eval.missing_pairs`)
MISSING_PAIR_KINDS = ("missing label", "missing image")
#: how many offending files a construction-time warning names before it abbreviates
WARN_NAMES = 20


def missing_pairs(dataset) -> list[Problem]:
    """The files of `dataset` left out because their image or label is missing (a union: those of its parts)."""
    parts = getattr(dataset, "parts", None) or [dataset]
    return [p for part in parts for p in getattr(part, "skipped", ()) if p.kind in MISSING_PAIR_KINDS]


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """raw ids -> uint8 trainIds through a lookup table; ids past the table's end become IGNORE_INDEX."""
    if raw.dtype == np.uint8 and len(lut) == 256:
        return cv2.LUT(raw, lut)  # several times faster than fancy indexing on full-size frames
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        out = np.take(lut, np.clip(raw, 0, len(lut) - 1))
        out[(raw < 0) | (raw >= len(lut))] = IGNORE_INDEX
        return out
    return lut[raw]


def known_mask(values: Sequence[int]) -> np.ndarray:
    """Boolean table over raw label values: True where a decoding table knows the value (maps or deliberately ignores it)."""
    known = np.zeros(max(values) + 1, dtype=bool)
    known[list(values)] = True
    return known


#: colour pixels as stored: OpenCV's IMREAD_COLOR alone turns a JPEG by its EXIF orientation, which PIL (RobustNet's
#: reader, `datasets/mapillary.py` and `bdd100k.py`) and the label PNGs drawn on the stored pixels do not
COLOR_AS_STORED = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


#: labels resize with OpenCV's INTER_NEAREST_EXACT, pixel for pixel Pillow's NEAREST (the official codes' label
#: resize): plain INTER_NEAREST takes source pixel floor(i / s) instead of the one under the output pixel's centre,
#: a shift of up to a source pixel towards the top left when shrinking
LABEL_NEAREST = cv2.INTER_NEAREST_EXACT


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), COLOR_AS_STORED)
    if image is None:
        raise DatasetError(f"cannot read image {path}: missing, truncated or not an image file; re-extract it from the download")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_gray(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    label = cv2.imread(str(path), flags)
    if label is None:
        raise DatasetError(f"cannot read label {path}: missing, truncated or not a PNG; re-extract it from the download")
    return label


def transformed(transform: Callable | None, image: np.ndarray, label: np.ndarray):
    """What a dataset item is: the decoded pair, through the dataset's transform when it has one."""
    if transform is None:
        return image, label
    out = transform(image=image, mask=label)
    return out["image"], out["mask"]


class SegmentationDataset(torch.utils.data.Dataset):
    """Base adapter. Subclasses set the class attributes and implement `find_pairs` and `decode_label`."""

    #: directory under the data root where the official download is unpacked
    default_dir: ClassVar[str] = ""
    #: human-readable expected layout, quoted in every "not found" error and in datasets/README.md
    layout: ClassVar[str] = ""
    splits: ClassVar[Sequence[str]] = ("train", "val")
    #: trainIds this dataset is scored on (SYNTHIA has a 16-class protocol too)
    eval_classes: ClassVar[Sequence[int]] = tuple(range(NUM_CLASSES))
    #: raw id -> trainId table used by the default `decode_label`; None when a subclass decodes on its own
    label_lut: ClassVar[np.ndarray | None] = None
    #: raw label values the table knows (mapped or deliberately ignored); others are reported by `data check`.
    #: None: no table to check against.
    known_label_values: ClassVar[Sequence[int] | None] = None
    #: evaluation resizes frames to this height when set (Mapillary's frames are huge and of varying size)
    eval_height: ClassVar[int | None] = None
    #: one of config.UNKNOWN_LABEL_POLICIES; training may set "ignore" on its own instance, everything else reads strictly
    unknown_labels: str = "error"
    #: the split that holds the frames of every other split, where a dataset declares it (GTA5's and SYNTHIA's)
    union_split: ClassVar[str] = "all"
    #: the adapter writes its own files on first use (`prepare`: the embedded domains), so it is never missing
    generated: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        if split not in self.splits:
            raise DatasetError(f"{type(self).__name__}: unknown split {split!r} for {self.root}; valid splits: {', '.join(self.splits)}")
        if not self.root.is_dir():
            raise DatasetError(self.missing_message(f"directory {self.root} does not exist"))
        #: pairs left out at construction (missing labels, size mismatches); `find_pairs` appends to it
        self.skipped: list[Problem] = []
        self.pairs: list[tuple[Path, Path]] = self.find_pairs(split)
        if not self.pairs:
            detail = f" ({len(self.skipped)} candidates skipped: {self.skipped[0]}, ...)" if self.skipped else ""
            raise DatasetError(self.missing_message(f"no image/label pairs for split {split!r} under {self.root}{detail}"))
        if self.skipped:
            warnings.warn(self.skipped_message(), DatasetWarning, stacklevel=2)

    # -- what subclasses provide -------------------------------------------------------------------
    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label image as stored on disk -> uint8 trainIds with IGNORE_INDEX for everything outside the 19 classes."""
        if self.label_lut is None:
            raise NotImplementedError(f"{type(self).__name__} sets no label_lut and must implement decode_label")
        return apply_lut(raw, self.label_lut)

    def known_values(self, path: Path) -> np.ndarray | None:
        """Boolean table over raw values: True where the mapping knows the value. Override when it depends on the file."""
        return None if self.known_label_values is None else known_mask(self.known_label_values)

    def unknown_label_values(self, raw: np.ndarray, path: Path) -> dict[int, int]:
        """{raw value: pixel count} for values outside the mapping (training maps them to IGNORE_INDEX)."""
        known = self.known_values(path)
        if known is None or raw.size == 0:
            return {}
        if raw.dtype.kind == "u" and raw.dtype.itemsize <= 2:
            counts = np.bincount(raw.ravel(), minlength=len(known))
            counts[: len(known)][known] = 0
            return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
        values, counts = np.unique(raw, return_counts=True)
        inside = (values >= 0) & (values < len(known))
        bad = ~inside
        bad[inside] = ~known[values[inside]]
        return {int(v): int(c) for v, c in zip(values[bad], counts[bad])}

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_gray(path)

    def describe_label_value(self, value: int) -> str:
        """A raw value as messages show it (colour-coded labels override: their values are packed colours)."""
        return str(value)

    def label_table_key(self) -> str:
        """What decides which raw values are unknown, for caches of label scans (the known values of each file name)."""
        return repr(self.known_label_values)

    @property
    def dataset_name(self) -> str:
        """The name the dataset is registered under (what `segbench data check` takes), else its class name."""
        return next((n for n in DATASETS.names() if DATASETS.get(n) is type(self)), type(self).__name__)

    # -- shared behaviour --------------------------------------------------------------------------
    @classmethod
    def missing_message(cls, what: str) -> str:
        return (
            f"{what}.\nExpected layout for {cls.__name__} ({cls.default_dir}/ under the data root):\n{cls.layout}\n"
            f"Point segbench at your data with --data-root DIR or the {DATA_ROOT_ENV} environment variable "
            f"(default: ./{DEFAULT_DATA_ROOT}); see datasets/README.md."
        )

    def skipped_message(self) -> str:
        """One message for all skipped pairs: counts per kind, the first few names, where to see the rest."""
        by_kind: dict[str, list[Problem]] = {}
        for problem in self.skipped:
            by_kind.setdefault(problem.kind, []).append(problem)
        parts = []
        for kind, problems in by_kind.items():
            names = ", ".join(Path(p.path).name + (f" [{p.detail}]" if p.detail else "") for p in problems[:WARN_NAMES])
            more = f", ... and {len(problems) - WARN_NAMES} more" if len(problems) > WARN_NAMES else ""
            parts.append(f"{len(problems)} {kind}: {names}{more}")
        return (
            f"{type(self).__name__} {self.split!r} under {self.root}: skipped {len(self.skipped)} of "
            f"{len(self.skipped) + len(self.pairs)} pairs; " + "; ".join(parts)
            + ". `segbench data check` lists every problem."
        )

    @classmethod
    def splits_share_frames(cls, a: str, b: str) -> bool:
        """Whether splits `a` and `b` hold frames in common, from their names alone: the same split, or one of them
        the dataset's union of all (`union_split`). Training on one and scoring on the other scores training images."""
        return a == b or (cls.union_split in (a, b) and cls.union_split in cls.splits)

    @classmethod
    def prepare(cls, root: Path) -> None:
        """Hook for datasets that can create themselves (the embedded synthetic domains); real downloads do nothing."""

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, trainIds) for training and evaluation: refuses raw values outside the table unless the policy
        is "ignore"."""
        image, raw, label = self.load_pair_raw(index)
        if self.unknown_labels != "ignore":
            label_path = self.pairs[index][1]
            unknown = self.unknown_label_values(raw, label_path)
            if unknown:
                raise UnknownLabelError(self.unknown_label_message(label_path, unknown))
        return image, label

    def unknown_label_message(self, label_path: Path, unknown: dict[int, int]) -> str:
        values = ", ".join(f"{self.describe_label_value(v)} ({c} px)" for v, c in sorted(unknown.items()))
        return (
            f"label {label_path} holds raw values outside the {self.dataset_name} label table: {values}. Fix or remove the "
            f"file (`segbench data check {self.dataset_name} --split all` lists every such file), add the values to the "
            "dataset's table, or train with --set train.unknown_labels=ignore to train them as ignored (counted in the "
            "record; evaluation never ignores them)"
        )

    def load_pair_raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(RGB image, label as stored, trainIds): the one reader behind training, evaluation and `data check`."""
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        raw = self.read_raw_label(label_path)
        label = self.decode_label(raw, label_path)
        if image.shape[:2] != label.shape[:2]:
            raise SizeMismatchError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]}; remove the pair or re-extract it"
            )
        return image, raw, label

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        return transformed(self.transform, *self.load_pair(index))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, pairs={len(self)})"


__all__ = [
    "DatasetError", "DatasetWarning", "MISSING_PAIR_KINDS", "MissingPairsError", "PROBLEM_KINDS", "Problem",
    "SegmentationDataset", "SizeMismatchError", "SplitAbsentError", "UnknownLabelError",
    "apply_lut", "known_mask", "missing_pairs", "read_gray", "read_rgb",
]
