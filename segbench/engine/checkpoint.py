"""Crash-safe checkpoints: atomic writes, keep the newest K, resume only into the same configuration, from the newest
checkpoint that loads (a damaged one, or one holding objects that are never loaded, is renamed NAME.damaged and kept,
never deleted); a finished cell's training checkpoints are pruned (`prune_checkpoints`)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from ..cells import CHECKPOINTS, FINAL_WEIGHTS, RECORD
from ..config import ERM
from ..record import RecordError, read_record
from ..io import DAMAGED_SUFFIX, DamagedFileError, UnsafeFileError, load_torch, save_torch, set_aside
from ..methods import build_method
from ..models import create_model

_NAME = re.compile(r"^iter_(\d+)\.pt$")
TRAINING_STATE = ("iteration", "identity", "model", "optimizer", "rng_cpu")  # what train() resumes from


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
    """Tensors and plain containers only (io.load_torch: weights_only=True): a file that needs more never runs its
    code here. The errors say what is wrong with the file; where it is read adds the fix (`repair_hint`)."""
    try:
        return load_torch(path, map_location=map_location)
    except UnsafeFileError as e:
        raise UnsafeCheckpoint(f"{path}: not a segbench checkpoint, or it holds objects that may be unsafe to load "
                               f"({e}); segbench never loads such a file with weights_only=False") from None
    except DamagedFileError as e:
        raise DamagedCheckpoint(f"{path}: {e}") from None


def repair_hint(path: Path) -> str:
    """What to do about a weights file that cannot be loaded, given where it is."""
    if Path(path).name == FINAL_WEIGHTS:
        return ("rerunning the study that wrote it repairs it (the run keeps this file aside as "
                f"{FINAL_WEIGHTS}{DAMAGED_SUFFIX} and trains the cell again)")
    return f"pass a {FINAL_WEIGHTS} or checkpoints/iter_*.pt that segbench wrote"


def load_latest_checkpoint(directory: Path, set_damaged_aside: bool = True) -> tuple[Path, dict] | None:
    """The newest training checkpoint that loads, with its path; None when there is none.

    A damaged one (truncated by a full disk or a copy cut short), or one holding objects weights_only refuses (a
    payload put there), must not block the cell forever: it is set aside as NAME.damaged with a warning naming it,
    and the one before it is tried. Ranks other than the first pass set_damaged_aside=False and skip it (or find it
    already moved).
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
            missing = [k for k in TRAINING_STATE if not isinstance(state, dict) or k not in state]
            if missing:
                raise DamagedCheckpoint(f"{path}: not a training checkpoint (no {', '.join(missing)})")
            return path, state
        except FileNotFoundError:  # set aside by the first rank meanwhile
            continue
        except (DamagedCheckpoint, UnsafeCheckpoint) as e:
            if set_damaged_aside:
                _warn_set_aside(path, e, "resuming from the checkpoint before it (if any)")
    return None


def _warn_set_aside(path: Path, error: Exception, then: str) -> None:
    kept = set_aside(path)
    warnings.warn(f"{error}; kept aside as {kept.name}, {then}", DamagedCheckpointWarning, stacklevel=3)


def load_final_weights(path: Path, set_damaged_aside: bool = True) -> dict | None:
    """A finished cell's state dict; None when it has none yet, or when the file is damaged (or holds objects that
    are never loaded): then it is set aside with a warning and the cell trains again from its newest checkpoint (the
    final iteration's, when training had ended and its checkpoints were kept; from the start once they were pruned),
    rather than failing until someone deletes the file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except FileNotFoundError:  # set aside by the first rank meanwhile
        return None
    except (DamagedCheckpoint, UnsafeCheckpoint) as e:
        if set_damaged_aside:
            _warn_set_aside(path, e, "the cell resumes from its newest checkpoint (from the start when it has none)")
        return None


def prune_checkpoints(directory: Path) -> list[Path]:
    """Delete the training checkpoints (iter_*.pt) of a finished cell; returns them. Nothing a finished cell does
    reads them: scoring, reports and `evaluate` read model_final.pt, model selection the record's curves. Files set
    aside as damaged stay, and the directory goes once it is empty."""
    pruned = [path for _, path in list_checkpoints(directory)]
    for path in pruned:
        path.unlink(missing_ok=True)
    try:
        Path(directory).rmdir()
    except OSError:  # absent, or still holding files set aside
        pass
    return pruned


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


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that is truncated or corrupt (not one that is merely of another kind)."""


class UnsafeCheckpoint(CheckpointError):
    """A file torch.load(weights_only=True) refuses: it holds objects (maybe code), so it is never loaded."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged training checkpoint was set aside and an earlier one used."""


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
    method = record.get("method") or {"name": ERM, "options": {}}
    try:
        model = create_model(record["backbone"], head=record["head"], output_stride=cfg.get("output_stride"),
                             pretrained=None, aux=cfg.get("aux", False))
        build_method(method["name"], method.get("options")).build(model)  # its modules hold trained weights too
    except (KeyError, ValueError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e  # a KeyError's str() quotes its message
        raise CheckpointError(f"{record_path}: cannot build backbone {record['backbone']!r} head "
                              f"{record['head']!r} method {method.get('name')!r}: {text}") from None
    try:
        state = load_checkpoint(weights)
    except (DamagedCheckpoint, UnsafeCheckpoint) as e:
        raise CheckpointError(f"{e}; {repair_hint(weights)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a training checkpoint rather than the final state dict
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        more = lambda keys: f"{keys[:5]}{'...' if len(keys) > 5 else ''}"  # noqa: E731
        raise CheckpointError(
            f"{weights}: weights do not match {record['backbone']} + {record['head']} described by {record_path}: "
            f"missing {more(result.missing_keys)}, unexpected {more(result.unexpected_keys)}")
    return model.eval().to(device), record
