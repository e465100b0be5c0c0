"""Miniature copies of each official download, in its own layout and file format, for adapter and check tests.

Every label is built from a known trainId map so tests can compare what the adapter decodes with what was written.
Frames are tiny (H x W = 32 x 64) so the whole suite stays fast.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segbench.data.adapters.mapillary import MAPILLARY_ID_TO_TRAINID
from segbench.data.adapters.synthia import SYNTHIA_ID_TO_TRAINID
from segbench.labels import CITYSCAPES_ID_TO_TRAINID, PALETTE

H, W = 32, 64

# trainId -> one raw id per dataset that maps to it (inverse tables)
CS_ID = {t: i for i, t in sorted(CITYSCAPES_ID_TO_TRAINID.items(), reverse=True)}
SYNTHIA_ID = {t: i for i, t in sorted(SYNTHIA_ID_TO_TRAINID.items(), reverse=True)}
MAPILLARY_ID = {t: i for i, t in sorted(MAPILLARY_ID_TO_TRAINID.items(), reverse=True)}


def train_ids(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A trainId map with vertical stripes of classes and an ignored band at the bottom."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(19, size=4, replace=False)
    out = np.repeat(classes, w // 4)[None, :].repeat(h, 0).astype(np.uint8)
    out[-4:] = 255
    return out


def image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 256, (h, w, 3), dtype=np.uint8)


def to_raw(tids: np.ndarray, table: dict[int, int], ignore_raw: int) -> np.ndarray:
    raw = np.full(tids.shape, ignore_raw, dtype=np.int64)
    for t, r in table.items():
        raw[tids == t] = r
    return raw


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, gray: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), gray)


def write_palette(path: Path, index: np.ndarray) -> None:
    """Mode "P" PNG whose index is the class id, with a palette of made-up colours (as the real ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(index.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:19] = PALETTE
    palette[19:] = np.arange(19, 256)[:, None] * np.array([3, 5, 7]) % 256
    im.putpalette(palette.ravel().tolist())
    im.save(path)


def corrupt(path: Path) -> None:
    """Keep the PNG header (so size checks pass) but cut the pixel data: only decoding notices."""
    data = path.read_bytes()
    path.write_bytes(data[: max(40, len(data) // 3)])


# --------------------------------------------------------------------------------------------------- layouts
def make_cityscapes(root: Path, n: dict[str, int] | None = None, trainid_files: bool = False) -> dict[Path, np.ndarray]:
    """leftImg8bit/SPLIT/CITY/..._leftImg8bit.png + gtFine/SPLIT/CITY/..._gtFine_labelIds.png; returns image -> trainIds."""
    truth = {}
    seed = 0
    for split, count in (n or {"train": 3, "val": 2}).items():
        for k in range(count):
            city = ("aachen", "bochum")[k % 2]
            stem = f"{city}_{k:06d}_000019"
            tids = train_ids(seed)
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            write_rgb(img, image(seed))
            lab = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            write_gray(lab, to_raw(tids, CS_ID, 0).astype(np.uint8))
            write_rgb(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", image(seed + 1))
            if trainid_files:
                write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", tids)
            truth[img] = tids
            seed += 1
    return truth


def make_gta5(root: Path, count: int = 6) -> dict[Path, np.ndarray]:
    """images/0000N.png + labels/0000N.png (palette index = Cityscapes id, 0 = unlabeled)."""
    truth = {}
    for k in range(1, count + 1):
        tids = train_ids(k)
        img = root / "images" / f"{k:05d}.png"
        write_rgb(img, image(k))
        write_palette(root / "labels" / f"{k:05d}.png", to_raw(tids, CS_ID, 0))
        truth[img] = tids
    return truth


def make_synthia(root: Path, count: int = 4) -> dict[Path, np.ndarray]:
    """RGB/000000N.png + GT/LABELS/000000N.png: 16-bit 3-channel, class id in R (cv2 writes BGR: R is last)."""
    truth = {}
    for k in range(count):
        tids = train_ids(k)
        img = root / "RGB" / f"{k:07d}.png"
        write_rgb(img, image(k))
        label = np.zeros((H, W, 3), dtype=np.uint16)
        label[:, :, 2] = to_raw(tids, SYNTHIA_ID, 0)
        label[:, :, 1] = 1000 + k  # instance ids in G: must not leak into the class
        label[:, :, 0] = 7
        write_gray(root / "GT" / "LABELS" / f"{k:07d}.png", label)
        truth[img] = tids
    return truth


def make_bdd100k(root: Path, legacy: bool = False, n: dict[str, int] | None = None) -> dict[Path, np.ndarray]:
    truth = {}
    seed = 0
    for split, count in (n or {"train": 2, "val": 2}).items():
        for k in range(count):
            name = f"{k:02x}a1b2c3-d4e5f6{k:02d}"
            tids = train_ids(seed)
            if legacy:
                img, lab = root / "seg/images" / split / f"{name}.jpg", root / "seg/labels" / split / f"{name}_train_id.png"
            else:
                img, lab = root / "images/10k" / split / f"{name}.jpg", root / "labels/sem_seg/masks" / split / f"{name}.png"
            write_rgb(img, image(seed))
            write_gray(lab, tids)
            truth[img] = tids
            seed += 1
    return truth


def make_mapillary(root: Path, nested: bool = False, n: dict[str, int] | None = None) -> dict[Path, np.ndarray]:
    truth = {}
    seed = 0
    for split, count in (n or {"training": 2, "validation": 2}).items():
        for k in range(count):
            name = f"{'abcdefgh'[k]}Xq{seed:04d}"
            tids = train_ids(seed)
            img = root / split / "images" / f"{name}.jpg"
            write_rgb(img, image(seed))
            write_palette(root / split / ("v1.2/labels" if nested else "labels") / f"{name}.png", to_raw(tids, MAPILLARY_ID, 65))
            truth[img] = tids
            seed += 1
    return truth


def make_acdc(root: Path, conditions=("fog", "night", "rain", "snow"), n: dict[str, int] | None = None) -> dict[Path, np.ndarray]:
    truth = {}
    seed = 0
    for condition in conditions:
        for split, count in (n or {"train": 1, "val": 1}).items():
            for k in range(count):
                seq = f"GOPR04{seed:02d}"
                stem = f"{seq}_frame_{k:06d}"
                tids = train_ids(seed)
                img = root / "rgb_anon" / condition / split / seq / f"{stem}_rgb_anon.png"
                write_rgb(img, image(seed))
                write_gray(root / "gt" / condition / split / seq / f"{stem}_gt_labelTrainIds.png", tids)
                truth[img] = tids
                seed += 1
    return truth
