"""A dataset described by a YAML file, so a new domain needs no code. Example (all keys shown):

    segbench_dataset: 1              # required: declares the file a segbench dataset (format version 1)
    name: mycity                     # registered dataset name (not a built-in one): letters, digits, _ - . (spec.py)
    root: mycity                     # its directory: relative to the data root (default: the name), or absolute
    splits: [train, val]
    images: {dir: "images/{split}", suffix: ".jpg"}        # relative to root (or absolute); searched recursively
    labels: {dir: "labels/{split}", suffix: "_label.png"}  # same relative path and stem as the image
    encoding: ids                    # trainid | cityscapes | ids | palette
    ids: {7: 0, 8: 1, 11: 2, 0: 255} # ids: raw id -> trainId (255 = ignore); an unlisted id is an unknown value
    colors: {0: [128, 64, 128]}      # palette: trainId -> [r, g, b] (or a list of them), or the word `cityscapes`
    channel: r                       # optional: read the id from this channel of a multi-channel label
    eval_classes: [0, 1, 2]          # optional: trainIds scored (default all 19)
    eval_height: 1024                # optional: evaluate at this height

Paths stay inside what they are relative to: a relative `root` that climbs out of the data root with `..`, or an
`images.dir` / `labels.dir` (with any split filled in) that climbs out of `root`, is refused; write an absolute path to
point elsewhere on purpose. Raw values outside the table (an unlisted id or colour) are reported by `segbench data
check` and stop training unless `train.unknown_labels: ignore` (see `base.SegmentationDataset.load_pair`).

Every bad field fails with the file, the field and the fix (`YamlSpecError`, a `DatasetError`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import yaml

from ..labels import CITYSCAPES_LUT, IGNORE_INDEX, NUM_CLASSES, PALETTE, make_lut
from ..spec import DATASET_NAME_RULE, dataset_name_problem
from .base import DatasetError, SegmentationDataset
from .pairing import pair_by_suffix, require_dir
from .readers import pack_rgb, read_color_label, read_index_label, read_label_channel
from .registry import DATASETS
from .tables import CITYSCAPES_KNOWN, CITYSCAPES_VOID_COLORS, TRAINID_KNOWN, TRAINID_LUT

#: the top-level key that makes a YAML file a segbench dataset (plug-in discovery skips files without it), and the
#: format version it must hold
DECLARATION = "segbench_dataset"
FORMAT_VERSION = 1
ENCODINGS = ("trainid", "cityscapes", "ids", "palette")
FIELDS = (DECLARATION, "name", "root", "splits", "images", "labels", "encoding", "ids", "colors", "channel", "eval_classes",
          "eval_height", "layout")
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
        image_dir = require_dir(self, self.directory(images["dir"], split), "image")
        label_dir = require_dir(self, self.directory(labels["dir"], split), "label")
        return pair_by_suffix(image_dir, images["suffix"], label_dir, (labels["suffix"],), self.skipped)

    def directory(self, template: str, split: str) -> Path:
        """`images.dir` or `labels.dir` for `split` under root, `..` resolved by name: as `load_spec` checked it (the
        system would resolve `link/..` through a symlink's target, which could lead elsewhere)."""
        return self.root / os.path.normpath(template.format(split=split))

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
        idx = np.clip(np.searchsorted(self.color_keys, raw), 0, len(self.color_keys) - 1)
        unmatched = raw[self.color_keys[idx] != raw]
        if unmatched.size == 0:
            return {}
        values, counts = np.unique(unmatched, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}  # keys: packed 0xRRGGBB

    def describe_label_value(self, value: int) -> str:
        if self.color_keys is None:
            return super().describe_label_value(value)
        return f"rgb({value >> 16 & 255}, {value >> 8 & 255}, {value & 255})"

    def label_table_key(self) -> str:
        return json.dumps(self.spec, sort_keys=True, default=str)

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


def _climbs_out(relative: str) -> bool:
    """Whether a relative path leaves the directory it is relative to (`a/../..`, `../x`)."""
    parts = os.path.normpath(relative).split(os.sep)
    return parts[0] == ".."


def _check_paths(path: Path, spec: dict) -> None:
    """Relative paths stay under their base (root under the data root, the directories under root); absolute paths
    are taken as written. Nothing a plug-in names makes segbench walk a directory the file did not declare."""
    if "root" in spec:
        root = spec["root"]
        if not isinstance(root, str) or not root.strip():
            _fail(path, "root", f"is {root!r}", "write the dataset's directory, relative to the data root or absolute")
        if not os.path.isabs(root) and _climbs_out(root):
            _fail(path, "root", f"{root!r} leads outside the data root", "write it relative to the data root without "
                  "climbing out with '..', or as an absolute path")
    for split in spec["splits"]:
        if split in (".", "..") or "/" in split or "\\" in split:
            _fail(path, "splits", f"has {split!r}, which would lead outside the dataset's directories",
                  "split names are plain names (no '/', no '..'); they fill the {split} of images.dir and labels.dir")
    for field in ("images", "labels"):
        directory = spec[field]["dir"]
        if os.path.isabs(directory):
            continue
        for split in spec["splits"]:
            if _climbs_out(directory.format(split=split)):
                _fail(path, f"{field}.dir", f"{directory!r} leads outside the dataset root",
                      "write it relative to `root` without climbing out with '..', or as an absolute path")


def _colors(path: Path, value) -> dict[int, int]:
    """colors -> {packed rgb: trainId}."""
    if value == "cityscapes":
        table = {pack_rgb(rgb): IGNORE_INDEX for rgb in CITYSCAPES_VOID_COLORS}
        table.update({pack_rgb(rgb): tid for tid, rgb in enumerate(PALETTE)})
        return table
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
    if not isinstance(spec, dict) or DECLARATION not in spec:
        raise YamlSpecError(
            f"{path} is not a segbench dataset file: it lacks the top-level line `{DECLARATION}: {FORMAT_VERSION}` "
            "that declares one (see the example in segbench/data/yaml_dataset.py or docs/plugins.md, 'Adding a dataset')"
        )
    if spec[DECLARATION] != FORMAT_VERSION:
        _fail(path, DECLARATION, f"is {spec[DECLARATION]!r}", f"this segbench reads format {FORMAT_VERSION}: write "
              f"`{DECLARATION}: {FORMAT_VERSION}`")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        _fail(path, unknown[0], "is not a known field", f"valid fields: {', '.join(FIELDS)}")
    for field in REQUIRED:
        if field not in spec:
            _fail(path, field, "is missing", "see the example in segbench/data/yaml_dataset.py or docs/plugins.md")
    if dataset_name_problem(spec["name"]):
        _fail(path, "name", f"is {spec['name']!r}", f"rename it: {DATASET_NAME_RULE}")
    splits = spec["splits"]
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and s for s in splits):
        _fail(path, "splits", f"is {splits!r}", "list the split names, e.g. [train, val]")
    _dir_suffix(path, spec, "images")
    _dir_suffix(path, spec, "labels")
    _check_paths(path, spec)
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
        "default_dir": os.path.normpath(str(spec.get("root", spec["name"]))),
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
        taken = DATASETS.get(name)
        owner = getattr(taken, "spec_path", None)
        if owner:
            _fail(path, "name", f"{name!r} is already registered by {owner}", "give one of the two files another name")
        elif taken.__module__.startswith(f"{__package__}."):
            _fail(path, "name", f"{name!r} is a built-in dataset ({taken.__module__}.{taken.__qualname__})",
                  "choose another name")
        else:
            _fail(path, "name", f"{name!r} is already registered (by {taken.__module__})", "choose another name")
    cls = type(f"Yaml_{name}", (YamlDataset,), class_attributes(path, spec))
    DATASETS.add(name, cls, override=True)
    return name
