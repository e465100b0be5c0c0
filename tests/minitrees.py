"""Miniature copies of each official download, in its own layout and file format, for adapter and check tests.

Labels are written as the raw ids each download stores, and every frame holds *every* raw id of its dataset (the ones
mapped to a class and the ignored ones), so a single wrong entry in an adapter's id table changes the decoded frame.
The expected trainIds come from the tables in `label_tables.py`, typed in from the primary sources, never from segbench.
Frames are tiny (H x W = 32 x 64) so the whole suite stays fast.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import label_tables as lt
from segbench.labels import PALETTE

H, W = 32, 64
BLOCK = 4  # raw ids are laid out in BLOCK x BLOCK squares: (H / 4) * (W / 4) = 128 squares, more than Mapillary's 66 ids

# trainId -> one Cityscapes id that maps to it (Cityscapes is one-to-one)
CS_ID = {t: i for i, t in lt.CITYSCAPES_ID_TO_TRAINID.items()}


def train_ids(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A trainId map with vertical stripes of classes and an ignored band at the bottom."""
    rng = np.random.default_rng(seed)
    classes = rng.choice(19, size=4, replace=False)
    out = np.repeat(classes, w // 4)[None, :].repeat(h, 0).astype(np.uint8)
    out[-4:] = 255
    return out


def raw_frame(raw_ids, seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Every id of `raw_ids` in at least one BLOCK x BLOCK square, the remaining squares drawn from them, shuffled per seed."""
    rows, cols = h // BLOCK, w // BLOCK
    ids = np.asarray(raw_ids, dtype=np.int64)
    assert len(ids) <= rows * cols, "frame too small to hold every raw id"
    rng = np.random.default_rng(seed)
    cells = np.concatenate([ids, rng.choice(ids, rows * cols - len(ids))])
    rng.shuffle(cells)
    return cells.reshape(rows, cols).repeat(BLOCK, 0).repeat(BLOCK, 1)


def decode(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Expected trainIds of a raw frame: the independent table, 255 for every id it does not list."""
    out = np.full(raw.shape, lt.IGNORE, dtype=np.uint8)
    for r, t in table.items():
        out[raw == r] = t
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
            raw = raw_frame(lt.CITYSCAPES_RAW_IDS, seed)
            tids = decode(raw, lt.CITYSCAPES_ID_TO_TRAINID)
            img = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            write_rgb(img, image(seed))
            write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw.astype(np.uint8))
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
        raw = raw_frame(lt.CITYSCAPES_RAW_IDS, k)
        img = root / "images" / f"{k:05d}.png"
        write_rgb(img, image(k))
        write_palette(root / "labels" / f"{k:05d}.png", raw)
        truth[img] = decode(raw, lt.CITYSCAPES_ID_TO_TRAINID)
    return truth


def make_synthia(root: Path, count: int = 4) -> dict[Path, np.ndarray]:
    """RGB/000000N.png + GT/LABELS/000000N.png: 16-bit 3-channel, class id in R (cv2 writes BGR: R is last)."""
    truth = {}
    for k in range(count):
        raw = raw_frame(lt.SYNTHIA_RAW_IDS, k)
        img = root / "RGB" / f"{k:07d}.png"
        write_rgb(img, image(k))
        label = np.zeros((H, W, 3), dtype=np.uint16)
        label[:, :, 2] = raw
        label[:, :, 1] = 1000 + k  # instance ids in G: must not leak into the class
        label[:, :, 0] = 7
        write_gray(root / "GT" / "LABELS" / f"{k:07d}.png", label)
        truth[img] = decode(raw, lt.SYNTHIA_ID_TO_TRAINID)
    return truth


def make_bdd100k(root: Path, legacy: bool = False, n: dict[str, int] | None = None) -> dict[Path, np.ndarray]:
    truth = {}
    seed = 0
    for split, count in (n or {"train": 2, "val": 2}).items():
        for k in range(count):
            name = f"{k:02x}a1b2c3-d4e5f6{k:02d}"
            raw = raw_frame(lt.TRAINID_RAW_IDS, seed)
            if legacy:
                img, lab = root / "seg/images" / split / f"{name}.jpg", root / "seg/labels" / split / f"{name}_train_id.png"
            else:
                img, lab = root / "images/10k" / split / f"{name}.jpg", root / "labels/sem_seg/masks" / split / f"{name}.png"
            write_rgb(img, image(seed))
            write_gray(lab, raw.astype(np.uint8))
            truth[img] = decode(raw, lt.TRAINID_TO_TRAINID)
            seed += 1
    return truth


def make_mapillary(root: Path, nested: bool = False, n: dict[str, int] | None = None) -> dict[Path, np.ndarray]:
    """{training,validation}/images/NAME.jpg + .../labels/NAME.png (palette index = one of 66 v1.2 classes)."""
    truth = {}
    seed = 0
    for split, count in (n or {"training": 2, "validation": 2}).items():
        for k in range(count):
            name = f"{'abcdefgh'[k]}Xq{seed:04d}"
            raw = raw_frame(lt.MAPILLARY_RAW_IDS, seed)
            img = root / split / "images" / f"{name}.jpg"
            write_rgb(img, image(seed))
            write_palette(root / split / ("v1.2/labels" if nested else "labels") / f"{name}.png", raw)
            truth[img] = decode(raw, lt.MAPILLARY_ID_TO_TRAINID)
            seed += 1
    return truth


def make_acdc(root: Path, conditions=("fog", "night", "rain", "snow"), n: dict[str, int] | None = None,
              label_files=("_gt_labelTrainIds.png",)) -> dict[Path, np.ndarray]:
    """rgb_anon/COND/SPLIT/SEQ/NAME_rgb_anon.png + gt/COND/SPLIT/SEQ/NAME + each of `label_files`: `_gt_labelTrainIds.png`
    (trainIds) and/or `_gt_labelIds.png` (Cityscapes label ids), both describing the same frame."""
    truth = {}
    seed = 0
    for condition in conditions:
        for split, count in (n or {"train": 1, "val": 1}).items():
            for k in range(count):
                seq = f"GOPR04{seed:02d}"
                stem = f"{seq}_frame_{k:06d}"
                img = root / "rgb_anon" / condition / split / seq / f"{stem}_rgb_anon.png"
                write_rgb(img, image(seed))
                ids = raw_frame(lt.CITYSCAPES_RAW_IDS, seed)
                tids = decode(ids, lt.CITYSCAPES_ID_TO_TRAINID)
                stored = {"_gt_labelTrainIds.png": tids, "_gt_labelIds.png": ids.astype(np.uint8)}
                for suffix in label_files:
                    write_gray(root / "gt" / condition / split / seq / f"{stem}{suffix}", stored[suffix])
                truth[img] = tids
                seed += 1
    return truth


# --------------------------------------------------------------------------------------------------- damage
def poke_label(path: Path, value, count: int = 5) -> None:
    """Write raw `value` into the first `count` pixels of row 0 of a label file, in the file's own format: palette
    index, grey value (8 or 16 bit), SYNTHIA's R channel, or an (r, g, b) colour for colour-coded labels."""
    with Image.open(path) as im:
        palette = im.mode == "P"
    if palette:
        with Image.open(path) as im:
            index = np.asarray(im).copy()
            colours = im.getpalette()
        index[0, :count] = value
        out = Image.fromarray(index, mode="P")
        out.putpalette(colours)
        out.save(path)
        return
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if isinstance(value, tuple):  # colour label: cv2 stores BGR
        label[0, :count] = value[::-1]
    elif label.ndim == 3:  # SYNTHIA: the class id is in R, the last of cv2's BGR channels
        label[0, :count, 2] = value
    else:
        label[0, :count] = value
    assert cv2.imwrite(str(path), label)
