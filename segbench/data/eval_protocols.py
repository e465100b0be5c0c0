"""Named evaluation protocols (`eval.protocol`): for each target, the image the model sees and the label it is scored on.

Published domain-generalization numbers differ in how a target frame becomes the scored pair, most of all on
Mapillary (frames of every size, up to 5000 px wide), so each way in use is a named protocol, never a silent default.
A protocol is a table, registered dataset name -> geometry (`TARGET_GEOMETRY`); a dataset it does not list is scored
as under `native`:

- `native` (segbench's default): every label at its native resolution, the whole frame scored. The image keeps its
  size too, except where a dataset declares `eval_height` (Mapillary: 1536), where only the image is resized (bilinear,
  aspect ratio kept) and the prediction is upsampled back to the label.
- `robustnet`: RobustNet (Choi et al., CVPR 2021; https://github.com/shachoi/RobustNet, `datasets/__init__.py`
  `create_extra_val_loader`). Cityscapes, BDD100K, GTA5 and SYNTHIA as `native`; Mapillary: image (bicubic) and label
  (nearest) resized to height 1536, then a 1536 x 1536 centre crop (`RobustNetCentreCrop`).
- `rein`: Rein (Wei et al., CVPR 2024; https://github.com/w1oves/Rein, `configs/_base_/datasets/*_512x512.py`, which
  its GTAV -> Cityscapes / BDD100K / Mapillary (`dg_gta_512x512.py`) and Cityscapes -> ACDC (`dg_citys2acdc_512x512.py`)
  evaluations compose). The image is rescaled to fit a per-dataset size keeping its aspect ratio (mmcv
  `Resize(scale, keep_ratio=True)`: Cityscapes 1024 x 512, BDD100K and GTA5 1280 x 720, ACDC 960 x 540), the label is
  scored at native resolution; Mapillary is first halved offline, image and label (`ReinMapillary`). SYNTHIA and the
  embedded domains have no Rein config: `native`.

A geometry is a picklable callable (image, mask) -> (image, mask) on uint8 arrays, applied before normalisation, whose
`image_size(h, w)` is the size the model sees for an h x w frame. A prepared copy (`NAME@WxH`) holds resized labels and
is listed by no protocol: it is always scored as under `native`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
from PIL import Image

from ..config import DEFAULTS

DEFAULT_PROTOCOL = DEFAULTS["eval"]["protocol"]


@dataclass(frozen=True)
class ImageResize:
    """Label untouched (native resolution, whole frame); the image resized (bilinear) to `size` (H, W), or to `height`
    keeping the aspect ratio (width rounded to nearest), or left alone."""

    size: tuple[int, int] | None = None
    height: int | None = None

    def image_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return int(self.size[0]), int(self.size[1])
        if self.height is not None:
            return int(self.height), max(1, round(w * self.height / h))
        return h, w

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.image_size(*image.shape[:2])
        if image.shape[:2] != size:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return image, mask


def _pil_resize(array: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """Pillow's resize, as the official code calls it (bicubic images are antialiased when shrunk, unlike OpenCV's)."""
    return np.array(Image.fromarray(array).resize((width, height), resample))  # a writable copy, for torch


@dataclass(frozen=True)
class RobustNetCentreCrop:
    """RobustNet's Mapillary evaluation (`transforms/joint_transforms.py`: `ResizeHeight(1536)`, then
    `CenterCropPad(1536)` with its default `ignore_index=0`), reproduced to the pixel:

    1. image (Pillow bicubic) and label (Pillow nearest) resized to `height`, width `int(w / h * height)` (truncated,
       the official float expression);
    2. a `crop` x `crop` window whose corner is x1 = int(round((W - crop) / 2)) (Python's round: half to even), y1
       likewise, on the resized W x H frame. A frame narrower than the crop (only frames taller than wide) is first
       padded with pad_x = crop - W columns on *each* side while x1 stays the unpadded, negative value: the window
       is not centred. Its first -x1 columns lie outside the padded frame (Pillow's crop fills them with 0), the next
       pad_x are padding, the rest the frame's first crop + x1 - pad_x columns; the frame's last -x1 columns are never
       scored. Image and label padding are both 0: black, and the trainId of *road*, so padded pixels are scored as
       road, exactly as in the published numbers. Frames at least as wide as high are only cropped.
    """

    height: int = 1536
    crop: int = 1536

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        return self.height, int(w / h * self.height)

    def image_size(self, h: int, w: int) -> tuple[int, int]:
        return self.crop, self.crop

    @staticmethod
    def _window(array: np.ndarray, axis: int, crop: int) -> np.ndarray:
        """`crop` entries along `axis` as CenterCropPad cuts them, everything outside the frame 0."""
        size = array.shape[axis]
        start = int(round((size - crop) / 2.0)) - max(0, crop - size)  # in the unpadded frame's coordinates
        shape = list(array.shape)
        shape[axis] = crop
        out = np.zeros(shape, dtype=array.dtype)
        lo, hi = max(0, start), min(size, start + crop)
        if hi > lo:
            src, dst = [slice(None)] * array.ndim, [slice(None)] * array.ndim
            src[axis], dst[axis] = slice(lo, hi), slice(lo - start, hi - start)
            out[tuple(dst)] = array[tuple(src)]
        return out

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.resized_size(*mask.shape[:2])
        image = _pil_resize(image, w, h, Image.BICUBIC)
        mask = _pil_resize(mask, w, h, Image.NEAREST)
        for axis in (0, 1):
            image, mask = self._window(image, axis, self.crop), self._window(mask, axis, self.crop)
        return image, mask


def mmcv_rescale_size(h: int, w: int, scale: Sequence[int]) -> tuple[int, int]:
    """(H, W) after mmcv `imrescale(img, scale)` (mmcv/image/geometric.py `rescale_size`, `_scale_size`): the largest
    size that fits (long edge <= max(scale), short edge <= min(scale)), aspect ratio kept, rounded half up."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


@dataclass(frozen=True)
class ReinRescale:
    """Rein's test pipeline: `Resize(scale, keep_ratio=True)` on the image only (mmcv, OpenCV bilinear), then
    `LoadAnnotations`: the label stays at its native resolution, where the prediction is scored. (Rein's 1024 x 1024
    configs, `*_1024x1024.py`, use larger scales; the table below follows the 512 x 512 family.)"""

    scale: tuple[int, int]  # (long, short) bound, as mmcv takes it

    def image_size(self, h: int, w: int) -> tuple[int, int]:
        return mmcv_rescale_size(h, w, self.scale)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.image_size(*image.shape[:2])
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return image, mask


def jpeg_roundtrip(image: np.ndarray) -> np.ndarray:
    """An RGB image saved as JPEG by Pillow with its defaults (quality 75) and read back by OpenCV, as Rein's halved
    Mapillary images are written (`im.save(dst.jpg)`) and then loaded (mmcv's cv2 backend)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    decoded = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ReinMapillary:
    """Rein's Mapillary evaluation: its `tools/convert_datasets/mapillary_resize.py` halves the validation frames
    offline, image to (W // 2, H // 2) with Pillow bicubic, saved as JPEG (Pillow's quality 75), label with Pillow
    nearest; `configs/_base_/datasets/mapillary_512x512.py` then rescales the image as `ReinRescale` does and scores
    the halved label. Reproduced here on the fly, JPEG re-encoding included.

    Not reproduced: Rein's labels come from `tools/convert_datasets/mapillary2cityscape.py`, which maps the 66 classes
    by name: besides RobustNet's groups it maps bike lane, crosswalk (plain and marking), parking and service lane to
    road, pedestrian area and curb cut to sidewalk, street light to pole, the back and frame of traffic signs to
    traffic sign, and leaves manhole ignored where RobustNet counts it as road. segbench decodes Mapillary with
    RobustNet's table under every protocol (data/adapters/mapillary.py), so this protocol fixes Rein's geometry, not
    its class mapping."""

    rescale: ReinRescale = ReinRescale((1024, 512))

    def image_size(self, h: int, w: int) -> tuple[int, int]:
        return self.rescale.image_size(h // 2, w // 2)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape[:2]
        image = jpeg_roundtrip(_pil_resize(image, w // 2, h // 2, Image.BICUBIC))
        mask = _pil_resize(mask, w // 2, h // 2, Image.NEAREST)
        return self.rescale(image, mask)


Geometry = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]

ACDC_NAMES = ("acdc", "acdc-fog", "acdc-night", "acdc-rain", "acdc-snow")

#: protocol -> {registered dataset name: geometry}; every dataset a protocol does not list is scored as under `native`
TARGET_GEOMETRY: dict[str, dict[str, Geometry]] = {
    "native": {},
    "robustnet": {"mapillary": RobustNetCentreCrop(height=1536, crop=1536)},
    "rein": {"cityscapes": ReinRescale((1024, 512)),  # cityscapes_512x512.py
             "bdd100k": ReinRescale((1280, 720)),  # bdd100k_512x512.py
             "gta5": ReinRescale((1280, 720)),  # gta_512x512.py
             "mapillary": ReinMapillary(ReinRescale((1024, 512))),  # mapillary_512x512.py
             **{name: ReinRescale((960, 540)) for name in ACDC_NAMES}},  # {fog,night,rain,snow}-acdc_512x512.py
}


def native_geometry(dataset) -> ImageResize:
    """The label as it is; the image at the dataset's `eval_height`, if it declares one."""
    return ImageResize(height=getattr(dataset, "eval_height", None))


def geometry_for(dataset, protocol: str = DEFAULT_PROTOCOL) -> Geometry:
    """The geometry `protocol` (one of config.EVAL_PROTOCOLS, `eval.protocol`'s rule) gives `dataset` (an instance:
    its registered name, `dataset_name`, picks the entry)."""
    name = getattr(dataset, "dataset_name", None)
    table = TARGET_GEOMETRY[protocol]
    return table[name] if isinstance(name, str) and name in table else native_geometry(dataset)
