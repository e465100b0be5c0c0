"""Experiment configuration: plain nested dicts. Defaults here, one YAML file on top, `--set key=value` last.

This module is a leaf (it imports nothing from the rest of segbench): the report, the dry run and the commands read
configurations without loading torch or the training loop. Every setting is declared once, as one field of its
section (`StudySettings`, then `ModelSettings`, `TrainSettings`, `EvalSettings`) made by `setting(...)`: its default,
the values it accepts, whether it is part of a cell's id, and the value it had before it existed. The tables the rest
of segbench reads are views of those fields (DEFAULTS, RULES, NON_IDENTITY_KEYS, ADDED_SETTINGS); the few rules that
span several settings of a section are the short list SECTION_RULES beside them. What needs the registries
(datasets, backbones, heads, methods) is validation.py's. No inheritance chains: an experiment file states everything
that differs from these defaults.
"""
from __future__ import annotations

import copy
import importlib.resources
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the file/key and the fix."""


#: the method of plain training (segbench.methods registers it under this name); the default of `methods`, and what a
#: record without a `method` field was trained with
ERM = "erm"

#: named `train.photometric` settings. "robustnet": every RobustNet GTA5 run's `--color_aug 0.5 --gblur`
#: (shachoi/RobustNet datasets/__init__.py, transforms/transforms.py RandomGaussianBlur)
PHOTOMETRIC_PRESETS: dict[str, dict[str, Any]] = {
    "robustnet": {"jitter_p": 0.5, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1,
                  "blur_sigma": [0.15, 1.3]},
}

#: `model.aux`: False (none), True (torchvision-style FCN head on layer3, loss at the input size) or "robustnet"
#: (RobustNet's `dsn` head, loss at its own resolution); models/heads.py aux_head builds each
AUX_KINDS = (False, True, "robustnet")

#: `train.unknown_labels`: what reading a label with values outside its dataset's table does: "error" refuses it
#: (data/base.py UnknownLabelError), "ignore" maps the values to the ignore index (training only, after counting them
#: for the record: data/label_scan.py apply_unknown_label_policy)
UNKNOWN_LABEL_POLICIES = ("error", "ignore")

#: `train.optimizer` and `train.pipeline`: engine/optim.py, data/transforms.py and data/mmseg_pipeline.py
OPTIMIZERS = ("sgd", "adamw")
PIPELINES = ("scale_crop", "rein")

#: `eval.protocol`: how each target's image and label are resized or cropped for scoring (data/eval_protocols.py)
EVAL_PROTOCOLS = ("native", "robustnet", "rein")
#: `eval.classes`: the class set every target's mIoU averages over (labels.CLASS_SETS); None: each dataset's own
EVAL_CLASS_SETS = (19, 16, 13)

#: `eval.missing_pairs`: a split to be scored with files that lack their partner (an image without its label, a label
#: without its image; with --preds also a prediction without its image and an image without its prediction): "error"
#: refuses to score it, naming the files; "skip" scores the complete pairs and records how many files were left out
MISSING_PAIRS = ("error", "skip")


# -- rules: what one setting accepts --------------------------------------------------------------------------------
# Every value is checked before any work: a wrong type or range otherwise fails deep inside torch, or worse, runs
# (`train.iters=0` trained nothing and scored the untrained model). Values that are already valid come back untouched,
# types included (cell ids hash the train section). The one conversion: YAML 1.1 (pyyaml) reads an exponent without a
# dot (`1e30`, `5e-4`) as a string, which number keys take as the float it spells.
class _Invalid(Exception):
    """A value a rule refuses; an optional argument is a hint appended to the rule's expectation."""


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: `expected` for the message, `convert` value -> value (raises _Invalid)."""

    expected: str
    convert: Callable[[Any], Any]


def _number(value: Any) -> int | float:
    """An int or float as given; a numeric string as a float; booleans, NaN and infinities refused."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, hint: str = "") -> None:
    if not ok:
        raise _Invalid(hint)


def integer(minimum: int) -> Rule:
    def convert(value):
        _require(_is_int(value) and value >= minimum)
        return value
    return Rule(f"an integer >= {minimum}", convert)


def number(low: float, high: float | None = None, *, above: bool = False, below: bool = False) -> Rule:
    """A number >= low (> low with `above`), and <= high (< high with `below`) when high is given."""
    def convert(value):
        value = _number(value)
        _require(value > low if above else value >= low)
        _require(high is None or (value < high if below else value <= high))
        return value
    if high is None:
        return Rule(f"a number {'>' if above else '>='} {low}", convert)
    return Rule(f"a number in {'(' if above else '['}{low}, {high}{')' if below else ']'}", convert)


