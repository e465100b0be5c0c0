"""`segbench data prepare NAME --size WxH`: write resized uint8 copies once, so training stops decoding full frames.

Images are resized with INTER_AREA (INTER_LINEAR when enlarging), labels with NEAREST on the decoded trainIds, so
the cache needs no id table. Pairs the adapter skips or cannot read are left out and counted. Each file is written
under a temporary name and renamed, and finished files are kept, so an interrupted prepare resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
from tqdm import tqdm

from .base import DATASETS, DatasetError, Problem, SegmentationDataset, data_root
from .prepared import MANIFEST, prepared_name, prepared_path
from .workers import worker_init_fn

#: zlib level of the cached images. Lossless at any level; level 0 (stored) decodes ~4x faster than 1 but takes
#: ~1.7x the disk (GTA5 at 1280x720: about 67 GB instead of 40 GB). Labels always use level 1: they compress well.
DEFAULT_PNG_COMPRESSION = 1
LABEL_PNG_COMPRESSION = 1


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
    return cv2.resize(image, size, interpolation=interpolation), cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)


_WORKER_DATASET: SegmentationDataset | None = None


def _init_worker(dataset: SegmentationDataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    worker_init_fn(0)


def _prepare_one(job: tuple[int, str, str, tuple[int, int], int]):
    index, image_out, label_out, size, compression = job
    dataset = _WORKER_DATASET
    try:
        image, label = dataset.load_pair(index)
    except DatasetError as e:
        return index, str(e)
    image, label = resize_pair(image, label, size)
    write_png(Path(image_out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), compression)
    write_png(Path(label_out), label, LABEL_PNG_COMPRESSION)
    return index, None


def open_splits(cls, root: Path) -> dict[str, SegmentationDataset]:
    """Every split of the dataset that can be opened here (e.g. GTA5's official-* need split.mat)."""
    opened, errors = {}, {}
    for split in cls.splits:
        try:
            opened[split] = cls(root, split=split)
        except DatasetError as e:
            errors[split] = str(e).splitlines()[0]
    if not opened:
        raise DatasetError(f"no split of {cls.__name__} could be opened under {root}:\n" + "\n".join(f"  {s}: {m}" for s, m in errors.items()))
    for split, message in errors.items():
        print(f"prepare: split {split!r} not available here, left out ({message[:120]})", file=sys.stderr)
    return opened


def prepare_dataset(name: str, size: tuple[int, int], root: str | os.PathLike | None = None,
                    data_root_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    workers: int = 0, progress: bool = True,
                    png_compression: int = DEFAULT_PNG_COMPRESSION) -> tuple[Path, list[Problem]]:
    """Write the cache and its manifest; returns where, and the pairs left out."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; registered: {', '.join(DATASETS.names())}")
    cls = DATASETS.get(name)
    source_root = Path(root) if root else data_root(data_root_dir) / cls.default_dir
    cls.prepare(source_root)
    splits = open_splits(cls, source_root)
    out_dir = Path(out) if out else prepared_path(name, size, data_root_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)

    # one job per distinct pair over all splits (GTA5's `all` contains its other splits)
    reader = next(iter(splits.values()))
    keys: dict[str, list[str]] = {}
    union: dict[Path, tuple[Path, Path]] = {}
    problems: dict[str, Problem] = {}
    for split, ds in splits.items():
        keys[split] = [pair_key(ds, image) for image, _ in ds.pairs]
        union.update({image: (image, label) for image, label in ds.pairs})
        problems.update({p.path: p for p in ds.skipped})
    reader.pairs = list(union.values())
    jobs = []
    for index, (image, _) in enumerate(reader.pairs):
        key = pair_key(reader, image)
        image_out, label_out = out_dir / "images" / f"{key}.png", out_dir / "labels" / f"{key}.png"
        if not (image_out.is_file() and label_out.is_file()):
            jobs.append((index, str(image_out), str(label_out), size, png_compression))

    failed = set()
    bar = tqdm(total=len(jobs), unit="pair", file=sys.stderr, disable=not progress, desc=f"prepare {prepared_name(name, size)}")
    if workers > 0:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(reader,)) as pool:
            results = pool.map(_prepare_one, jobs, chunksize=16)
            for index, error in results:
                bar.update()
                if error:
                    failed.add(index)
                    problems[str(reader.pairs[index][0])] = Problem("unreadable", str(reader.pairs[index][0]), error)
    else:
        _init_worker(reader)
        for job in jobs:
            index, error = _prepare_one(job)
            bar.update()
            if error:
                failed.add(index)
                problems[str(reader.pairs[index][0])] = Problem("unreadable", str(reader.pairs[index][0]), error)
    bar.close()

    bad_keys = {pair_key(reader, reader.pairs[i][0]) for i in failed}
    manifest = {
        "name": prepared_name(name, size),
        "source": name,
        "source_root": str(source_root),
        "size": list(size),
        "eval_classes": list(cls.eval_classes),
        "splits": {split: [k for k in ks if k not in bad_keys] for split, ks in keys.items()},
        "left_out": [{"kind": p.kind, "path": p.path, "detail": p.detail} for p in problems.values()],
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out_dir / MANIFEST)
    return out_dir, list(problems.values())
