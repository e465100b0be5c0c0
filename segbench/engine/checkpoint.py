"""Crash-safe checkpoints: atomic writes, keep the newest K, resume only into the same configuration."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..cells import CHECKPOINTS, FINAL_WEIGHTS, RECORD, RecordError, read_record
from ..io import save_torch
from ..models import create_model

_NAME = re.compile(r"^iter_(\d+)\.pt$")


class CheckpointMismatch(RuntimeError):
    """A checkpoint was written by a different configuration than the one asked to resume from it."""


def checkpoint_path(directory: Path, iteration: int) -> Path:
    return Path(directory) / f"iter_{iteration:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: Path, iteration: int, state: dict, keep: int = 2) -> Path:
    path = checkpoint_path(directory, iteration)
    save_torch(path, state)
    for _, old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def check_same_config(saved: dict, current: dict, path: Path) -> None:
    """Refuse to resume across configurations, naming every field that differs."""
    if saved == current:
        return
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            diffs.append(f"  {key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}")
    raise CheckpointMismatch(
        f"checkpoint {path} was written by another configuration:\n" + "\n".join(diffs)
        + f"\nDelete {Path(path).parent} to start over, or run with the checkpoint's settings."
    )


class CheckpointError(ValueError):
    """A checkpoint cannot be turned back into a model; the message names the file and what is wrong."""


def resolve(path: Path) -> tuple[Path, Path]:
    """Cell directory or weights file -> (weights, record.json of its cell), both checked to exist."""
    path = Path(path)
    weights = path / FINAL_WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such file; pass a finished cell directory (with {FINAL_WEIGHTS}), "
                              "its weights file, or a checkpoints/iter_*.pt file")
    cell = weights.parent.parent if weights.parent.name == CHECKPOINTS else weights.parent
    record = cell / RECORD
    if not record.is_file():
        raise CheckpointError(f"{record}: missing; the model is rebuilt from the cell record beside {weights.name}")
    return weights, record


def load_trained_model(path: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model of a finished (or checkpointed) cell in eval mode, weights loaded strictly; plus its record.

    Accepts a cell directory, its model_final.pt, or a checkpoints/iter_*.pt training checkpoint. Nothing is
    downloaded: the architecture is rebuilt with pretrained=None before the trained weights go in.
    """
    weights, record_path = resolve(path)
    try:
        record = read_record(record_path)
    except RecordError as e:
        raise CheckpointError(str(e)) from None
    cfg = record["config"]["model"]
    try:
        model = create_model(record["backbone"], head=record["head"], output_stride=cfg.get("output_stride"),
                             pretrained=None, aux=bool(cfg.get("aux", False)))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{record_path}: cannot build backbone {record['backbone']!r} head "
                              f"{record['head']!r}: {e}") from None
    state = load_checkpoint(weights)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint rather than the final state dict
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        more = lambda keys: f"{keys[:5]}{'...' if len(keys) > 5 else ''}"  # noqa: E731
        raise CheckpointError(
            f"{weights}: weights do not match {record['backbone']} + {record['head']} described by {record_path}: "
            f"missing {more(result.missing_keys)}, unexpected {more(result.unexpected_keys)}")
    return model.eval().to(device), record
