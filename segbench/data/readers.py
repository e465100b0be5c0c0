"""Low-level file readers shared by the adapters: PNG headers without decoding, palette indices, label channels.

Kept apart from the adapters so the speed-critical choices (which decoder, which flags) live in one place.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .base import COLOR_AS_STORED, DatasetError, read_gray

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_PALETTE = 3  # IHDR colour type of indexed images


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk: 29 bytes read, nothing decoded."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DatasetError(f"{path} is not a PNG file (bad signature or header); re-extract it from the download")
    width, height, depth, color_type = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, color_type


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) without decoding pixels: the PNG header directly, PIL's lazy open for other formats."""
    if path.suffix.lower() == ".png":
        return png_header(path)[:2]
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read the header of {path}: {e}; re-extract it from the download") from None


def read_palette_index(path: Path) -> np.ndarray:
    """Palette (mode "P") PNG -> HxW uint8 palette indices. OpenCV would expand the palette to colours, so use PIL."""
    try:
        with Image.open(path) as im:
            if im.mode != "P":
                raise DatasetError(
                    f"label {path} has PIL mode {im.mode!r}, expected a palette PNG (mode 'P') whose index is the class id; "
                    "a colour-converted copy cannot be decoded reliably (colours collide): re-extract the original label"
                )
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read label {path}: {e}; the file is missing or truncated, re-extract it") from None


def read_index_label(path: Path) -> np.ndarray:
    """Single-channel id image as stored: palette PNGs give their index, grey PNGs their value (8 or 16 bit)."""
    if path.suffix.lower() == ".png" and png_header(path)[3] == PNG_PALETTE:
        return read_palette_index(path)
    label = read_gray(path)
    if label.ndim != 2:
        raise DatasetError(
            f"label {path} has {label.shape[2]} channels, expected a single-channel id image; "
            "for multi-channel labels name the channel that carries the id"
        )
    return label


CHANNELS_BGR = {"b": 0, "g": 1, "r": 2}


def read_label_channel(path: Path, channel: str) -> np.ndarray:
    """One channel ("r", "g" or "b") of a multi-channel label, at its stored bit depth (SYNTHIA: 16-bit, id in R)."""
    label = read_gray(path, cv2.IMREAD_UNCHANGED)
    if label.ndim != 3 or label.shape[2] < 3:
        raise DatasetError(f"label {path} has shape {label.shape}, expected a 3- or 4-channel image carrying the id in {channel.upper()}")
    return np.ascontiguousarray(label[:, :, CHANNELS_BGR[channel]])


def read_color_label(path: Path) -> np.ndarray:
    """RGB colour label packed into one int32 per pixel (R<<16 | G<<8 | B), so colours can be looked up like ids."""
    bgr = read_gray(path, COLOR_AS_STORED)
    bgr = bgr.astype(np.int32)
    return (bgr[:, :, 2] << 16) | (bgr[:, :, 1] << 8) | bgr[:, :, 0]


def pack_rgb(rgb) -> int:
    r, g, b = (int(v) for v in rgb)
    return (r << 16) | (g << 8) | b
