"""Crash-safe checkpoints: atomic writes, keep the newest K, resume only into the same configuration, from the newest
checkpoint that loads (a damaged one, or one holding objects that are never loaded, is renamed NAME.damaged and kept,
never deleted); a finished cell's training checkpoints are pruned (`prune_checkpoints`)."""
from __future__ import annotations

import re
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..cells import FINAL_WEIGHTS
from ..io import DAMAGED_SUFFIX, DamagedFileError, UnsafeFileError, load_torch, save_torch, set_aside

if TYPE_CHECKING:
    import torch

_NAME = re.compile(r"^iter_(\d+)\.pt$")


@dataclass(kw_only=True)
class TrainingState:
    """A training checkpoint, key by key, written down once: what engine/train.py saves and resumes from. The fields
    without a default are in every checkpoint; the others came later, and a checkpoint written before one of them
    resumes with its default."""

    iteration: int  # optimizer steps done
    identity: dict  # the training identity of the run that wrote it: a run resumes only from its own
    model: dict  # state dicts
    optimizer: dict
    scaler: dict | None = None  # the GradScaler's, under fp16 autocast
    rng_cpu: torch.Tensor
    rng_cuda: torch.Tensor | None = None
    train_seconds: float = 0.0  # what the launches up to `iteration` trained: seconds and images (record["training"])
    train_images: int = 0
    launches: list = field(default_factory=list)
    curves: dict | None = field(default_factory=dict)  # under eval.every: {target: [[iteration, miou], ...]}
    eval_seconds: float = 0.0

    @classmethod
    def missing(cls, state) -> list[str]:
        """The keys every training checkpoint holds that `state` lacks (all of them when it is no mapping)."""
        return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                and not (isinstance(state, dict) and f.name in state)]

    @classmethod
    def from_checkpoint(cls, state: dict, path: Path) -> "TrainingState":
        """A loaded checkpoint file as a TrainingState; DamagedCheckpoint when it is not a training checkpoint."""
        missing = cls.missing(state)
        if missing:
            raise DamagedCheckpoint(f"{path}: not a training checkpoint (no {', '.join(missing)})")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})

    def to_checkpoint(self) -> dict:
        """What the checkpoint file holds: every field by name (tensors as they are, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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


def model_weights(state, path: Path):
    """The model's state dict in a weights file segbench wrote: model_final.pt is one, a training checkpoint holds it
    as its `model`."""
    return TrainingState.from_checkpoint(state, path).model if not TrainingState.missing(state) else state


def repair_hint(path: Path) -> str:
    """What to do about a weights file that cannot be loaded, given where it is."""
    if Path(path).name == FINAL_WEIGHTS:
        return ("rerunning the study that wrote it repairs it (the run keeps this file aside as "
                f"{FINAL_WEIGHTS}{DAMAGED_SUFFIX} and trains the cell again)")
    return f"pass a {FINAL_WEIGHTS} or checkpoints/iter_*.pt that segbench wrote"


def load_latest_checkpoint(directory: Path, set_damaged_aside: bool = True) -> tuple[Path, TrainingState] | None:
    """The newest training checkpoint that loads, with its path; None when there is none.

    A damaged one (truncated by a full disk or a copy cut short), or one holding objects weights_only refuses (a
    payload put there), must not block the cell forever: it is set aside as NAME.damaged with a warning naming it,
    and the one before it is tried. Ranks other than the first pass set_damaged_aside=False and skip it (or find it
    already moved).
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, TrainingState.from_checkpoint(load_checkpoint(path), path)
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
