"""The resized cache of a dataset: `segbench data prepare NAME --size WxH` writes it, `NAME@WxH` reads it back.

Layout: `<data root>/prepared/NAME@WxH/{images,labels}/KEY.png` (labels hold trainIds) and `manifest.json` listing
the keys of every split. Writer and reader share this layout, so both live here.

Writing: images are resized with INTER_AREA (INTER_LINEAR when enlarging), labels with Pillow's nearest rule
(base.LABEL_NEAREST) on the decoded trainIds, so the cache needs no id table. Pairs the adapter skips or cannot read,
and labels holding values outside the table (the cache would turn them into "ignore" for good), are left out and
listed in the manifest. Each file is written under a temporary name and renamed, and finished files are kept, so an
interrupted prepare resumes where it stopped; the manifest is written last, so a half-finished prepare is never
mistaken for a cache.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import cv2
from tqdm import tqdm

from ..spec import prepared_copy, prepared_parts
from .base import LABEL_NEAREST, MISSING_PAIR_KINDS, DatasetError, Problem, SegmentationDataset, UnknownLabelError
from .registry import DATASETS, data_root
from .tables import TRAINID_KNOWN, TRAINID_LUT
from .workers import worker_init_fn

PREPARED_DIR = "prepared"
MANIFEST = "manifest.json"
#: zlib level of the cached images. Lossless at any level; level 0 (stored) decodes ~4x faster than 1 but takes
#: ~1.7x the disk (GTA5 at 1280x720: about 67 GB instead of 40 GB). Labels always use level 1: they compress well.
DEFAULT_PNG_COMPRESSION = 1
LABEL_PNG_COMPRESSION = 1


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise DatasetError(f"bad size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1280x720") from None
    return w, h


def size_argument(text: str) -> tuple[int, int]:
    """argparse type for every `--size`: WxH on the command line (how people name resolutions, and how prepared
    caches are named), (H, W) in the program (the order of tensors and of `train.crop` / `eval.size`)."""
    try:
        w, h = parse_size(text)
    except DatasetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return h, w


def prepared_name(name: str, size: tuple[int, int]) -> str:
    return prepared_copy(name, f"{size[0]}x{size[1]}")


def prepared_path(name: str, size: tuple[int, int], root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / PREPARED_DIR / prepared_name(name, size)


# ------------------------------------------------------------------------------------------------ reading
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

    @property
    def dataset_name(self) -> str:
        return self.name

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        # the source's files without their partner stay missing in the copy: scoring it refuses them as it would there
        self.skipped += [Problem(p["kind"], p["path"], p.get("detail", "")) for p in self.manifest.get("left_out", [])
                         if p["kind"] in MISSING_PAIR_KINDS and split in p.get("splits", ())]
        return [(self.root / "images" / f"{k}.png", self.root / "labels" / f"{k}.png") for k in self.manifest["splits"][split]]


def load_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        source, size = prepared_parts(path.name)
        raise DatasetError(
            f"no prepared copy at {path} ({MANIFEST} missing): run `segbench data prepare {source} --size {size}` "
            f"with the same data root first (an interrupted prepare writes no manifest; rerun it to finish)"
        )
    return json.loads(manifest_path.read_text())


def open_prepared(name: str, split: str | None = None, root: str | os.PathLike | None = None,
                  transform: Callable | None = None, path: str | os.PathLike | None = None) -> PreparedDataset:
    """`NAME@WxH` -> the cached dataset (under the data root `root`, or at `path`); it keeps the source's eval classes
    and splits. No `split`: the first one the manifest lists."""
    source, size_text = prepared_parts(name)
    path = Path(path) if path else prepared_path(source, parse_size(size_text), root)
    manifest = load_manifest(path)
    source_cls = DATASETS.get(source) if source in DATASETS else None
    split = split or next(iter(manifest["splits"]))
    return PreparedDataset(path, split, transform, manifest, getattr(source_cls, "eval_height", None))


# ------------------------------------------------------------------------------------------------ writing
def pair_key(dataset: SegmentationDataset, image_path: Path) -> str:
    """File name in the cache: the image's path under the dataset root, flattened, without its suffix."""
    rel = image_path.relative_to(dataset.root).with_suffix("")
    return "__".join(rel.parts)


