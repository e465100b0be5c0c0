"""Data-path throughput per DataLoader worker on full-size GTA5-like frames (a benchmark, not a test).

    python benchmarks/bench_data.py [--frames 8] [--passes 3]

Generates 1914x1052 RGB PNGs and palette labels in a temporary GTA5 tree, then times, in one process set up like a
DataLoader worker (one torch thread, OpenCV threads off):
  read only      segbench's GTA5 reader (cv2 decode, palette index, LUT)  vs  PIL open + convert + numpy LUT
  read + train   the above + random scale 0.5-2, crop 768, flip, to tensor, normalise:
                 segbench.data.transforms.build_train_transform  vs  PIL + torchvision.transforms doing the same
  prepared       segbench reader + train transform on `segbench data prepare gta5 --size 1280x720` copies
                 (default zlib level 1, and --png-compression 0)
and prints images/s with the ratios. `make_tree` and `loader_rate` are what benchmarks/gpu_check.py calls.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms as T  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402

from segbench.config import TrainSettings  # noqa: E402
from segbench.data.adapters.gta5 import GTA5  # noqa: E402
from segbench.data.cache import open_prepared  # noqa: E402
from segbench.data.factory import build_dataset, prepare_dataset  # noqa: E402
from segbench.data.workers import worker_init_fn  # noqa: E402
from segbench.engine.train import make_loader  # noqa: E402
from segbench.labels import CITYSCAPES_LUT, IGNORE_INDEX  # noqa: E402

W, H = 1914, 1052
CROP = 768
SCALE = (0.5, 2.0)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def synth_frame(seed: int, size: tuple[int, int] = (W, H)) -> tuple[np.ndarray, np.ndarray]:
    """A frame that compresses like a rendered street scene: smooth regions, edges, mild noise. `size` is (W, H)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ids = np.zeros((height, width), np.uint8)
    image = np.zeros((height, width, 3), np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(40):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(60, 700), rng.integers(40, 400)
        ids[y0:y0 + h, x0:x0 + w] = rng.choice([7, 8, 11, 17, 21, 23, 24, 26, 0])
    base = rng.uniform(0, 255, (256, 3)).astype(np.float32)
    image[:] = base[ids]
    image += 30 * np.sin(xx / rng.uniform(20, 200))[..., None] * np.cos(yy / rng.uniform(20, 200))[..., None]
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), ids


PALETTE = (np.arange(256)[:, None] * np.array([37, 91, 13]) % 256).astype(np.uint8).ravel().tolist()


