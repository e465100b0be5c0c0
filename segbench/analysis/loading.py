"""Rebuild a trained model from a finished cell (`cells/NAME/` or its `model_final.pt`, with `record.json` beside it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..network import load_trained_model, resolve


@dataclass
class LoadedModel:
    model: torch.nn.Module
    label: str  # how tables and plots name it
    record: dict
    path: Path  # the weights file


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model of a cell in eval mode on `device` (the engine's loader), labelled by its backbone."""
    model, record = load_trained_model(Path(path), device)
    return LoadedModel(model, record["backbone"], record, resolve(path)[0])


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
