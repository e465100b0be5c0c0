"""A dataset described by a YAML file, so a new domain needs no code. Example (all keys shown):

    name: mycity                     # registered dataset name
    root: mycity                     # its directory; relative paths are under the data root (default: the name)
    splits: [train, val]
    images: {dir: "images/{split}", suffix: ".jpg"}        # searched recursively
    labels: {dir: "labels/{split}", suffix: "_label.png"}  # same relative path and stem as the image
    encoding: ids                    # trainid | cityscapes | ids | palette
    ids: {7: 0, 8: 1, 11: 2}         # ids: raw id -> trainId (255 = ignore); unlisted ids are ignored and reported
    colors: {0: [128, 64, 128]}      # palette: trainId -> [r, g, b] (or a list of them), or the word `cityscapes`
    channel: r                       # optional: read the id from this channel of a multi-channel label
    eval_classes: [0, 1, 2]          # optional: trainIds scored (default all 19)
    eval_height: 1024                # optional: evaluate at this height

Every bad field fails with the file, the field and the fix.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from ..labels import CITYSCAPES_LUT, IGNORE_INDEX, NUM_CLASSES, PALETTE, make_lut
from .base import DatasetError, SegmentationDataset
from .pairing import pair_by_suffix, require_dir
from .readers import pack_rgb, read_color_label, read_index_label, read_label_channel
from .registry import DATASETS
from .tables import CITYSCAPES_KNOWN, TRAINID_KNOWN, TRAINID_LUT

ENCODINGS = ("trainid", "cityscapes", "ids", "palette")
FIELDS = ("name", "root", "splits", "images", "labels", "encoding", "ids", "colors", "channel", "eval_classes", "eval_height", "layout")
REQUIRED = ("name", "splits", "images", "labels", "encoding")


class YamlSpecError(DatasetError):
    """A YAML dataset file is malformed; the message names the file, the field and the fix."""


class YamlDataset(SegmentationDataset):
    """Base of every YAML-defined dataset; `register_yaml` makes one subclass per file."""

    spec: dict = {}
    spec_path: str = ""
    color_keys: np.ndarray | None = None  # sorted packed RGB colours (palette encoding)
    color_values: np.ndarray | None = None

    def find_pairs(self, split: str) -> list[tuple[Path, Path]]:
        images, labels = self.spec["images"], self.spec["labels"]
        image_dir = require_dir(self, self.root / images["dir"].format(split=split), "image")
        label_dir = require_dir(self, self.root / labels["dir"].format(split=split), "label")
        return pair_by_suffix(image_dir, images["suffix"], label_dir, (labels["suffix"],), self.skipped)

    def read_raw_label(self, path: Path) -> np.ndarray:
        if self.spec["encoding"] == "palette":
            return read_color_label(path)
        if self.spec.get("channel"):
            return read_label_channel(path, self.spec["channel"])
        return read_index_label(path)

    def decode_label(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if self.color_keys is None:
            return super().decode_label(raw, path)
        idx = np.clip(np.searchsorted(self.color_keys, raw), 0, len(self.color_keys) - 1)
        return np.where(self.color_keys[idx] == raw, self.color_values[idx], IGNORE_INDEX).astype(np.uint8)

    def unknown_label_values(self, raw: np.ndarray, path: Path) -> dict[int, int]:
        if self.color_keys is None:
            return super().unknown_label_values(raw, path)
        values, counts = np.unique(raw, return_counts=True)
        bad = ~np.isin(values, self.color_keys)
        return {int(v): int(c) for v, c in zip(values[bad], counts[bad])}  # keys: packed 0xRRGGBB

    def __reduce__(self):
        # the class is generated per file: rebuild it from the file in the receiving process (DataLoader workers)
        return _restore, (self.spec_path, self.spec["name"]), self.__dict__


def _restore(spec_path: str, name: str):
    if name not in DATASETS or getattr(DATASETS.get(name), "spec_path", None) != spec_path:
        register_yaml(spec_path)
    cls = DATASETS.get(name)
    return cls.__new__(cls)


# ------------------------------------------------------------------------------------------------ validation
def _fail(path: Path, field: str, problem: str, fix: str):
    raise YamlSpecError(f"{path}: field {field!r} {problem}; {fix}")


def _train_id(path: Path, field: str, value) -> int:
    if not isinstance(value, int) or not (0 <= value < NUM_CLASSES or value == IGNORE_INDEX):
        _fail(path, field, f"has trainId {value!r}", f"use 0..{NUM_CLASSES - 1} or {IGNORE_INDEX} (ignore)")
    return value


def _dir_suffix(path: Path, spec: dict, field: str) -> None:
    value = spec[field]
    if not isinstance(value, dict) or set(value) != {"dir", "suffix"}:
        _fail(path, field, f"is {value!r}", 'write it as {dir: "images/{split}", suffix: ".png"}')
    for key in ("dir", "suffix"):
        if not isinstance(value[key], str) or not value[key]:
            _fail(path, f"{field}.{key}", "must be a non-empty string", "quote it in the YAML file")
    try:
        value["dir"].format(split="train")
    except (KeyError, IndexError, ValueError):
        _fail(path, f"{field}.dir", f"has a bad placeholder in {value['dir']!r}", "the only placeholder allowed is {split}")


def _colors(path: Path, value) -> dict[int, int]:
    """colors -> {packed rgb: trainId}."""
    if value == "cityscapes":
        return {pack_rgb(rgb): tid for tid, rgb in enumerate(PALETTE)}
    if not isinstance(value, dict) or not value:
        _fail(path, "colors", f"is {value!r}", "map trainIds to colours, e.g. {0: [128, 64, 128]}, or write `cityscapes`")
    table: dict[int, int] = {}
    for tid, rgbs in value.items():
        _train_id(path, f"colors.{tid}", tid)
        rgbs = rgbs if isinstance(rgbs, list) and rgbs and isinstance(rgbs[0], (list, tuple)) else [rgbs]
        for rgb in rgbs:
            if not (isinstance(rgb, (list, tuple)) and len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
                _fail(path, f"colors.{tid}", f"has colour {rgb!r}", "write a colour as [r, g, b] with 0..255 each")
            packed = pack_rgb(rgb)
            if table.get(packed, tid) != tid:
                _fail(path, f"colors.{tid}", f"repeats colour {list(rgb)} of trainId {table[packed]}", "give each colour one class")
            table[packed] = tid
    return table


def _ids(path: Path, value) -> dict[int, int]:
    if not isinstance(value, dict) or not value:
        _fail(path, "ids", f"is {value!r}", "map raw label ids to trainIds, e.g. {7: 0, 8: 1}")
    for raw, tid in value.items():
        if not isinstance(raw, int) or not 0 <= raw < 1 << 16:
            _fail(path, f"ids.{raw}", "is not a label id", "raw ids are integers 0..65535")
        _train_id(path, f"ids.{raw}", tid)
    return dict(value)


def load_spec(path: Path) -> dict:
    """Parse and validate one file (yaml.safe_load: a dataset file can never run code)."""
    if not path.is_file():
        raise YamlSpecError(f"dataset file {path} does not exist; check $SEGBENCH_DATASETS or the path given")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise YamlSpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise YamlSpecError(f"{path}: expected a mapping of fields ({', '.join(REQUIRED)}, ...) at the top level")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        _fail(path, unknown[0], "is not a known field", f"valid fields: {', '.join(FIELDS)}")
    for field in REQUIRED:
        if field not in spec:
            _fail(path, field, "is missing", "see the example in segbench/data/yaml_dataset.py or the README")
    name = spec["name"]
    if not isinstance(name, str) or not name or "@" in name or "/" in name:
        _fail(path, "name", f"is {name!r}", "use a short name without '@' or '/', e.g. mycity")
    splits = spec["splits"]
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and s for s in splits):
        _fail(path, "splits", f"is {splits!r}", "list the split names, e.g. [train, val]")
    _dir_suffix(path, spec, "images")
    _dir_suffix(path, spec, "labels")
    encoding = spec["encoding"]
    if encoding not in ENCODINGS:
        _fail(path, "encoding", f"is {encoding!r}", f"use one of {', '.join(ENCODINGS)}")
    if encoding == "palette" and "colors" not in spec:
        _fail(path, "colors", "is missing (encoding: palette)", "map trainIds to colours, or write `colors: cityscapes`")
    if encoding == "ids" and "ids" not in spec:
        _fail(path, "ids", "is missing (encoding: ids)", "map raw label ids to trainIds, e.g. {7: 0, 8: 1}")
    for field, needs in (("colors", "palette"), ("ids", "ids")):
        if field in spec and encoding != needs:
            _fail(path, field, f"is only used with `encoding: {needs}`", f"remove it or set encoding: {needs}")
    if spec.get("channel") not in (None, "r", "g", "b") or (spec.get("channel") and encoding == "palette"):
        _fail(path, "channel", f"is {spec.get('channel')!r}", "use r, g or b, and only with an id encoding")
    if "eval_classes" in spec:
        ec = spec["eval_classes"]
        if not isinstance(ec, list) or not ec or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in ec):
            _fail(path, "eval_classes", f"is {ec!r}", f"list trainIds 0..{NUM_CLASSES - 1}")
    if "eval_height" in spec and (not isinstance(spec["eval_height"], int) or spec["eval_height"] <= 0):
        _fail(path, "eval_height", f"is {spec['eval_height']!r}", "give a height in pixels or remove it")
    return spec


def class_attributes(path: Path, spec: dict) -> dict:
    attrs = {
        "spec": spec,
        "spec_path": str(path),
        "default_dir": str(spec.get("root", spec["name"])),
        "splits": tuple(spec["splits"]),
        "layout": spec.get("layout") or (
            f"  {spec['images']['dir']}/**/NAME{spec['images']['suffix']}\n"
            f"  {spec['labels']['dir']}/**/NAME{spec['labels']['suffix']}   (encoding: {spec['encoding']}, from {path})"
        ),
        "eval_classes": tuple(spec.get("eval_classes", range(NUM_CLASSES))),
        "eval_height": spec.get("eval_height"),
        "__module__": __name__,
    }
    encoding = spec["encoding"]
    if encoding == "trainid":
        attrs.update(label_lut=TRAINID_LUT, known_label_values=TRAINID_KNOWN)
    elif encoding == "cityscapes":
        attrs.update(label_lut=CITYSCAPES_LUT, known_label_values=CITYSCAPES_KNOWN)
    elif encoding == "ids":
        ids = _ids(path, spec["ids"])
        attrs.update(label_lut=make_lut(ids, size=256 if max(ids) < 256 else 1 << 16), known_label_values=tuple(sorted(ids)))
    else:
        table = _colors(path, spec["colors"])
        keys = np.array(sorted(table), dtype=np.int32)
        attrs.update(color_keys=keys, color_values=np.array([table[k] for k in keys], dtype=np.uint8))
    return attrs


def register_yaml(path: str | Path) -> str:
    """Validate the file and register its dataset under its `name`; re-registering the same file refreshes it."""
    path = Path(path).expanduser().resolve()
    spec = load_spec(path)
    name = spec["name"]
    if name in DATASETS and getattr(DATASETS.get(name), "spec_path", None) != str(path):
        owner = getattr(DATASETS.get(name), "spec_path", None) or DATASETS.get(name).__module__
        _fail(path, "name", f"{name!r} is already registered (by {owner})", "choose another name")
    cls = type(f"Yaml_{name}", (YamlDataset,), class_attributes(path, spec))
    DATASETS.add(name, cls, override=True)
    return name
