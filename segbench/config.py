"""Experiment configuration: plain nested dicts. Defaults here, one YAML file on top, `--set key=value` last.

This module is a leaf (it imports nothing from the rest of segbench): the report, the dry run and the commands read
configurations without loading torch or the training loop. Every setting has its one home here: `TrainSettings` (what
the training loop reads), `InferenceSettings` (how a prediction is made) and `EVAL_DEFAULTS` (how a target is scored).
No inheritance chains: an experiment file states everything that differs from these defaults.
"""
from __future__ import annotations

import copy
import importlib.resources
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the file/key and the fix."""


@dataclass
class TrainSettings:
    """One cell's training recipe (the `train:` section)."""

    iters: int = 40000
    batch_size: int = 8  # per process
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    aux_weight: float = 0.4
    workers: int = 4
    ckpt_every: int = 2000
    keep_ckpts: int = 2
    amp: bool = True  # only takes effect on CUDA
    channels_last: bool = True  # only takes effect on CUDA
    compile: bool = False
    class_uniform: float = 0.0  # fraction of samples drawn class-uniformly (RobustNet uses 0.5)
    split: str = "train"
    crop: tuple = (768, 768)  # (H, W)
    scale_range: tuple = (0.5, 2.0)
    hflip: float = 0.5


@dataclass(frozen=True)
class InferenceSettings:
    """How one image becomes class scores: whole image or sliding window, optional flip and multi-scale averaging."""

    mode: str = "whole"  # "whole" | "slide"
    window: tuple[int, int] | None = None  # (H, W) for mode="slide"
    stride: tuple[int, int] | None = None  # (H, W); default: 2/3 of the window
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"eval.mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and not self.window:
            raise ValueError("eval.mode='slide' needs eval.window=[H, W], e.g. --set eval.window=[512,1024]")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"eval.scales must be positive numbers, got {self.scales}")

    @classmethod
    def from_config(cls, ecfg: dict) -> "InferenceSettings":
        window, stride = ecfg.get("window"), ecfg.get("stride")
        return cls(mode=ecfg.get("mode", "whole"), window=tuple(window) if window else None,
                   stride=tuple(stride) if stride else None, flip=bool(ecfg.get("flip", False)),
                   scales=tuple(float(s) for s in (ecfg.get("scales") or (1.0,))))


def _plain(values: dict) -> dict:
    """Tuples as lists: what a YAML file or a JSON record round-trips to, so saved and fresh configs compare equal."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


#: the `eval:` section: which split is scored at which size (None: native, or the dataset's protocol height), the
#: loader, how many predictions are kept for the report's qualitative panel, and the inference settings
EVAL_DEFAULTS: dict[str, Any] = {"split": "val", "size": None, "batch_size": 1, "workers": 2,
                                 **_plain(asdict(InferenceSettings())), "dump": 4}

DEFAULTS: dict[str, Any] = {
    "name": None,  # results sub-directory; defaults to the experiment file's stem or the specs
    "specs": [],  # e.g. ["gta5->cityscapes,bdd100k,mapillary"]
    "backbones": ["resnet50", "resnet50_ibn_a", "resnet50_ibn_b"],
    "heads": ["fcn"],
    "seeds": [0],
    "model": {"output_stride": None, "pretrained": "imagenet", "aux": False},
    "train": _plain(asdict(TrainSettings())),
    "eval": EVAL_DEFAULTS,
}

# Settings that change how fast a cell runs but not what it computes: left out of the cell id.
NON_IDENTITY_KEYS = {"train": {"workers", "ckpt_every", "keep_ckpts", "channels_last", "compile"},
                     "eval": {"batch_size", "workers", "dump"}}


def experiments_dir() -> Path:
    """The shipped experiment files: `experiments/` of a source checkout, else the copy installed with the package."""
    checkout = Path(__file__).resolve().parent.parent / "experiments"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("segbench") / "experiments"))


EMBEDDED_DEFAULT = "embedded.yaml"


def experiment_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped experiment file (`robustnet_dg.yaml`, `robustnet_dg`)."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "experiments"):
        for candidate in (experiments_dir() / path.name, experiments_dir() / f"{path.name}.yaml"):
            if candidate.is_file():  # `NAME`, `NAME.yaml` or `experiments/NAME.yaml` from any directory
                return candidate
    available = ", ".join(sorted(p.name for p in experiments_dir().glob("*.yaml"))) or "none"
    raise ConfigError(f"experiment file {path} not found (shipped experiments in {experiments_dir()}: {available})")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys here: {valid}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}: {key}")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None) -> dict:
    """DEFAULTS, overlaid with the YAML experiment file at `path` (if any; a shipped experiment may be named)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is None:
        return cfg
    path = experiment_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    cfg = _merge(cfg, data, str(path))
    if cfg["name"] is None:
        cfg["name"] = path.stem
    return cfg


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """`train.iters=2000`, `model.pretrained=null`, `train.crop=[512,1024]`: values parsed as YAML scalars/lists."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.iters=2000")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse value {raw!r}: {e}") from None
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                here = ".".join(parts[:i]) or "(top level)"
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ConfigError(f"--set {item!r}: unknown key {part!r} under {here}; valid keys: {valid}")
            if i == len(parts) - 1:
                if isinstance(node[part], dict):
                    raise ConfigError(f"--set {item!r}: {key} is a section; set one of its keys: {', '.join(node[part])}")
                node[part] = value
            else:
                node = node[part]
    return cfg


def train_settings(train_cfg: dict) -> TrainSettings:
    names = {f.name for f in fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in train_cfg.items() if k in names})


def identity_view(section: str, values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in NON_IDENTITY_KEYS.get(section, set())}