def write_frame(root: Path, k: int, size: tuple[int, int] = (W, H)) -> None:
    """Frame k as GTA5 stores it: an RGB PNG and a palette PNG whose indices are Cityscapes label ids."""
    image, ids = synth_frame(k, size)
    cv2.imwrite(str(root / "images" / f"{k:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    label = Image.fromarray(ids, mode="P")
    label.putpalette(PALETTE)
    label.save(root / "labels" / f"{k:05d}.png")


def make_tree(root: Path, frames: int, size: tuple[int, int] = (W, H), workers: int = 0) -> None:
    """A GTA5 tree of `frames` frames of `size` (W, H), written by `workers` processes (0: this one)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    jobs = [(root, k, size) for k in range(1, frames + 1)]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.starmap(write_frame, jobs)
    else:
        for job in jobs:
            write_frame(*job)


def loader_rate(dataset, transform, *, batch: int, workers: int, rounds: int, device: torch.device) -> dict:
    """Images/s of segbench's training DataLoader (segbench.engine.train.make_loader: seeded stream, `workers`
    processes, pinned memory on CUDA) with each batch copied to `device`, and nothing else running.

    The clock starts once the first round of batches (one per worker) has arrived, so worker start-up is reported
    apart (`startup_s`) and the rate is the steady one over the remaining `rounds - 1` rounds.
    """
    if rounds < 2:
        raise ValueError(f"rounds={rounds}: the first round is start-up, at least one more is timed")
    per_round = max(workers, 1)
    total = per_round * rounds
    settings = TrainSettings(iters=total, batch_size=batch, workers=workers, ckpt_every=0)
    start = time.perf_counter()
    loader = make_loader(dataset, transform, settings, seed=0, start_iter=0, device=device)
    clock, images = None, 0
    for i, (image, mask, _domains) in enumerate(loader):
        image, mask = image.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        if clock is not None:
            images += image.shape[0]
        if i == per_round - 1:
            _sync(device)
            clock = time.perf_counter()
    _sync(device)
    seconds = time.perf_counter() - clock
    return {"images_per_s": images / seconds, "startup_s": clock - start, "timed_images": images,
            "timed_s": seconds, "workers": workers, "batch": batch}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ PIL baseline
def pil_read(image_path: Path, label_path: Path):
    image = Image.open(image_path).convert("RGB")
    label = Image.fromarray(CITYSCAPES_LUT[np.asarray(Image.open(label_path))])
    return image, label


class PilTrainTransform:
    """The usual PIL + torchvision.transforms pipeline: the same operations as segbench's train preset."""

    def __call__(self, image: Image.Image, label: Image.Image):
        s = random.uniform(*SCALE)
        size = (int(image.height * s + 0.5), int(image.width * s + 0.5))
        image = TF.resize(image, size, T.InterpolationMode.BILINEAR)
        label = TF.resize(label, size, T.InterpolationMode.NEAREST)
        pad_h, pad_w = max(CROP - size[0], 0), max(CROP - size[1], 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
            label = TF.pad(label, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
        i, j, h, w = T.RandomCrop.get_params(image, (CROP, CROP))
        image, label = TF.crop(image, i, j, h, w), TF.crop(label, i, j, h, w)
        if random.random() < 0.5:
            image, label = TF.hflip(image), TF.hflip(label)
        tensor = TF.normalize(TF.to_tensor(image), MEAN, STD)
        return tensor, torch.from_numpy(np.asarray(label, dtype=np.int64))


# ------------------------------------------------------------------------------------------------ timing
def rate(fn, n: int, passes: int) -> float:
    fn(0)  # warm up caches and lazy imports
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(n):
            fn(i)
    return passes * n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--dir", help="keep the generated tree here (default: a temporary directory)")
    args = parser.parse_args(argv)

    from segbench.data.transforms import build_train_transform

    torch.set_num_threads(1)  # what a DataLoader worker gets
    worker_init_fn(0)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(args.dir or tmp)
        print(f"generating {args.frames} GTA5-like frames ({W}x{H}) in {data_root} ...", file=sys.stderr)
        make_tree(data_root / "gta5", args.frames)
        mb = sum(p.stat().st_size for p in (data_root / "gta5/images").iterdir()) / args.frames / 2**20
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = GTA5(data_root / "gta5", "all")
            prepare_dataset("gta5", (1280, 720), data_root_dir=data_root, progress=False)
            prepared = build_dataset("gta5@1280x720", "all", root=data_root)
            fast_dir = data_root / "prepared-stored"
            prepare_dataset("gta5", (1280, 720), data_root_dir=data_root, out=fast_dir, progress=False, png_compression=0)
            prepared_fast = open_prepared("gta5@1280x720", "all", path=fast_dir)
        train = build_train_transform(crop_size=(CROP, CROP), scale_range=SCALE)
        pil_train = PilTrainTransform()

        def seg_read(i):
            return ds.load_pair(i)

        def base_read(i):
            image, label = pil_read(*ds.pairs[i])
            return np.asarray(image), np.asarray(label)

        def seg_train(i):
            image, label = ds.load_pair(i)
            return train(image=image, mask=label)

        def base_train(i):
            return pil_train(*pil_read(*ds.pairs[i]))

        def prep_train(i):
            image, label = prepared.load_pair(i)
            return train(image=image, mask=label)

        def prep_fast_train(i):
            image, label = prepared_fast.load_pair(i)
            return train(image=image, mask=label)

        n, p = args.frames, args.passes
        results = {
            "read only: segbench (cv2)": rate(seg_read, n, p),
            "read only: PIL": rate(base_read, n, p),
            "read+train: segbench": rate(seg_train, n, p),
            "read+train: PIL+torchvision": rate(base_train, n, p),
            "read+train: segbench on 1280x720 cache": rate(prep_train, n, p),
            "read+train: same, cache --png-compression 0": rate(prep_fast_train, n, p),
        }
    print(f"\nper worker (1 process, 1 torch thread, cv2 threads off); {n} frames x {p} passes; PNG {mb:.1f} MiB/frame")
    for name, value in results.items():
        print(f"  {name:<42} {value:7.2f} images/s")
    r = list(results.values())
    print(f"\n  reader speed-up vs PIL:                  x{r[0] / r[1]:.2f}")
    print(f"  read+train speed-up vs PIL+torchvision:  x{r[2] / r[3]:.2f}")
    print(f"  prepared 1280x720 cache vs full frames:  x{r[4] / r[2]:.2f}")
    print(f"  prepared cache vs PIL+torchvision:       x{r[4] / r[3]:.2f}")
    print(f"  prepared cache, level 0 vs full frames:  x{r[5] / r[2]:.2f}")
    print(f"  prepared cache, level 0 vs PIL+tv:       x{r[5] / r[3]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
