"""Experiment configuration: plain nested dicts. Defaults here, one YAML file on top, `--set key=value` last.

No inheritance chains: an experiment file states everything that differs from these defaults.
"""
from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from .engine.train import TrainSettings


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the file/key and the fix."""


DEFAULTS: dict[str, Any] = {
    "name": None,  # results sub-directory; defaults to the experiment file's stem or the specs
    "specs": [],  # e.g. ["gta5->cityscapes,bdd100k,mapillary"]
    "backbones": ["resnet50", "resnet50_ibn_a", "resnet50_ibn_b"],
    "heads": ["fcn"],
    "seeds": [0],
    "model": {"output_stride": None, "pretrained": "imagenet", "aux": False},
    "train": {
        **asdict(TrainSettings()),
        "split": "train",
        "crop": [768, 768],
        "scale_range": [0.5, 2.0],
        "hflip": 0.5,
    },
    "eval": {"split": "val", "size": None, "batch_size": 1, "workers": 2, "mode": "whole", "window": None,
             "stride": None, "flip": False, "scales": [1.0], "dump": 4},
}

# Settings that change how fast a cell runs but not what it computes: left out of the cell id.
NON_IDENTITY_KEYS = {"train": {"workers", "ckpt_every", "keep_ckpts", "channels_last", "compile"},
                     "eval": {"batch_size", "workers", "dump"}}

REPO_EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
EMBEDDED_DEFAULT = REPO_EXPERIMENTS / "embedded.yaml"


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
    """DEFAULTS, overlaid with the YAML experiment file at `path` (if any)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is None:
        return cfg
    path = Path(path)
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in REPO_EXPERIMENTS.glob("*.yaml"))) or "none"
        raise ConfigError(f"experiment file {path} not found (files in {REPO_EXPERIMENTS}: {available})")
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
    fields = TrainSettings.__dataclass_fields__
    return TrainSettings(**{k: v for k, v in train_cfg.items() if k in fields})


def identity_view(section: str, values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in NON_IDENTITY_KEYS.get(section, set())}
