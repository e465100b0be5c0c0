"""Crash-safe checkpoints: atomic writes, keep the newest K, resume only into the same configuration."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..io import save_torch

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


def load_trained_model(path: Path):
    """Rebuild a trained model from a cell directory, its `model_final.pt` (config in `record.json` beside it) or a
    training checkpoint `iter_*.pt` (config inside). Returns (model, description dict)."""
    import json

    from ..models import create_model

    path = Path(path)
    if path.is_dir():
        path = path / "model_final.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a cell directory (results/STUDY/cells/CELL), its "
                                "model_final.pt, or a checkpoints/iter_*.pt file")
    state = load_checkpoint(path)
    if isinstance(state, dict) and "identity" in state and "model" in state:
        ident, weights = state["identity"], state["model"]
    else:
        record_path = path.parent / "record.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"{path} holds bare weights and {record_path} is missing, so the architecture is "
                                    "unknown; pass the cell directory that holds both")
        record = json.loads(record_path.read_text())
        try:
            ident = {"backbone": record["backbone"], "head": record["head"], "model": record["config"]["model"],
                     "source": record["source"], "seed": record["seed"]}
        except KeyError as e:
            raise ValueError(f"{record_path} lacks key {e}; it was not written by segbench's runner") from None
        weights = state
    mcfg = ident["model"]
    model = create_model(ident["backbone"], head=ident["head"], output_stride=mcfg.get("output_stride"),
                         pretrained=None, aux=bool(mcfg.get("aux")))
    model.load_state_dict(weights)
    return model.eval(), ident
