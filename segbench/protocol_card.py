"""The protocol card: what a cell's numbers were measured under, stored on its record (`protocol`), so a table can say
which protocol each number follows (report/protocols.py) without reading the configuration's every setting.

Nothing here imports torch (the models are imported only to resolve a head's default output stride).
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING

from .cells import trained_on_scored
from .config import identity_view
from .labels import NUM_CLASSES
from .spec import is_multi_source, prepared_parts, scoring_view, source_parts

if TYPE_CHECKING:
    from .cells import Cell

#: which weights are scored: those at the end of training (no checkpoint is picked on a validation score); the
#: report's other model-selection rules (report/selection.py) put their own name here
CHECKPOINT_RULE = "last"


def _resolution(name: str) -> str:
    """"native", or the size of the resized copy a `NAME@WxH` source reads."""
    return prepared_parts(name)[1] or "native"


def with_resolved_output_stride(model: dict, head, backbone=None) -> dict:
    """`output_stride: None` means the head's default, or the backbone's own where it is fixed (a ViT's pyramid;
    models.create_model): a card states the number, so a study that never sets it and one that writes the default
    describe one network with one card. The cell id keeps the setting as given (ids of finished cells do not move).
    A head or backbone not registered here (a plug-in not loaded) keeps None; the models (torch) are imported only
    for a None. Returns `model` itself when nothing changes."""
    if "output_stride" not in model or model["output_stride"] is not None:
        return model
    from .models import BACKBONES, HEADS
    from .models.factory import fixed_output_stride

    if isinstance(backbone, str) and backbone in BACKBONES and fixed_output_stride(backbone) is not None:
        return {**model, "output_stride": fixed_output_stride(backbone)}
    if not (isinstance(head, str) and head in HEADS) or HEADS.get(head).default_output_stride is None:
        return model
    return {**model, "output_stride": HEADS.get(head).default_output_stride}


def protocol_card(cell: Cell, targets: dict[str, dict]) -> dict:
    """The protocol a cell's numbers were measured under: its training recipe and, per scored target (`targets`:
    target_protocol of each), how it was scored. Settings enter as in the cell id: no speed knobs, none at the value
    it had before it existed, so a card only changes when the protocol does."""
    train = identity_view("train", cell.train)
    card: dict = {"sources": list(source_parts(cell.source)), "split": train.pop("split", None),
                  "resolution": {p: _resolution(p) for p in source_parts(cell.source)}}
    weights = train.pop("source_weights", None)
    if is_multi_source(cell.source):
        card["source_weights"] = weights if weights is not None else "proportional to size"
        card["training_classes"] = list(cell.training_classes) if cell.training_classes else "all"
    on_training_images = (trained_on_scored(cell.source, card["split"], cell.eval.get("split"))
                          if cell.eval.get("in_domain", True) else [])
    if on_training_images:  # only under train.allow_eval_split (validation.eval_split_problems): the table says so
        card["in_domain_on_training_images"] = on_training_images
    card.update({"global_batch": train.pop("batch_size", None), "iterations": train.pop("iters", None),
                 "train": train, "model": with_resolved_output_stride(identity_view("model", cell.model), cell.head,
                                                                           cell.backbone),
                 "eval": cell.eval_identity(),
                 "targets": {t: _with_view_eval(cell, t, targets[t]) for t in cell.eval_targets if t in targets},
                 "checkpoint": CHECKPOINT_RULE})
    return card


def _with_view_eval(cell: "Cell", target: str, protocol: dict) -> dict:
    """A view (`cityscapes~native`) was scored under its own eval settings: its entry says which."""
    return protocol if scoring_view(target)[1] is None else {**protocol, "eval": cell.eval_identity(target)}


_NOT_PLAIN = object()


def _plain_value(value):
    """A value as a record stores it: JSON scalars, lists (tuples too), and dataclasses (a protocol geometry) as
    {"type": class name, field: value}; _NOT_PLAIN for anything else (objects, callables), which a card leaves out."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain_value(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if is_dataclass(value) and not isinstance(value, type):
        out = {"type": type(value).__name__}
        for f in fields(value):
            plain = _plain_value(getattr(value, f.name))
            if plain is not _NOT_PLAIN:
                out[f.name] = plain
        return out
    return _NOT_PLAIN


def target_protocol(dataset, classes, missing_pairs: int = 0) -> dict:
    """How one target is scored, read off the opened dataset: its split, the plain settings of its eval transform
    (its protocol geometry: resize, height, crop, as data/eval_protocols.py defines them; whatever the transform
    holds as plain values or dataclasses, so a setting added there appears here), the trainIds its mIoU averages
    over (`classes`; None: all 19), and how many files were left out for lacking their image or label (only when
    any were: `eval.missing_pairs: skip`)."""
    transform = {}
    for key, value in getattr(getattr(dataset, "transform", None), "__dict__", {}).items():
        plain = _plain_value(value)
        if plain is not _NOT_PLAIN and not key.startswith("_"):
            transform[key] = plain
    scored = list(range(NUM_CLASSES)) if classes is None else sorted(int(c) for c in classes)
    entry = {"split": getattr(dataset, "split", None), "transform": transform,
             "classes": NUM_CLASSES if scored == list(range(NUM_CLASSES)) else scored}
    if missing_pairs:
        entry["missing_pairs"] = missing_pairs
    return entry
