"""Rebuild a trained model from a finished cell (`cells/NAME/` or its `model_final.pt`, with `record.json` beside it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_NAME = "model_final.pt"
RECORD_NAME = "record.json"
REQUIRED_KEYS = ("backbone", "head", "config")


class CheckpointError(ValueError):
    """A checkpoint cannot be turned back into a model; the message names the file and what is wrong."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    label: str  # how tables and plots name it
    record: dict
    path: Path  # the weights file


def resolve(path: str | Path) -> tuple[Path, Path]:
    """Cell directory or weights file -> (weights, record.json), both checked to exist."""
    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such file; pass a finished cell directory (with {WEIGHTS_NAME}) "
                              f"or the weights file itself")
    record = weights.parent / RECORD_NAME
    if not record.is_file():
        raise CheckpointError(f"{record}: missing; the model is rebuilt from the cell record beside {weights.name} "
                              f"(keys {', '.join(REQUIRED_KEYS)})")
    return weights, record


def read_record(record_path: Path) -> dict:
    try:
        record = json.loads(Path(record_path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{record_path}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing or not isinstance(record.get("config"), dict) or "model" not in record["config"]:
        raise CheckpointError(f"{record_path}: missing keys {missing or ['config.model']}; "
                              f"expected a segbench cell record with {', '.join(REQUIRED_KEYS)} and config.model")
    return record


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of a cell in eval mode on `device`, weights loaded strictly (pretrained=None: nothing is downloaded)."""
    from ..models import create_model

    weights, record_path = resolve(path)
    record = read_record(record_path)
    cfg = record["config"]["model"]
    try:
        model = create_model(record["backbone"], head=record["head"], output_stride=cfg.get("output_stride"),
                             pretrained=None, aux=bool(cfg.get("aux", False)))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{record_path}: cannot build backbone {record['backbone']!r} head {record['head']!r}: {e}") from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint rather than the final state dict
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights}: weights do not match {record['backbone']} + {record['head']} described by {record_path}: "
            f"missing {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}")
    model.eval().to(device)
    return LoadedModel(model, record["backbone"], record, weights)


def load_models(paths, device="cpu") -> list[LoadedModel]:
    """Several cells; labels get the head, seed or cell name appended only where needed to tell them apart."""
    loaded = [load_model(p, device) for p in paths]
    for extra in (lambda m: m.record["head"], lambda m: f"s{m.record.get('seed', '?')}", lambda m: m.path.parent.name):
        groups: dict[str, list[LoadedModel]] = {}
        for m in loaded:
            groups.setdefault(m.label, []).append(m)
        for group in groups.values():
            if len(group) > 1 and len({extra(m) for m in group}) > 1:  # only where it tells them apart
                for m in group:
                    m.label = f"{m.label} {extra(m)}"
    return loaded
