"""The embedded default: two procedurally generated street-scene domains that differ in appearance only.

Both domains draw scenes from ONE layout distribution (horizon, road in perspective, sidewalks, buildings, trees,
terrain, poles with signs and lights, cars, people) and ONE set of materials (each object's albedo). They differ only in
the camera/render pipeline, the way GTA5 and Cityscapes differ:

* `sim`   ('rendered'): saturated, contrasty, warm grading, hard directional light, flat textures, no noise, no blur.
* `photo` ('photographic'): desaturated cool grading, low contrast, exposure varying per image, overcast light,
  vignetting, optical blur and sensor noise.

So whatever a model learns about *what is where* transfers; what it learns about absolute colour and contrast does not
--- the shift the IBN-Net paper says instance normalisation removes. Files are written once as ordinary PNGs (RGB image,
8-bit trainId label) and read back through the same adapter path as real datasets.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: generation runs unlocked
    fcntl = None

import cv2
import numpy as np
from tqdm import tqdm

from ...labels import IGNORE_INDEX
from ..base import SegmentationDataset, read_gray
from ..pairing import pair_by_suffix, require_dir
from ..registry import register_dataset
from ..tables import TRAINID_KNOWN, TRAINID_LUT

# Bump when the drawing or rendering code changes: existing trees are then regenerated.
GENERATOR_VERSION = 5
IMAGE_SIZE = (96, 192)  # (H, W)
SPLIT_SIZES = {"train": 300, "val": 60}
#: e.g. "train=8,val=3": smaller trees for smoke tests and subprocess tests (a different size regenerates the tree)
SIZES_ENV = "SEGBENCH_SYNTHETIC_SIZES"


def split_sizes() -> dict[str, int]:
    raw = os.environ.get(SIZES_ENV)
    if not raw:
        return dict(SPLIT_SIZES)
    try:
        sizes = {k.strip(): int(v) for k, v in (item.split("=") for item in raw.split(","))}
    except ValueError:
        raise ValueError(f"{SIZES_ENV}={raw!r}: expected e.g. train=8,val=3") from None
    if set(sizes) != set(SPLIT_SIZES) or min(sizes.values()) < 1:
        raise ValueError(f"{SIZES_ENV}={raw!r}: give a positive size for each of {', '.join(SPLIT_SIZES)}")
    return sizes

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)

# Shared materials (linear RGB albedo in 0..1): content, identical in both domains.
MATERIALS = {
    ROAD: (0.42, 0.38, 0.45), SIDEWALK: (0.70, 0.62, 0.62), BUILDING: (0.55, 0.45, 0.38), WALL: (0.62, 0.60, 0.52),
    FENCE: (0.50, 0.42, 0.30), POLE: (0.35, 0.35, 0.38), LIGHT: (0.15, 0.15, 0.12), SIGN: (0.90, 0.78, 0.10),
    VEGETATION: (0.20, 0.45, 0.12), TERRAIN: (0.55, 0.60, 0.25), SKY: (0.55, 0.72, 0.95), PERSON: (0.60, 0.20, 0.25),
    CAR: (0.25, 0.30, 0.60),
}


@dataclass(frozen=True)
class Style:
    """A camera/render pipeline: what differs between the two domains."""

    saturation: float
    contrast: float
    exposure: float
    exposure_jitter: float  # per-image, log2 stops
    tint: tuple[float, float, float]  # per-channel gain
    tint_jitter: float
    gamma: float
    light_strength: float  # directional shading across the image
    texture: float  # amplitude of material texture
    vignette: float
    blur_sigma: float
    noise_std: float  # in 0..1 units


STYLES = {
    "sim": Style(saturation=1.3, contrast=1.2, exposure=1.0, exposure_jitter=0.15, tint=(1.06, 1.00, 0.90),
                 tint_jitter=0.03, gamma=0.9, light_strength=0.45, texture=0.05, vignette=0.0, blur_sigma=0.0,
                 noise_std=0.0),
    "photo": Style(saturation=0.7, contrast=0.75, exposure=0.85, exposure_jitter=0.3, tint=(0.95, 1.00, 1.07),
                   tint_jitter=0.05, gamma=1.15, light_strength=0.1, texture=0.12, vignette=0.25, blur_sigma=0.8,
                   noise_std=0.03),
}


# ----------------------------------------------------------------------------------------------------------------
# layout: what is where (shared by both domains)
# ----------------------------------------------------------------------------------------------------------------
class _Canvas:
    """Label map plus per-pixel albedo, painted together so each object carries its own material variation."""

    def __init__(self, h: int, w: int):
        self.label = np.full((h, w), IGNORE_INDEX, np.uint8)
        self.albedo = np.zeros((h, w, 3), np.float32)

    def _paint(self, mask: np.ndarray, cls: int, color) -> None:
        self.label[mask] = cls
        self.albedo[mask] = color

    def poly(self, pts, cls: int, color) -> None:
        m = np.zeros(self.label.shape, np.uint8)
        cv2.fillPoly(m, [np.round(np.asarray(pts)).astype(np.int32)], 1)
        self._paint(m.astype(bool), cls, color)

    def rect(self, x0, y0, x1, y1, cls: int, color) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, color)

    def ellipse(self, cx, cy, rx, ry, cls: int, color) -> None:
        m = np.zeros(self.label.shape, np.uint8)
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(1, int(round(rx))), max(1, int(round(ry)))), 0, 0, 360, 1, -1)
        self._paint(m.astype(bool), cls, color)


def _material(rng: np.random.Generator, cls: int, spread: float = 0.08) -> np.ndarray:
    base = np.asarray(MATERIALS[cls], np.float32)
    return np.clip(base * rng.uniform(1 - spread, 1 + spread) + rng.normal(0, spread / 3, 3), 0.02, 1.0).astype(np.float32)


def draw_layout(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A random street scene: (trainId label HxW uint8, albedo HxWx3 float32)."""
    h, w = size
    c = _Canvas(h, w)
    horizon = rng.uniform(0.36, 0.5) * h
    vx = w / 2 + rng.uniform(-0.15, 0.15) * w
    c.rect(0, 0, w, h, SKY, _material(rng, SKY, 0.05))

    # buildings and walls along the skyline
    x = -rng.uniform(0, 20)
    while x < w:
        bw = rng.uniform(0.12, 0.3) * w
        top = horizon - rng.uniform(0.1, 0.35) * h
        cls = WALL if rng.random() < 0.15 else BUILDING
        c.rect(x, top, x + bw, horizon + 2, cls, _material(rng, cls, 0.15))
        x += bw + (rng.uniform(0, 0.06) * w if rng.random() < 0.4 else 0)

    # trees in front of the buildings
    for _ in range(rng.integers(1, 5)):
        tx, r = rng.uniform(0, w), rng.uniform(0.05, 0.12) * h
        ty = horizon - rng.uniform(0.02, 0.12) * h
        c.ellipse(tx, ty, r * rng.uniform(0.8, 1.3), r, VEGETATION, _material(rng, VEGETATION, 0.12))

    # ground: terrain strip, sidewalks and road in perspective
    c.rect(0, horizon, w, h, TERRAIN, _material(rng, TERRAIN, 0.1))
    road_half = rng.uniform(0.3, 0.5) * w
    walk = rng.uniform(0.18, 0.3) * w
    bottom = h + 1
    c.poly([(vx - 2, horizon), (vx + 2, horizon), (vx + road_half + walk, bottom), (vx - road_half - walk, bottom)],
           SIDEWALK, _material(rng, SIDEWALK, 0.06))
    c.poly([(vx - 1, horizon), (vx + 1, horizon), (vx + road_half, bottom), (vx - road_half, bottom)],
           ROAD, _material(rng, ROAD, 0.06))

    def ground_x(side: float, y: float, frac: float) -> float:
        """x at height y on the ray `frac` of the way from the road edge (0) to the sidewalk edge (1)."""
        t = (y - horizon) / (h - horizon)
        return vx + side * t * (road_half + frac * walk)

    if rng.random() < 0.5:  # a fence beyond one sidewalk
        side = rng.choice([-1.0, 1.0])
        y0 = horizon + 0.1 * (h - horizon)
        xs = [ground_x(side, y0, 1.0), ground_x(side, h, 1.0)]
        fh = 0.06 * h
        c.poly([(xs[0], y0 - fh * 0.2), (xs[1], h - fh * 2.0), (xs[1], h), (xs[0], y0)], FENCE, _material(rng, FENCE))

    # poles with signs / lights on the sidewalks
    for _ in range(rng.integers(1, 4)):
        side = rng.choice([-1.0, 1.0])
        y = horizon + rng.uniform(0.25, 0.9) * (h - horizon)
        scale = (y - horizon) / (h - horizon)
        px = ground_x(side, y, rng.uniform(0.5, 0.9))
        ph, pw = scale * 0.9 * h, max(1.5, scale * 4)
        c.rect(px - pw / 2, y - ph, px + pw / 2, y, POLE, _material(rng, POLE))
        if rng.random() < 0.6:
            s = max(3, scale * 14)
            c.rect(px - s / 2, y - ph, px + s / 2, y - ph + s, SIGN, _material(rng, SIGN, 0.05))
        else:
            s = max(2, scale * 7)
            c.rect(px - s / 2, y - ph, px + s / 2, y - ph + 2.5 * s, LIGHT, _material(rng, LIGHT, 0.05))

    # cars on the road, people on the sidewalks, far to near so nearer ones occlude
    objects = []
    for _ in range(rng.integers(1, 5)):
        objects.append(("car", horizon + rng.uniform(0.1, 0.85) * (h - horizon)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("person", horizon + rng.uniform(0.15, 0.9) * (h - horizon)))
    for kind, y in sorted(objects, key=lambda o: o[1]):
        scale = (y - horizon) / (h - horizon)
        if kind == "car":
            cx = vx + (ground_x(rng.choice([-1.0, 1.0]), y, 0) - vx) * rng.uniform(0.1, 0.7)
            cw, ch = scale * 0.55 * w * rng.uniform(0.8, 1.1), scale * 0.28 * h
            body = _material(rng, CAR, 0.35)
            c.rect(cx - cw / 2, y - ch * 0.6, cx + cw / 2, y, CAR, body)
            c.rect(cx - cw * 0.32, y - ch, cx + cw * 0.32, y - ch * 0.55, CAR, body * 0.7)
        else:
            px = ground_x(rng.choice([-1.0, 1.0]), y, rng.uniform(0.1, 0.6))
            ph = scale * 0.45 * h
            c.ellipse(px, y - ph * 0.45, ph * 0.14, ph * 0.42, PERSON, _material(rng, PERSON, 0.3))
            c.ellipse(px, y - ph * 0.92, ph * 0.09, ph * 0.09, PERSON, _material(rng, PERSON, 0.1))
    return c.label, c.albedo


def _texture(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Per-class structure (windows, foliage grain, asphalt speckle): the same in both domains, scaled by the style."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    tex = np.zeros((h, w), np.float32)
    windows = ((np.sin(xx * 0.9) > 0.3) & (np.sin(yy * 1.1) > 0.2)).astype(np.float32) * -1.5
    tex += np.where((label == BUILDING), windows, 0)
    foliage = cv2.GaussianBlur(grain, (0, 0), 1.0) * 3
    tex += np.where(label == VEGETATION, foliage, 0)
    tex += np.where((label == ROAD) | (label == SIDEWALK) | (label == TERRAIN), grain * 0.6, 0)
    return tex


# ----------------------------------------------------------------------------------------------------------------
# rendering: how it looks (differs between domains)
# ----------------------------------------------------------------------------------------------------------------
def render(albedo: np.ndarray, label: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Albedo + label -> uint8 RGB image through one domain's camera pipeline."""
    h, w = label.shape
    img = albedo * (1.0 + style.texture * _texture(rng, label))[..., None]
    # directional light: brighter towards a random side, sky unaffected
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5))
    shade = 1.0 + style.light_strength * ramp
    shade = np.where(label == SKY, 1.0, shade)
    img = img * shade[..., None]
    # colour grading: saturation, tint, exposure, contrast, gamma
    gray = img.mean(axis=2, keepdims=True)
    img = gray + style.saturation * (img - gray)
    tint = np.asarray(style.tint, np.float32) * rng.normal(1.0, style.tint_jitter, 3).astype(np.float32)
    exposure = style.exposure * 2.0 ** rng.normal(0, style.exposure_jitter)
    img = img * tint * exposure
    img = 0.5 + style.contrast * (img - 0.5)
    img = np.clip(img, 0, 1) ** style.gamma
    if style.vignette:
        r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5
        img = img * (1 - style.vignette * r2)[..., None]
    if style.blur_sigma:
        img = cv2.GaussianBlur(img, (0, 0), style.blur_sigma)
    if style.noise_std:
        img = img + rng.normal(0, style.noise_std, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate_sample(domain: str, index: int, split: str, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE):
    """(RGB image, trainId label) for one sample; a pure function of its arguments."""
    key = f"{seed}/{domain}/{split}/{index}".encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    label, albedo = draw_layout(rng, size)
    return render(albedo, label, STYLES[domain], rng), label


# ----------------------------------------------------------------------------------------------------------------
# files on disk
# ----------------------------------------------------------------------------------------------------------------
def _manifest(domain: str, seed: int) -> dict:
    manifest = {"generator_version": GENERATOR_VERSION, "domain": domain, "seed": seed, "size": list(IMAGE_SIZE),
                "splits": split_sizes(), "style": asdict(STYLES[domain])}
    return json.loads(json.dumps(manifest))  # tuples -> lists, as they come back from disk


def _is_current(meta: Path, manifest: dict) -> bool:
    try:
        return json.loads(meta.read_text()) == manifest
    except (OSError, json.JSONDecodeError):
        return False


@contextmanager
def _generation_lock(root: Path):
    """Hold an flock on `.ROOTNAME.lock` beside the tree, so processes started together (cells run side by side)
    generate it once: the others wait, then find it current. The kernel drops the lock however its holder ends;
    a filesystem without locks runs unlocked, as before."""
    with open(root.parent / f".{root.name}.lock", "a") as f:
        try:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def ensure_generated(root: Path, domain: str, seed: int = 0) -> bool:
    """Write the domain under `root` unless an up-to-date copy is there. Returns True when it (re)generated.

    Built in a sibling temp directory and renamed into place, so an interrupted generation never leaves a half tree;
    under a lock, so two processes never build it twice nor move a tree away while the other reads it.
    """
    root = Path(root)
    manifest = _manifest(domain, seed)
    meta = root / "meta.json"
    if _is_current(meta, manifest):
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root):
        if _is_current(meta, manifest):  # another process generated it while this one waited
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        sizes = split_sizes()
        # about 15 s for both domains on 2 cores, before the first cell starts: said, with its progress
        bar = tqdm(total=sum(sizes.values()), unit="img", file=sys.stderr, leave=False,
                   desc=f"generating the embedded domain {domain!r} in {root} (once)")
        try:
            for split, count in sizes.items():
                (tmp / "images" / split).mkdir(parents=True)
                (tmp / "labels" / split).mkdir(parents=True)
                for i in range(count):
                    image, label = generate_sample(domain, i, split, seed)
                    cv2.imwrite(str(tmp / "images" / split / f"{i:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                    cv2.imwrite(str(tmp / "labels" / split / f"{i:05d}.png"), label)
                    bar.update()
            (tmp / "meta.json").write_text(json.dumps(manifest, indent=1))
            if root.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{root.name}-old-", dir=root.parent))
                os.replace(root, old / root.name)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, root)
        finally:
            bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"generated the embedded domain {domain!r}: {', '.join(f'{n} {s}' for s, n in sizes.items())} images "
          f"in {root}", file=sys.stderr, flush=True)
    return True


class SyntheticDomain(SegmentationDataset):
    """Adapter for a generated domain: `images/{split}/NNNNN.png` + `labels/{split}/NNNNN.png` (8-bit trainIds)."""

    domain: str = ""
    generated = True
    data_version = GENERATOR_VERSION  # part of a cell's id: results of an older generator are not reused
    splits = ("train", "val")
    layout = "  images/{train,val}/00000.png   (RGB)\n  labels/{train,val}/00000.png   (8-bit trainIds, 255 = ignore)\n" \
             "Generated automatically on first use."

    @classmethod
    def prepare(cls, root: Path) -> None:
        ensure_generated(root, cls.domain)

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images = require_dir(self, self.root / "images" / split, "image")
        labels = require_dir(self, self.root / "labels" / split, "label")
        return pair_by_suffix(images, ".png", labels, (".png",), self.skipped)

    #: the labels are trainIds: any other value (a damaged or hand-edited file) is refused like in every other dataset
    label_lut = TRAINID_LUT
    known_label_values = TRAINID_KNOWN

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_gray(path, cv2.IMREAD_GRAYSCALE)


@register_dataset("sim")
class SimDomain(SyntheticDomain):
    """Embedded 'rendered' domain (the GTA5 stand-in)."""

    domain = "sim"
    default_dir = "synthetic/sim"


@register_dataset("photo")
class PhotoDomain(SyntheticDomain):
    """Embedded 'photographic' domain (the Cityscapes stand-in)."""

    domain = "photo"
    default_dir = "synthetic/photo"
