"""Weights files without a frozen backbone: a frozen-backbone method (`frozen`, `rein`, `lora`, `vpt`) trains a few
million parameters beside a pretrained backbone that never changes, and writing its 300M frozen parameters into every
checkpoint and model_final.pt (1.2 GB on DINOv2-L) would store the pretrained file again and again. Such a file keeps
the trained tensors and a reference instead: the pretrained file it was built from, that file's SHA-256, and the keys
left out. Loading it rebuilds the network from the pretrained file (`needs_pretrained`), checks the hash, and takes
the left-out tensors from there; another file is refused, named, with both hashes.

Only tensors that were loaded from the pretrained file and stay frozen are left out (`loaded_from`): a backbone
trained from scratch, fully fine-tuned, or only partly covered by its file is written whole where the file does not
hold it. The left-out tensors are rebuilt by this version of segbench's conversion (the `_p16` resize, say) from the
file: a change to that conversion is a change of the backbone, as for any checkpoint of a backbone's code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

#: the reference's key in a weights file's state dict (never a parameter name: those have no spaces)
FROZEN = "frozen backbone"
#: the attribute `loaded_from` puts on a backbone
_SOURCE = "pretrained_source"

_hashes: dict[tuple[str, int, int], str] = {}


class FrozenBackboneError(RuntimeError):
    """A weights file without its frozen backbone cannot be completed: its pretrained file is absent or another."""


def loaded_from(module: torch.nn.Module, path: Path, params) -> None:
    """Note on `module` that `params` (its parameters, as objects) hold the tensors of the pretrained file `path`:
    the objects survive `.to()`, DDP and peft's wrapping of a layer, so the names they have when saved are found
    then (`frozen_reference`)."""
    setattr(module, _SOURCE, (Path(path), tuple(params)))


def file_sha256(path: Path) -> str:
    """The file's SHA-256, hashed once per process while its size and modification time stay the same (a
    checkpoint every few hundred steps would hash 1.2 GB each time)."""
    from ..models.pretrained import sha256_of

    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_of(Path(path))
    return _hashes[key]


def _source(model: torch.nn.Module) -> tuple[Path, tuple] | None:
    sources = [getattr(m, _SOURCE) for m in model.modules() if getattr(m, _SOURCE, None) is not None]
    if len(sources) > 1:
        raise FrozenBackboneError(f"the network holds {len(sources)} pretrained files; a weights file can refer "
                                  "to one")
    return sources[0] if sources else None


def frozen_reference(model: torch.nn.Module) -> dict | None:
    """{"file", "sha256", "keys"} of the frozen tensors `model` took from its pretrained file; None when none."""
    source = _source(model)
    if source is None:
        return None
    path, params = source
    loaded = {id(p) for p in params}
    keys = [name for name, p in model.named_parameters() if not p.requires_grad and id(p) in loaded]
    if not keys:
        return None
    return {"file": str(path), "sha256": file_sha256(path), "keys": keys}


def weights_to_save(model: torch.nn.Module) -> dict:
    """`model.state_dict()`, less its frozen pretrained tensors and plus the reference to them, where it has any."""
    state = model.state_dict()
    reference = frozen_reference(model)
    if reference is None:
        return state
    left_out = set(reference["keys"])
    return {**{k: v for k, v in state.items() if k not in left_out}, FROZEN: reference}


def needs_pretrained(state) -> bool:
    """Whether a state dict was written without its frozen backbone: the network it goes into must be built with
    its pretrained file."""
    return isinstance(state, Mapping) and FROZEN in state


def weights_to_load(model: torch.nn.Module, state: Mapping, path: Path) -> dict:
    """A whole state dict for `model` (built with its pretrained file) from one `weights_to_save` wrote, read from
    `path`; a whole one is returned as it is. The pretrained file must be the one the weights were trained on."""
    if not needs_pretrained(state):
        return dict(state)
    reference = state[FROZEN]
    source = _source(model)
    if source is None:
        raise FrozenBackboneError(
            f"{path} holds the trained parameters only, beside a frozen backbone from {reference['file']}; the "
            "network was built without a pretrained file: set model.pretrained to that file (or its keyword)")
    here = file_sha256(source[0])
    if here != reference["sha256"]:
        raise FrozenBackboneError(
            f"{path} was trained on the frozen backbone of {reference['file']} (sha256 {reference['sha256'][:16]}...), "
            f"but model.pretrained gives {source[0]} (sha256 {here[:16]}...): another file, whose weights would "
            "replace the ones these parameters were trained with. Put the original file back at that path, or "
            "point model.pretrained at it (`--set model.pretrained=PATH`)")
    current = model.state_dict()
    missing = [k for k in reference["keys"] if k not in current]
    if missing:
        raise FrozenBackboneError(f"{path}: the frozen keys {missing[:3]} are not in this network; it was written "
                                  "by another network than the one its record describes")
    whole = {k: v for k, v in state.items() if k != FROZEN}
    whole.update({k: current[k] for k in reference["keys"]})
    return whole
