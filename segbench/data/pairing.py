"""Find (image, label) pairs by walking a directory once and matching names, recording what is missing.

One listing per directory instead of one `stat` per candidate: this matters on network file systems with 25k frames.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Sequence

from .base import DatasetError, Problem, SplitAbsentError


def list_files(directory: Path, suffix: str) -> list[str]:
    """Paths relative to `directory` (with "/"), of files whose name ends in `suffix`, sorted, recursing."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        rel = os.path.relpath(dirpath, directory)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + name for name in filenames if name.endswith(suffix))
    return sorted(found)


def pair_by_suffix(
    image_dir: Path,
    image_suffix: str,
    label_dir: Path,
    label_suffixes: Sequence[str],
    skipped: list[Problem],
    only: Collection[str] | None = None,
) -> list[tuple[Path, Path]]:
    """Pair `image_dir/REL/STEM+image_suffix` with the first existing `label_dir/REL/STEM+label_suffix`.

    Images without a label are appended to `skipped` as "missing label", labels without an image as "missing image"
    (a partly extracted download: the test set would shrink without a word). `only` restricts to these image file
    names (a split list); names in it with no image become "missing image", and labels of frames outside it are not
    looked at.
    """
    labels = set()
    for suffix in label_suffixes:
        labels.update(list_files(label_dir, suffix))
    images = list_files(image_dir, image_suffix)
    if only is not None:
        wanted = set(only)
        present = {rel.rsplit("/", 1)[-1] for rel in images}
        skipped.extend(Problem("missing image", str(image_dir / name), "listed in the split") for name in sorted(wanted - present))
        images = [rel for rel in images if rel.rsplit("/", 1)[-1] in wanted]
    pairs = []
    for rel in images:
        stem = rel[: len(rel) - len(image_suffix)]
        label = next((stem + s for s in label_suffixes if stem + s in labels), None)
        if label is None:
            expected = label_dir / (stem + label_suffixes[0])
            skipped.append(Problem("missing label", str(image_dir / rel), f"expected {expected}"))
            continue
        pairs.append((image_dir / rel, label_dir / label))
    if only is None:
        skipped.extend(labels_without_image(image_dir, image_suffix, images, label_dir, label_suffixes, labels))
    return pairs


def labels_without_image(image_dir: Path, image_suffix: str, images: list[str], label_dir: Path,
                         label_suffixes: Sequence[str], labels: set[str]) -> list[Problem]:
    """A "missing image" problem for each label file (`labels`, relative to `label_dir`) whose frame has no image
    among `images` (relative to `image_dir`). A frame with labels in two encodings (Cityscapes' labelIds and
    labelTrainIds) is one frame; a file both listings hold (images and labels in one directory) is an image."""
    stems = {rel[: len(rel) - len(image_suffix)] for rel in images}
    image_files = {image_dir / rel for rel in images}
    problems = []
    for rel in sorted(labels):
        suffix = next(s for s in sorted(label_suffixes, key=len, reverse=True) if rel.endswith(s))
        stem = rel[: len(rel) - len(suffix)]
        if stem in stems or label_dir / rel in image_files:
            continue
        problems.append(Problem("missing image", str(label_dir / rel), f"no image {image_dir / (stem + image_suffix)}"))
    return problems


def require_dir(dataset, path: Path, what: str) -> Path:
    """Fail early, naming the missing directory and the layout the adapter expects. A missing image directory means
    the split is absent (SplitAbsentError); a missing label directory beside its images, a damaged download."""
    if not path.is_dir():
        error = SplitAbsentError if what == "image" else DatasetError
        raise error(dataset.missing_message(f"{what} directory {path} does not exist"))
    return path