def write_png(path: Path, array, compression: int) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), array, [cv2.IMWRITE_PNG_COMPRESSION, compression]):
        raise DatasetError(f"cannot write {tmp}: is the disk full or the directory read-only?")
    os.replace(tmp, path)


def resize_pair(image, label, size: tuple[int, int]):
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if size[0] * size[1] <= w * h else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(label, size, interpolation=LABEL_NEAREST)


_WORKER_DATASET: SegmentationDataset | None = None


def _init_worker(dataset: SegmentationDataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    worker_init_fn(0)


def _prepare_one(job: tuple[int, str, str, tuple[int, int], int]):
    index, image_out, label_out, size, compression = job
    dataset = _WORKER_DATASET
    try:
        image, label = dataset.load_pair(index)  # refuses unknown label values: the cache must not hide them as ignore
    except UnknownLabelError as e:
        return index, Problem("label values outside the mapping", str(dataset.pairs[index][1]), str(e))
    except DatasetError as e:
        return index, Problem("unreadable", str(dataset.pairs[index][0]), str(e))
    image, label = resize_pair(image, label, size)
    write_png(Path(image_out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), compression)
    write_png(Path(label_out), label, LABEL_PNG_COMPRESSION)
    return index, None


def write_cache(name: str, size: tuple[int, int], splits: Mapping[str, SegmentationDataset], out: Path,
                workers: int = 0, progress: bool = True,
                png_compression: int = DEFAULT_PNG_COMPRESSION) -> list[Problem]:
    """Write the cache of dataset `name` (its opened `splits`, all of one root) and its manifest into `out`; returns
    the pairs left out."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)

    # one job per distinct pair over all splits (GTA5's `all` contains its other splits)
    first = next(iter(splits.values()))
    reader = copy.copy(first)  # reads the union of the splits; the caller's dataset keeps its own pairs
    keys: dict[str, list[str]] = {}
    union: dict[Path, tuple[Path, Path]] = {}
    problems: dict[str, Problem] = {}
    problem_splits: dict[str, list[str]] = {}  # which splits each left-out pair belongs to: where `data check` finds it
    for split, ds in splits.items():
        keys[split] = [pair_key(ds, image) for image, _ in ds.pairs]
        union.update({image: (image, label) for image, label in ds.pairs})
        for p in ds.skipped:
            problems[p.path] = p
            problem_splits.setdefault(p.path, []).append(split)
    reader.pairs = list(union.values())
    jobs = []
    for index, (image, _) in enumerate(reader.pairs):
        key = pair_key(reader, image)
        image_out, label_out = out / "images" / f"{key}.png", out / "labels" / f"{key}.png"
        if not (image_out.is_file() and label_out.is_file()):
            jobs.append((index, str(image_out), str(label_out), size, png_compression))

    failed = set()
    bar = tqdm(total=len(jobs), unit="pair", file=sys.stderr, disable=not progress, desc=f"prepare {prepared_name(name, size)}")
    if workers > 0:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(reader,)) as pool:
            results = pool.map(_prepare_one, jobs, chunksize=16)
            for index, problem in results:
                bar.update()
                if problem:
                    failed.add(index)
                    problems[str(reader.pairs[index][0])] = problem
    else:
        _init_worker(reader)
        for job in jobs:
            index, problem = _prepare_one(job)
            bar.update()
            if problem:
                failed.add(index)
                problems[str(reader.pairs[index][0])] = problem
    bar.close()

    bad_keys = set()
    for i in failed:
        key = pair_key(reader, reader.pairs[i][0])
        bad_keys.add(key)
        problem_splits[str(reader.pairs[i][0])] = [split for split, ks in keys.items() if key in ks]
    manifest = {
        "name": prepared_name(name, size),
        "source": name,
        "source_root": str(first.root),
        "size": list(size),
        "eval_classes": list(first.eval_classes),
        "splits": {split: [k for k in ks if k not in bad_keys] for split, ks in keys.items()},
        "left_out": [{"kind": p.kind, "path": p.path, "detail": p.detail, "splits": problem_splits.get(key, [])}
                     for key, p in problems.items()],
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return list(problems.values())