def _flag(value):
    _require(isinstance(value, bool))
    return value


def _name(value):
    _require(isinstance(value, str) and value.strip() != "")
    return value


def one_of(*choices) -> Rule:
    def convert(value):
        _require(any(value == c and type(value) is type(c) for c in choices))  # 8.0 and True are not 8 and 1
        return value
    shown = ", ".join("null" if c is None else repr(c) for c in choices)
    return Rule(f"one of {shown}", convert)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.expected}", lambda value: None if value is None else rule.convert(value))


def _size(value):
    """[H, W] of positive ints, as given (a list stays a list, a tuple a tuple)."""
    _require(isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value))
    return value


def _scale_range(value):
    _require(isinstance(value, (list, tuple)) and len(value) == 2)
    low, high = (_number(v) for v in value)
    _require(0 < low <= high)
    return type(value)((low, high))


def _positive_numbers(value):
    _require(isinstance(value, (list, tuple)) and len(value) > 0)
    numbers = type(value)(_number(v) for v in value)
    _require(all(v > 0 for v in numbers))
    return numbers


def names(what: str, *, empty: bool = False) -> Rule:
    """A list of names (non-empty unless `empty`); one name alone is a list of one (`backbones: resnet50`)."""
    def convert(value):
        value = [value] if isinstance(value, str) else value
        _require(isinstance(value, list) and (empty or len(value) > 0)
                 and all(isinstance(v, str) and v.strip() for v in value))
        return value
    return Rule(f"a {what} or a {'' if empty else 'non-empty '}list of {what}s", convert)


def _seeds(value):
    _require(not _is_int(value), " (--seeds N runs seeds 0..N-1)")
    _require(isinstance(value, list) and len(value) > 0 and all(_is_int(v) and v >= 0 for v in value)
             and len(set(value)) == len(value))
    return value


def _study_name(value):
    """The results sub-directory: inside the results root, so no absolute path and no '..'."""
    if value is None:
        return value
    _require(isinstance(value, str) and value.strip() != "" and not Path(value).is_absolute()
             and ".." not in Path(value).parts)
    return value


def _pretrained(value):
    _require(value is None or (isinstance(value, str) and value.strip() != ""))
    return value


def _source_weights(value):
    """None, {name: weight} or [weight, ...], every weight a number > 0; which names and how many are checked against
    the specs (source_weights.py, from validation.py), which this section does not see."""
    if value is None:
        return value
    if isinstance(value, dict):
        _require(len(value) > 0 and all(isinstance(k, str) and k.strip() for k in value))
        out = {k: _number(v) for k, v in value.items()}
    else:
        _require(isinstance(value, (list, tuple)) and len(value) > 0)
        out = type(value)(_number(v) for v in value)
    _require(all(w > 0 for w in (out.values() if isinstance(out, dict) else out)), " (every weight must be > 0)")
    return out


def _photometric(value):
    """None, a preset name, or a mapping naming every parameter (no silent defaults: a forgotten jitter_p would
    otherwise switch the jitter off)."""
    if value is None:
        return value
    if isinstance(value, str):
        _require(value in PHOTOMETRIC_PRESETS)
        return value
    keys = list(next(iter(PHOTOMETRIC_PRESETS.values())))
    _require(isinstance(value, dict) and set(value) == set(keys), f" (the mapping needs exactly {', '.join(keys)})")
    out = dict(value)
    for key in ("jitter_p", "brightness", "contrast", "saturation", "hue"):
        out[key] = _number(value[key])
        _require(out[key] >= 0, f" ({key} must be >= 0)")
    _require(out["jitter_p"] <= 1, " (jitter_p is a probability)")
    _require(out["hue"] <= 0.5, " (hue must be <= 0.5)")
    if value["blur_sigma"] is not None:
        out["blur_sigma"] = _scale_range(value["blur_sigma"])
    return out


def _betas(value):
    """AdamW's (beta1, beta2), each in [0, 1)."""
    _require(isinstance(value, (list, tuple)) and len(value) == 2)
    betas = type(value)(_number(v) for v in value)
    _require(all(0 <= b < 1 for b in betas))
    return betas


