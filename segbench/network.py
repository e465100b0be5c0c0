"""The network a cell describes, built in one place: its backbone and head with the `model:` settings
(models/factory.py), and its method built into it (methods/). Training (pipeline.py), rebuilding a trained cell from
its record (`load_trained_model`: `segbench evaluate`, `segbench predict`, the analyses), the study's check of where
each method places its modules (validation.py, on the meta device) and the benchmarks all build it here, so they
build the same network.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cells import CHECKPOINTS, FINAL_WEIGHTS, RECORD
from .config import ERM, ModelSettings, model_settings
from .engine.checkpoint import CheckpointError, DamagedCheckpoint, UnsafeCheckpoint, load_checkpoint, model_weights, \
    repair_hint
from .engine.frozen_weights import FrozenBackboneError, needs_pretrained, weights_to_load
from .methods import Method, build_method
from .models import create_model
from .record import RecordError, read_record, record_method


class NetworkError(ValueError):
    """A backbone, head, model settings and method that do not make one network; the message says the fix."""


def build_network(backbone: str, head: str, model: ModelSettings, *, pretrained: bool = True) -> torch.nn.Module:
    """The backbone and head under the model settings, without a method. `pretrained=False` leaves out
    `model.pretrained`'s initial weights (a trained cell's own weights replace them; a check on the meta device has
    none to load); nothing is downloaded then."""
    try:
        network = create_model(backbone, head=head, output_stride=model.output_stride,
                               pretrained=model.pretrained if pretrained else None, aux=model.aux)
    except ValueError as e:  # an output stride or aux head the backbone and head cannot be built with
        raise NetworkError(str(e)) from None
    if model.checkpointing:
        if not hasattr(network.backbone, "checkpointing"):
            raise NetworkError(f"model.checkpointing recomputes a transformer's blocks; {backbone} has none: set it "
                               "false")
        network.backbone.checkpointing = True
    return network


def build_cell_model(backbone: str, head: str, model: ModelSettings, method: str = ERM, options: dict | None = None,
                     *, pretrained: bool = True) -> tuple[torch.nn.Module, Method]:
    """A cell's network (`build_network`) with its method (`method` with `options` over its defaults) built into it,
    before any weights go in: a method's modules and buffers are part of them. Returns both."""
    network = build_network(backbone, head, model, pretrained=pretrained)
    built = build_method(method, options)
    built.build(network)
    if getattr(getattr(network, "head", None), "takes_queries", False) and not any(
            hasattr(m, "queries") for m in getattr(network, "method_modules", {}).values()):
        raise NetworkError(f"head {head!r} takes its queries from Rein's tokens, and method {method!r} has none: use "
                           "it with the rein method, or the mask2former head (the rein method links its tokens to "
                           "that head's queries itself)")
    return network, built


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

    Accepts a cell directory, its model_final.pt, or a checkpoints/iter_*.pt training checkpoint. The network is
    rebuilt without its initial weights before the trained weights go in, except for a frozen backbone's, which its
    weights file leaves out (engine/frozen_weights.py): they come from the pretrained file, checked by its hash.
    """
    weights, record_path = resolve(path)
    try:
        record = read_record(record_path)
    except RecordError as e:
        raise CheckpointError(str(e)) from None
    method = record_method(record)
    try:
        state = model_weights(load_checkpoint(weights), weights)
    except (DamagedCheckpoint, UnsafeCheckpoint) as e:
        raise CheckpointError(f"{e}; {repair_hint(weights)}") from None
    try:
        model, _ = build_cell_model(record["backbone"], record["head"], model_settings(record["config"]["model"]),
                                    method["name"], method["options"], pretrained=needs_pretrained(state))
    except (KeyError, ValueError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e  # a KeyError's str() quotes its message
        raise CheckpointError(f"{record_path}: cannot build backbone {record['backbone']!r} head "
                              f"{record['head']!r} method {method['name']!r}: {text}") from None
    try:
        state = weights_to_load(model, state, weights)
    except FrozenBackboneError as e:
        raise CheckpointError(str(e)) from None
    mismatch = f"{weights}: weights do not match {record['backbone']} + {record['head']} described by {record_path}"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape (strict=False still refuses those)
        raise CheckpointError(f"{mismatch}: {str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        more = lambda keys: f"{keys[:5]}{'...' if len(keys) > 5 else ''}"  # noqa: E731
        raise CheckpointError(f"{mismatch}: missing {more(result.missing_keys)}, "
                              f"unexpected {more(result.unexpected_keys)}")
    return model.eval().to(device), record