def _lr_mult(value):
    """{parameter-name prefix: multiplier > 0}, e.g. {backbone: 0.1}."""
    _require(isinstance(value, dict) and all(isinstance(k, str) and k.strip() for k in value))
    out = {k: _number(v) for k, v in value.items()}
    _require(all(v > 0 for v in out.values()), " (every multiplier must be > 0)")
    return out


def _protocols(value):
    _require(isinstance(value, list) and all(isinstance(v, str) and v in EVAL_PROTOCOLS for v in value)
             and len(set(value)) == len(value))
    return value


def _method_options(value):
    """{name: {option: value}}: the structure only; which names and options exist is the method registry's
    business (validation.py)."""
    _require(isinstance(value, dict) and all(isinstance(k, str) and k.strip() and isinstance(v, dict)
                                             for k, v in value.items()))
    return value


FLAG = Rule("true or false", _flag)
NAME = Rule("a non-empty name", _name)
SIZE = Rule("[H, W], two integers >= 1", _size)


def of_type(kind: type | tuple[type, ...], expected: str) -> Rule:
    def convert(value):
        _require(isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
        return value
    return Rule(expected, convert)


def _rule_from_default(default: Any) -> Rule:
    """A setting declared without a rule, or a method's option: at least the type of its default."""
    if isinstance(default, bool):
        return FLAG
    if isinstance(default, float):
        return Rule("a number", _number)
    for kind, expected in ((int, "an integer"), (str, "a string"), ((list, tuple), "a list")):
        if isinstance(default, kind):
            return of_type(kind, expected)
    return Rule("a value, not a mapping", _not_mapping)


def check_like_default(key: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """A setting without a rule of its own (a method's option), checked against its default's type: (the value,
    converted as RULES convert, or None and the problem line)."""
    problems: list[str] = []
    value = _check(key, _rule_from_default(default), value, problems)
    return value, (f"{problems[0]} (default {default!r})" if problems else None)


def _not_mapping(value):
    _require(not isinstance(value, dict))
    return value


def _check(key: str, rule: Rule, value: Any, problems: list[str]) -> Any:
    try:
        return rule.convert(value)
    except _Invalid as e:
        problems.append(f"{key}={value!r}: expected {rule.expected}{e.args[0] if e.args else ''}")
        return value


# -- settings: each one field, declared once ------------------------------------------------------------------------
class _Never:
    """`before` of a setting segbench had from the start."""

    def __repr__(self) -> str:
        return "<there from the start>"


_THERE_FROM_THE_START = _Never()


def setting(default: Any, rule: Rule | None = None, *, identity: bool = True, before: Any = _THERE_FROM_THE_START):
    """One setting, declared once: its `default`; the values it accepts (`rule`; None: those of its default's type);
    `identity=False` for a setting that changes how fast a cell runs, or what is kept of it, but not what it computes
    (left out of the cell id); and `before`, for a setting added after studies were run: the value that reproduces
    what segbench did before it existed. While a setting holds that value it is left out of the cell id (and, in the
    eval section, of what a score was made under), so adding a setting never invalidates finished cells."""
    metadata = {"rule": rule, "identity": identity, "before": before}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class StudySettings:
    """Which cells a study runs: the top level of an experiment file (its sections are the dataclasses below)."""

    #: results sub-directory; defaults to the experiment file's stem or the specs
    name: str | None = setting(None, Rule("a relative directory name without '..'", _study_name))
    #: e.g. ["gta5->cityscapes,bdd100k,mapillary"]; none here: given on the command line
    specs: list = setting([], names("spec", empty=True))
    backbones: list = setting(["resnet50", "resnet50_ibn_a", "resnet50_ibn_b"], names("name"))
    heads: list = setting(["fcn"], names("name"))
    seeds: list = setting([0], Rule("a non-empty list of distinct integers >= 0", _seeds))
    #: domain-generalization methods, a matrix axis like backbones (segbench.methods: `segbench methods` lists them)
    methods: list = setting([ERM], names("method"))
    #: method options over each method's defaults: {method: {option: value}}, e.g. {isw: {weight: 0.6}}; the options
    #: themselves are checked against the method registry (validation.py), which this leaf module does not import
    method: dict = setting({}, Rule("a mapping {method: {option: value}}", _method_options))


@dataclass(frozen=True)
class ModelSettings:
    """The network of a cell, besides its backbone and head (the `model:` section)."""

    #: None: the head's default (models.create_model)
    output_stride: int | None = setting(None, one_of(None, 8, 16, 32))
    pretrained: str | None = setting("imagenet", Rule("null, 'imagenet', 'torchvision', 'dinov2' or the path of a "
                                                      "state dict",
                                                      _pretrained))
    aux: bool | str = setting(False, Rule("false, true (FCN aux head) or 'robustnet' (RobustNet's dsn head)",
                                          one_of(*AUX_KINDS).convert))
    #: recompute each transformer block's activations in the backward pass instead of keeping them (ViT backbones):
    #: the same gradients for less memory, so not part of the cell id
    checkpointing: bool = setting(False, FLAG, identity=False)


@dataclass
class TrainSettings:
    """One cell's training recipe (the `train:` section)."""

    iters: int = setting(40000, integer(1))
    #: the global batch, all processes together: each of N processes takes batch_size / N (a ConfigError when N does
    #: not divide it), so a study computes the same thing on 1 GPU and on 4, and the cell id does not depend on N
    batch_size: int = setting(8, integer(1))
    #: micro-steps per optimizer step, for a per-process share too large for memory: each forward pass takes
    #: batch_size / (N * accumulate) images and the gradients of the micro-steps are averaged (engine/train.py).
    #: Part of the cell id: BatchNorm then normalises over the micro-batch, not the whole batch.
    accumulate: int = setting(1, integer(1), before=1)
    #: "sgd" (momentum; every IBN-Net and RobustNet recipe) or "adamw" (betas, eps; Rein's recipe): engine/optim.py
    optimizer: str = setting("sgd", one_of(*OPTIMIZERS), before="sgd")
    lr: float = setting(0.01, number(0, above=True))
    momentum: float = setting(0.9, number(0, 1, below=True))  # SGD's
    betas: tuple = setting((0.9, 0.999), Rule("[BETA1, BETA2], each in [0, 1)", _betas), before=[0.9, 0.999])
    eps: float = setting(1e-8, number(0, above=True), before=1e-8)  # AdamW's
    weight_decay: float = setting(5e-4, number(0))
    #: parameters trained without weight decay: those whose name holds one of these strings (Rein: norms, query
    #: embeddings, level embeddings, its tokens and scale), and with `no_decay_norms` every parameter of a
    #: normalisation layer (mmengine's norm_decay_mult=0)
    no_decay: list = setting([], names("name fragment", empty=True), before=[])
    no_decay_norms: bool = setting(False, FLAG, before=False)
    #: learning-rate multipliers by parameter-name prefix, the longest matching one applying: {backbone: 0.1}
    lr_mult: dict = setting({}, Rule("a mapping {parameter-name prefix: multiplier > 0}", _lr_mult), before={})
    #: base learning rates by parameter-name prefix, as absolute values under the same schedule: {backbone: 1.0e-6}
    #: is `lr_mult` {backbone: 1e-6 / lr}; a prefix is set in one of the two
    lr_abs: dict = setting({}, Rule("a mapping {parameter-name prefix: learning rate > 0}", _lr_mult), before={})
    power: float = setting(0.9, number(0))
    #: a linear warmup over the first `warmup_iters` iterations, from warmup_ratio x lr to lr, before the poly decay
    #: over the rest (Rein's 1024 recipe: mmengine LinearLR start_factor 1e-6 for 10k iterations, then PolyLR)
    warmup_iters: int = setting(0, integer(0), before=0)
    warmup_ratio: float = setting(1e-6, number(0, 1, above=True), before=1e-6)
    aux_weight: float = setting(0.4, number(0))
    workers: int = setting(4, integer(0), identity=False)
    ckpt_every: int = setting(2000, integer(0), identity=False)  # 0: no periodic checkpoints
    keep_ckpts: int = setting(2, integer(0), identity=False)  # 0: keep every checkpoint
    #: false: a finished cell deletes its training checkpoints (checkpoints/iter_*.pt, weights and optimizer state,
    #: twice the size of model_final.pt each): nothing reads them once the cell is done (scoring, reports and
    #: `evaluate` read model_final.pt, model selection the record's curves); true keeps them, e.g. to train further
    keep_ckpts_when_done: bool = setting(False, FLAG, identity=False)
    amp: bool = setting(True, FLAG)  # only takes effect on CUDA
    channels_last: bool = setting(True, FLAG, identity=False)  # only takes effect on CUDA
    compile: bool = setting(False, FLAG, identity=False)
    class_uniform: float = setting(0.0, number(0, 1))  # fraction of samples drawn class-uniformly (RobustNet uses 0.5)
    split: str = setting("train", NAME)
    #: (H, W); larger than a frame is fine: the train transform pads the label with ignore, as torchvision's
    #: references/segmentation/transforms.py RandomCrop does (pad_if_smaller(target, size, fill=255))
    crop: tuple = setting((768, 768), SIZE)
    scale_range: tuple = setting((0.5, 2.0), Rule("[LOW, HIGH] with 0 < LOW <= HIGH", _scale_range))
    hflip: float = setting(0.5, number(0, 1))
    #: the sample pipeline: "scale_crop" (random scale and crop, flip, `photometric`: data/transforms.py, RobustNet's
    #: order) or "rein" (mmsegmentation's, as Rein trains: short-edge resize among 16 sizes, crop with cat_max_ratio
    #: 0.75, flip, PhotoMetricDistortion, padding; data/mmseg_pipeline.py). `crop` and `hflip` apply to both
    pipeline: str = setting("scale_crop", one_of(*PIPELINES), before="scale_crop")
    #: colour jitter and blur after the flip: None (off), a name in PHOTOMETRIC_PRESETS, or a mapping of all of
    #: jitter_p, brightness, contrast, saturation, hue (torchvision ColorJitter's parameters) and blur_sigma
    #: ([LOW, HIGH] or null); data/transforms.py Photometric says what each does
    photometric: Any = setting(None, Rule(f"null, {', '.join(map(repr, PHOTOMETRIC_PRESETS))} or a mapping "
                                          "{jitter_p, brightness, contrast, saturation, hue, blur_sigma}",
                                          _photometric), before=None)
    #: multi-source specs (`gta5+synthia->...`): how often each source is drawn. None: in proportion to its size (the
    #: union sampled uniformly); a mapping {source: weight} naming every part, or a list in the spec's source order.
    #: Weights are relative (normalised); source_weights.py says what a study and a cell make of them
    source_weights: Any = setting(None, Rule("null, a mapping {source: weight > 0} or a list of weights > 0 in "
                                             "source order", _source_weights), before=None)
    #: a raw label value outside the source dataset's table (`segbench data check` lists them): "error" stops training
    #: at the first such file, naming it, the values and the fix; "ignore" trains those pixels as ignored after counting
    #: them over the whole split (record["training"]["unknown_label_pixels"], "unknown_label_files",
    #: "unknown_label_values"). Evaluation always refuses them. Not part of the cell id: a run that succeeds under
    #: "error" computes exactly what it would under "ignore".
    unknown_labels: str = setting("error", one_of(*UNKNOWN_LABEL_POLICIES), identity=False)
    #: train on a split that shares frames with `eval.split` (the same split, or a dataset's `all`): the in-domain
    #: column is then scored on training images, so the study's validation refuses it unless this is true, and the
    #: protocol card and the table footer say so. Not part of the cell id: it decides nothing about the weights.
    allow_eval_split: bool = setting(False, FLAG, identity=False)


@dataclass(frozen=True)
class EvalSettings:
    """How each target is scored (the `eval:` section), and how one image becomes class scores (engine/inference.py
    reads mode, window, stride, flip and scales). Settings outside the cell id are compared per target instead
    (record.missing_targets): a score made under other values is made again."""

    split: str = setting("val", NAME)
    protocol: str = setting("native", one_of(*EVAL_PROTOCOLS), before="native")
    #: (H, W) the images are resized to under the native protocol; None: the protocol's sizes
    size: tuple[int, int] | None = setting(None, optional(SIZE))
    classes: int | None = setting(None, one_of(None, *EVAL_CLASS_SETS), before=None)
    batch_size: int = setting(1, integer(1), identity=False)  # frames per forward pass
    workers: int = setting(2, integer(0), identity=False)
    mode: str = setting("whole", one_of("whole", "slide"))  # the whole image, or sliding windows
    window: tuple[int, int] | None = setting(None, optional(SIZE))  # (H, W) for mode="slide"
    stride: tuple[int, int] | None = setting(None, optional(SIZE))  # (H, W); default: 2/3 of the window
    flip: bool = setting(False, FLAG)
    scales: tuple[float, ...] = setting((1.0,), Rule("a non-empty list of numbers > 0", _positive_numbers))
    #: how many predictions per target are kept for the report's qualitative panel
    dump: int = setting(4, integer(0), identity=False)
    #: score every target each N training iterations (and at the last) for the report's model-selection rules
    #: (`segbench report --select`); 0 never does. Periodic scores never touch the weights (engine/train.py forks the
    #: RNG)
    every: int = setting(0, integer(0), identity=False)
    #: more evaluation protocols each target is also scored under, each a view of its own: `cityscapes~native` beside
    #: `cityscapes`, a column of its own in every table and an entry of its own on the card, never averaged with the
    #: other geometry (Rein's 1024 x 512 and the native 2048 x 1024, say). Part of what each view was scored under,
    #: not of the cell id
    geometries: list = setting([], Rule(f"a list of eval protocols ({', '.join(map(repr, EVAL_PROTOCOLS))})",
                                        _protocols), identity=False)
    #: score the source in-domain (its own eval split) before the targets; false scores the targets only, for a recipe
    #: that trains on all of the source (Rein's GTA5: every frame, its val split included). Not part of what a score
    #: was made under: it decides which targets are scored, not how
    in_domain: bool = setting(True, FLAG, identity=False)
    #: MISSING_PAIRS; on a complete split both values score alike, and a score made without some files carries their
    #: count (result and protocol card), so it never passes for a complete one
    missing_pairs: str = setting("error", one_of(*MISSING_PAIRS), identity=False)


#: the sections with fixed keys, in the order an experiment file lists them after the study's own settings
SECTIONS: dict[str, type] = {"model": ModelSettings, "train": TrainSettings, "eval": EvalSettings}


# -- rules that span several settings of one section, each run once after every setting passed its own -------------
def _size_under_native_protocol(ecfg: dict, problems: list[str]) -> None:
    """`eval.size` resizes images under the native protocol; a published protocol fixes its own sizes."""
    protocol, size = ecfg.get("protocol", "native"), ecfg.get("size")
    if size is not None and protocol != "native" and protocol in EVAL_PROTOCOLS:
        problems.append(f"eval.size={size!r}: eval.protocol={protocol!r} fixes the sizes itself; expected eval.size "
                        "null (or eval.protocol='native')")


def _slide_needs_a_window(ecfg: dict, problems: list[str]) -> None:
    """Sliding windows need a window, and a stride no larger than it (a larger one leaves pixels never scored)."""
    if ecfg.get("mode") != "slide":
        return
    window, stride = ecfg.get("window"), ecfg.get("stride")
    if window is None:
        problems.append("eval.window=None: eval.mode='slide' needs a window, e.g. --set eval.window=[512,1024]")
    elif _passes(SIZE, window) and _passes(SIZE, stride) and (stride[0] > window[0] or stride[1] > window[1]):
        problems.append(f"eval.stride={stride!r}: larger than eval.window={window!r} leaves pixels unscored; "
                        "expected each <= the window")


def _views_are_other_protocols(ecfg: dict, problems: list[str]) -> None:
    """A view repeats the target under another protocol: the cell's own protocol would score it twice."""
    protocol, views = ecfg.get("protocol", "native"), ecfg.get("geometries") or []
    if isinstance(views, list) and protocol in views:
        problems.append(f"eval.geometries={views!r}: holds eval.protocol={protocol!r}, which every target is scored "
                        "under already; list the other protocols only")


def _lr_prefix_set_once(tcfg: dict, problems: list[str]) -> None:
    """A prefix with both a multiplier and an absolute learning rate would have two."""
    mult, absolute = tcfg.get("lr_mult") or {}, tcfg.get("lr_abs") or {}
    both = sorted(set(mult) & set(absolute)) if isinstance(mult, dict) and isinstance(absolute, dict) else []
    if both:
        problems.append(f"train.lr_mult and train.lr_abs both set {both!r}: give each prefix a multiplier or an "
                        "absolute learning rate, not both")


def _accumulate_divides_batch(tcfg: dict, problems: list[str]) -> None:
    """The micro-steps split the global batch evenly (how many processes share it is known only at launch)."""
    batch, accumulate = tcfg.get("batch_size"), tcfg.get("accumulate", 1)
    if _passes(integer(1), batch) and _passes(integer(1), accumulate) and batch % accumulate:
        problems.append(f"train.accumulate={accumulate!r}: does not divide train.batch_size={batch!r} (the global "
                        "batch); expected a divisor of it")


def _pipeline_takes_its_own_augmentation(tcfg: dict, problems: list[str]) -> None:
    """Rein's pipeline (`train.pipeline: rein`) has its own scales and photometric distortion and no class-uniform
    sampling: a setting of the other pipeline would be ignored without a word. Its scales come from a square crop's
    side, as in Rein's configs."""
    if tcfg.get("pipeline") != "rein":
        return
    crop = tcfg.get("crop")
    if isinstance(crop, (list, tuple)) and len(crop) == 2 and crop[0] != crop[1]:
        problems.append(f"train.crop={list(crop)!r}: train.pipeline='rein' draws its scales from a square crop's side "
                        "(0.5 to 2.0 x the side, as Rein's 512 and 1024 configs); give a square crop")
    for key, default in (("class_uniform", 0.0), ("photometric", None), ("scale_range", [0.5, 2.0])):
        value = tcfg.get(key, default)
        if (list(value) if isinstance(value, tuple) else value) != default:
            problems.append(f"train.{key}={value!r}: train.pipeline='rein' has its own scales and photometric "
                            f"distortion and no class-uniform sampling; expected {default!r} (or "
                            "train.pipeline='scale_crop')")


#: (section, rule) for the rules that span several settings
SECTION_RULES: tuple[tuple[str, Callable[[dict, list[str]], None]], ...] = (
    ("eval", _slide_needs_a_window), ("eval", _size_under_native_protocol), ("eval", _views_are_other_protocols),
    ("train", _accumulate_divides_batch), ("train", _lr_prefix_set_once),
    ("train", _pipeline_takes_its_own_augmentation))


# -- the views the rest of segbench reads, derived from the fields --------------------------------------------------
def _plain(value: Any) -> Any:
    """A tuple as a list: what a YAML file or a JSON record round-trips to, so saved and fresh configs compare equal."""
    return list(value) if isinstance(value, tuple) else value


def _default_of(f) -> Any:
    return _plain(f.default_factory() if f.default is MISSING else f.default)


def _rule_of(f) -> Rule:
    return f.metadata["rule"] or _rule_from_default(_default_of(f))


#: every setting's default: the study's settings, then one mapping per section
DEFAULTS: dict[str, Any] = {**{f.name: _default_of(f) for f in fields(StudySettings)},
                            **{name: {f.name: _default_of(f) for f in fields(cls)} for name, cls in SECTIONS.items()}}
#: what every setting accepts, laid out as DEFAULTS
RULES: dict[str, Any] = {**{f.name: _rule_of(f) for f in fields(StudySettings)},
                         **{name: {f.name: _rule_of(f) for f in fields(cls)} for name, cls in SECTIONS.items()}}
#: per section, the settings declared with identity=False: left out of the cell id
NON_IDENTITY_KEYS: dict[str, set[str]] = {name: {f.name for f in fields(cls) if not f.metadata["identity"]}
                                          for name, cls in SECTIONS.items()}
#: per section, the settings added after studies were run, with the value that reproduces the old behaviour (`before`)
ADDED_SETTINGS: dict[str, dict[str, Any]] = {
    name: {f.name: f.metadata["before"] for f in fields(cls) if f.metadata["before"] is not _THERE_FROM_THE_START}
    for name, cls in SECTIONS.items()}


def identity_view(section: str, values: dict) -> dict:
    """The part of a config section that decides a cell's weights (its id): no speed knobs, no settings at the value
    they had before they existed."""
    added = ADDED_SETTINGS.get(section, {})
    return {k: v for k, v in values.items()
            if k not in NON_IDENTITY_KEYS.get(section, set()) and not (k in added and v == added[k])}


def _section_settings(cls: type, values: dict) -> Any:
    """A section's values as its dataclass, for the code that runs a cell: the values as validation left them (no rule
    runs again), keys it does not know (a record from another segbench) left out, missing ones at their default."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def train_settings(train_cfg: dict) -> TrainSettings:
    return _section_settings(TrainSettings, train_cfg)


def model_settings(model_cfg: dict) -> ModelSettings:
    return _section_settings(ModelSettings, model_cfg)


def eval_settings(ecfg: dict) -> EvalSettings:
    """The eval section as the scoring code reads it: sizes as tuples, scales as a tuple of floats."""
    settings = _section_settings(EvalSettings, ecfg)
    return replace(settings, window=tuple(settings.window) if settings.window else None,
                   stride=tuple(settings.stride) if settings.stride else None,
                   scales=tuple(float(s) for s in settings.scales))


# -- files and overrides --------------------------------------------------------------------------------------------
def experiments_dir() -> Path:
    """The shipped experiment files: `experiments/` of a source checkout, else the copy installed with the package."""
    checkout = Path(__file__).resolve().parent.parent / "experiments"
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files("segbench") / "experiments"))


EMBEDDED_DEFAULT = "embedded.yaml"


def experiment_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped experiment file (`robustnet_dg.yaml`, `robustnet_dg`)."""
    path = Path(path)
    if path.is_file():
        return path
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "experiments"):
        for candidate in (experiments_dir() / path.name, experiments_dir() / f"{path.name}.yaml"):
            if candidate.is_file():  # `NAME`, `NAME.yaml` or `experiments/NAME.yaml` from any directory
                return candidate
    available = ", ".join(sorted(p.name for p in experiments_dir().glob("*.yaml"))) or "none"
    raise ConfigError(f"experiment file {path} not found (shipped experiments in {experiments_dir()}: {available})")


#: sections whose keys are not fixed here: `method` holds {method: {option: value}}, checked against the method
#: registry (validation.py), which this leaf module does not import
FREE_SECTIONS = {"method"}


def _merge(base: dict, over: dict, where: str, top: bool = False) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if top and key in FREE_SECTIONS:  # taken as written; validation checks it
            out[key] = copy.deepcopy(value)
            continue
        if key not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys here: {valid}")
        if top and key in SECTIONS:  # a section's settings, one by one; a setting's value is taken whole
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}: {key}")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None) -> dict:
    """DEFAULTS, overlaid with the YAML experiment file at `path` (if any; a shipped experiment may be named)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is None:
        return cfg
    path = experiment_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    cfg = _merge(cfg, data, str(path), top=True)
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
        if parts[0] in FREE_SECTIONS:  # method.NAME.OPTION: created as needed, checked against the registry later
            if len(parts) != 3 or not all(parts):
                raise ConfigError(f"--set {item!r}: expected {parts[0]}.NAME.OPTION=VALUE, e.g. "
                                  "--set method.isw.weight=0.6")
            section = cfg[parts[0]] if isinstance(cfg.get(parts[0]), dict) else {}
            cfg[parts[0]] = section
            options = section.setdefault(parts[1], {})
            if not isinstance(options, dict):
                raise ConfigError(f"--set {item!r}: {parts[0]}.{parts[1]} is {options!r}, not a mapping of options")
            options[parts[2]] = value
            continue
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                here = ".".join(parts[:i]) or "(top level)"
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ConfigError(f"--set {item!r}: unknown key {part!r} under {here}; valid keys: {valid}")
            if i == len(parts) - 1:
                if i == 0 and part in SECTIONS:
                    raise ConfigError(f"--set {item!r}: {key} is a section; set one of its keys: {', '.join(node[part])}")
                node[part] = value
            elif i == 0 and part in SECTIONS:
                node = node[part]
            else:  # a setting whose value is a mapping (train.lr_mult) is set whole
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is one setting; give its whole value, "
                                  f"e.g. --set '{'.'.join(parts[:i + 1])}={{{parts[i + 1]}: VALUE}}'")
    return cfg


# -- validation -----------------------------------------------------------------------------------------------------
def _passes(rule: Rule, value: Any) -> bool:
    try:
        rule.convert(value)
    except _Invalid:
        return False
    return True


def config_problems(cfg: dict, sections: tuple[str, ...] | None = None) -> tuple[dict, list[str]]:
    """(cfg with numeric strings as numbers, one line per bad setting); `sections` limits which top-level keys."""
    cfg, problems = copy.deepcopy(cfg), []
    for key in cfg if sections is None else [s for s in sections if s in cfg]:
        if key not in RULES:
            problems.append(f"{key}: unknown key; valid keys here: {', '.join(RULES)}")
        elif isinstance(RULES[key], Rule):
            cfg[key] = _check(key, RULES[key], cfg[key], problems)
        elif not isinstance(cfg[key], dict):
            problems.append(f"{key}={cfg[key]!r}: expected a mapping of settings ({', '.join(DEFAULTS[key])})")
        else:
            section = cfg[key]
            for sub, value in section.items():
                if sub not in DEFAULTS[key]:
                    problems.append(f"{key}.{sub}: unknown key; valid keys here: {', '.join(DEFAULTS[key])}")
                    continue
                section[sub] = _check(f"{key}.{sub}", RULES[key][sub], value, problems)
    for section, rule in SECTION_RULES:
        if isinstance(cfg.get(section), dict):
            rule(cfg[section], problems)
    return cfg, problems


def problems_message(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} bad settings:\n  " + "\n  ".join(problems)


def validate(cfg: dict, sections: tuple[str, ...] | None = None) -> dict:
    """The config with numeric strings as numbers, or ConfigError listing every bad setting in one message."""
    cfg, problems = config_problems(cfg, sections)
    if problems:
        raise ConfigError(problems_message(problems))
    return cfg
