"""The cell: one training run of a study (backbone x head x source x seed), its id, its directory, its record.

A study is a plain list of cells (DomainBed's sweep). A cell's id is a hash of everything that decides its weights, and
its directory is named by it, so re-running a study finds what is already there. A cell hands on exactly one thing, its
record (`record.json`: config, metrics, provenance), written atomically; `done` marks a cell whose record holds every
target asked for. The report, the analysis tools and `segbench evaluate` read records through this module only.

Nothing here imports torch: the report and `--dry-run` use it without loading the training code.
"""
from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import platform
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: cells run unlocked
    fcntl = None

from .config import identity_view
from .io import DAMAGED_SUFFIX, set_aside, write_json
from .labels import CLASS_SETS, NUM_CLASSES
from .source_weights import cell_source_weights
from .spec import Transfer, is_multi_source, prepared_parts, source_parts

# --- the files of a cell directory (`results/STUDY/cells/CELL/`) -------------------------------------------------
CELLS = "cells"  # sub-directory of a study holding one directory per cell
RECORD = "record.json"
DONE = "done"
CONFIG = "config.json"  # the effective configuration, written when the cell starts
FINAL_WEIGHTS = "model_final.pt"
CHECKPOINTS = "checkpoints"
TRAIN_LOG = "train_log.csv"
TENSORBOARD = "tb"
PREDS = "preds"  # preds/TARGET/: the first predictions per target, for the report's qualitative panel
CONFUSION = "confusion"  # confusion/TARGET.npz: one confusion matrix per test image, for the report's bootstrap
LAUNCHER_LOG = "launcher.log"  # a worker's output, or an in-process failure's traceback
LOCK = ".lock"  # flock-ed by the process running the cell; its text names that process
SLURM_JOB = "slurm_job"  # id of the Slurm job last submitted for the cell, so a rerun can see it is still queued

#: the method of plain training (segbench.methods); a record without a `method` field was trained with it
ERM = "erm"

# --- the record -----------------------------------------------------------------------------------------------------
#: Every field of `record.json`, written down once. `new_record` creates them; readers may rely on the required ones.
RECORD_FIELDS = {
    "cell_id": "hash of the cell's training identity (Cell.cell_id)",
    "backbone": "backbone name (models registry)",
    "head": "head name (models registry)",
    "source": "training dataset",
    "seed": "training seed",
    "method": "the domain-generalization method: {name, options} (options: its defaults with the study's "
              "`method.NAME.*` on top); a record without it was trained with plain ERM",
    "targets": "datasets the cell is scored on, in the order the study named them (source first)",
    "config": "the effective configuration: {model, train, eval}",
    "results": "target -> metrics: miou, per_class_iou, pixel_acc, eval (the eval settings scored under), images, "
               "seconds, samples (prediction dumps), missing_pairs (files left out for lacking their image or label, "
               "under eval.missing_pairs=skip; absent when none were), per_image (the path, in the cell directory, of "
               "confusion/TARGET.npz: each test image's confusion matrix (counts: images x 19 x 20 int64, rows "
               "ground truth, void column last; images: their paths; both in dataset order), which sum to the "
               "matrix the metrics come from; a rerun scores the target again when that file is missing or "
               "damaged)",
    "training": "train_seconds, images_per_s (the whole run, across resumes), resumed_from (the iteration this "
                "process resumed at; absent when the cell was only evaluated), world_size and batch_per_process "
                "(this launch), launches (from_iteration, world_size, batch_per_process of each), init (what a "
                "partial pretrained load left out: model.pretrained=torchvision), eval_seconds (periodic evaluation "
                "under eval.every, left out of train_seconds and images_per_s)",
    "curves": "under eval.every: target -> [[iteration, miou], ...], every target scored every eval.every "
              "iterations and at the last (whose point is the final result); report/selection.py picks checkpoints "
              "from them",
    "provenance": "segbench version, git commit, python/torch/CUDA, device, host, argv of the run that wrote it",
    "protocol": "the protocol card (protocol_card): sources, split, resolution, source_weights and training classes "
                "(multi-source), global_batch, iterations, train (crop, scale_range, hflip, class_uniform, "
                "photometric, optimiser: the train settings that decide the weights), model, eval (split, size, "
                "mode, window, stride, flip, scales, protocol, classes: the eval settings that decide a score), "
                "targets (per target scored: split, transform = its eval resolution and crop, classes = the "
                "trainIds its mIoU averages over, missing_pairs = files left out, when any were), "
                "in_domain_on_training_images (the sources scored in-domain on a split they were trained on, "
                "under train.allow_eval_split; absent otherwise), checkpoint (which weights are scored)",
}
REQUIRED_FIELDS = ("cell_id", "backbone", "head", "source", "seed", "config", "results")


class RecordError(ValueError):
    """A record.json that cannot be used; the message names the file and what is wrong."""


@dataclass
class Cell:
    backbone: str
    head: str
    source: str
    targets: tuple[str, ...]
    seed: int
    model: dict
    train: dict
    eval: dict
    data_version: str | None = None  # generated data (the embedded domains): a new generator means new weights
    method: str = ERM  # the domain-generalization method (segbench.methods)
    method_options: dict = field(default_factory=dict)  # its effective options (defaults + the study's settings)
    method_revision: int = 1  # its Method.revision: a fix that changes what it trains under the same options

    @property
    def method_block(self) -> dict:
        """The method as ids and records name it: {name, options}, with the revision once it is above 1."""
        block = {"name": self.method, "options": self.method_options}
        return block if self.method_revision == 1 else {**block, "revision": self.method_revision}

    def training_identity(self) -> dict:
        """Everything that decides the trained weights (not which targets are scored, not speed knobs)."""
        ident = {"backbone": self.backbone, "head": self.head, "source": self.source, "seed": self.seed,
                 "model": identity_view("model", self.model), "train": identity_view("train", self.train)}
        if self.data_version is not None:
            ident["data_version"] = self.data_version
        if self.method != ERM:  # plain training adds nothing, so studies from before methods keep their ids
            ident["method"] = self.method_block
        if self.training_classes is not None:  # an eval setting that, for a union, decides the training labels
            ident["training_classes"] = list(self.training_classes)
        return ident

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.training_identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def trained_as(self) -> str:
        """The backbone, with the method when it is not plain training: `resnet50`, `resnet50+isw`."""
        return self.backbone if self.method == ERM else f"{self.backbone}+{self.method}"

    @property
    def dirname(self) -> str:
        return f"{self.source}__{self.trained_as}__{self.head}__s{self.seed}__{self.cell_id}"

    def directory(self, results_dir: Path) -> Path:
        return Path(results_dir) / CELLS / self.dirname

    @property
    def eval_targets(self) -> tuple[str, ...]:
        """The datasets scored: in-domain first (the source; each part of a multi-source one), then the targets."""
        own = source_parts(self.source)
        return (*own, *[t for t in self.targets if t not in own and t != self.source])

    @property
    def training_classes(self) -> tuple[int, ...] | None:
        """The trainIds a multi-source cell trains on: the study's class set (`eval.classes`) applied to every
        source's labels, so the sources agree on one label space (data/multisource.py says why); None (every class
        as each source decodes it) for one source, or without a class set smaller than 19."""
        classes = self.eval.get("classes")
        if not is_multi_source(self.source) or classes is None or classes == NUM_CLASSES:
            return None
        return CLASS_SETS[classes]

    def eval_identity(self) -> dict:
        return identity_view("eval", self.eval)


def _dataset_class(name: str):
    """The registered class of `name` (of its source, for a prepared copy `NAME@WxH`), else None."""
    from .data import DATASETS  # here, not at the top: reading records must not load the data stack (torch)

    name = prepared_parts(name)[0]
    return DATASETS.get(name) if name in DATASETS else None


def _dataset_version(name: str) -> str | None:
    """The `data_version` a dataset class declares (the embedded generator does), else None."""
    return getattr(_dataset_class(name), "data_version", None)


def trained_on_scored(source: str, train_split: str, eval_split: str) -> list[str]:
    """The parts of `source` whose in-domain score would be taken on training images: trained on `train_split`,
    scored on `eval_split`, and the two share frames (SegmentationDataset.splits_share_frames)."""
    if not (isinstance(train_split, str) and isinstance(eval_split, str)):
        return []
    return [part for part in source_parts(source)
            if (cls := _dataset_class(part)) is not None and cls.splits_share_frames(train_split, eval_split)]


def _source_version(source: str) -> str | dict | None:
    """`data_version` of a source: its dataset's; for a union, {part: version} when any part has one."""
    parts = source_parts(source)
    if len(parts) == 1:
        return _dataset_version(source)
    versions = {p: _dataset_version(p) for p in parts}
    return versions if any(v is not None for v in versions.values()) else None


def source_train_settings(train: dict, source: str) -> dict:
    """The train section as one cell of `source` sees it: `source_weights` as the cell keeps it
    (source_weights.cell_source_weights)."""
    weights = train.get("source_weights")
    return dict(train) if weights is None else {**train, "source_weights": cell_source_weights(weights, source)}


def plan(cfg: dict, transfers: list[Transfer], backbones: list[str], heads: list[str],
         methods: dict[str, dict] | None = None, revisions: dict[str, int] | None = None) -> list[Cell]:
    """The study as a list of cells, in the order they run: source, backbone, method, head, seed. `methods`: each
    method's effective options (methods.method_options), in study order; None: plain training only. `revisions`:
    each method's Method.revision where it is above 1."""
    versions = {t.source: _source_version(t.source) for t in transfers}
    methods = {ERM: {}} if methods is None else methods
    revisions = revisions or {}
    return [
        Cell(backbone=b, head=h, source=t.source, targets=t.targets, seed=int(s), model=dict(cfg["model"]),
             train=source_train_settings(cfg["train"], t.source), eval=dict(cfg["eval"]),
             data_version=versions[t.source], method=m, method_options=dict(options),
             method_revision=revisions.get(m, 1))
        for t in transfers for b in backbones for m, options in methods.items() for h in heads for s in cfg["seeds"]
    ]


# --- the protocol card: what a number was measured under, on the record ---------------------------------------
#: which weights are scored: those at the end of training (no checkpoint is picked on a validation score); the
#: report's other model-selection rules (report/selection.py) put their own name here
CHECKPOINT_RULE = "last"


def _resolution(name: str) -> str:
    """"native", or the size of the resized copy a `NAME@WxH` source reads."""
    return prepared_parts(name)[1] or "native"


def with_resolved_output_stride(model: dict, head) -> dict:
    """`output_stride: None` means the head's default (models.create_model): a card states the number, so a study
    that never sets it and one that writes the default describe one network with one card. The cell id keeps the
    setting as given (ids of finished cells do not move). A head not registered here (a plug-in not loaded) keeps
    None; the models (torch) are imported only for a None. Returns `model` itself when nothing changes."""
    if "output_stride" not in model or model["output_stride"] is not None:
        return model
    from .models import HEADS

    if not (isinstance(head, str) and head in HEADS):
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
    on_training_images = trained_on_scored(cell.source, card["split"], cell.eval.get("split"))
    if on_training_images:  # only under train.allow_eval_split (run.eval_split_problems): the table says so
        card["in_domain_on_training_images"] = on_training_images
    card.update({"global_batch": train.pop("batch_size", None), "iterations": train.pop("iters", None),
                 "train": train, "model": with_resolved_output_stride(identity_view("model", cell.model), cell.head),
                 "eval": cell.eval_identity(),
                 "targets": {t: targets[t] for t in cell.eval_targets if t in targets},
                 "checkpoint": CHECKPOINT_RULE})
    return card


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


def new_record(cell: Cell) -> dict:
    """The record of a cell that has not been scored on anything yet."""
    return {"cell_id": cell.cell_id, "backbone": cell.backbone, "head": cell.head, "source": cell.source,
            "seed": cell.seed, "method": cell.method_block,
            "targets": list(cell.eval_targets),
            "config": {"model": cell.model, "train": cell.train, "eval": cell.eval}, "results": {}}


def write_record(cell_dir: Path, record: dict) -> None:
    unknown = set(record) - set(RECORD_FIELDS)
    if unknown:
        raise RecordError(f"record fields {sorted(unknown)} are not in cells.RECORD_FIELDS; declare them there")
    write_json(Path(cell_dir) / RECORD, record)


#: how a malformed record.json is repaired; `segbench report` says so when it finds one
RECORD_FIX = (f"restore it, or rerun the study: the run keeps it aside as {RECORD}{DAMAGED_SUFFIX}, carries over "
              "its training statistics when they are still readable, and scores the cell again")


def _parse_record(path: Path) -> tuple[object, str | None]:
    """(record.json parsed, or None when it is not JSON; what makes it unusable as a record, or None). An OSError
    reading the file is the caller's."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({e})"
    if not isinstance(record, dict):
        return record, f"expected a JSON object (a segbench cell record), got {type(record).__name__}"
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing or not isinstance(record.get("config"), dict) or "model" not in record["config"]:
        return record, (f"missing {', '.join(missing) or 'config.model'}; expected a segbench cell record with "
                        f"{', '.join(REQUIRED_FIELDS)} and config.model")
    return record, record_type_problem(record)


def read_record(path: Path) -> dict:
    """The strict reader: a cell directory or its record.json -> the record; RecordError names what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    if not path.is_file():
        raise RecordError(f"{path}: missing; a cell directory holds {RECORD} once the cell has started")
    record, problem = _parse_record(path)
    if problem:
        raise RecordError(f"{path}: {problem}; {RECORD_FIX}")
    return record


def _is_number(x) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def record_type_problem(record: dict) -> str | None:
    """The first field of a record, among those the report reads, whose value has the wrong type (a hand edit, a
    damaged file), as 'FIELD=VALUE: expected ...'; None when all are well formed."""
    for key in ("cell_id", "backbone", "head", "source"):
        if not isinstance(record[key], str):
            return f"{key}={_shown(record[key])}: expected a string"
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        return f"seed={_shown(record['seed'])}: expected an integer"
    method = record.get("method")
    if method is not None and not (isinstance(method, dict) and isinstance(method.get("name", ""), str)
                                   and isinstance(method.get("options") or {}, dict)
                                   and _is_count(method.get("revision", 1))):
        return (f"method={_shown(method)}: expected {{\"name\": NAME, \"options\": {{...}}}} and an integer "
                "\"revision\" if any")
    if not isinstance(record["results"], dict):
        return f"results={_shown(record['results'])}: expected {{TARGET: {{\"miou\": ...}}}}"
    for target, m in record["results"].items():
        if not isinstance(m, dict):
            return f"results.{target}={_shown(m)}: expected an object with miou"
        for key in ("miou", "pixel_acc"):
            if not _is_number(m.get(key)):
                return f"results.{target}.{key}={_shown(m.get(key))}: expected a number or null"
        per_class = m.get("per_class_iou")
        if per_class is not None and not (isinstance(per_class, dict) and all(map(_is_number, per_class.values()))):
            return f"results.{target}.per_class_iou={_shown(per_class)}: expected {{CLASS: number or null}}"
    return None if record.get("curves") is None else _curves_problem(record["curves"])


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _curves_problem(curves) -> str | None:
    """What is wrong with a record's `curves`, as 'curves...=VALUE: expected ...'; None when well formed."""
    if not isinstance(curves, dict):
        return f"curves={_shown(curves)}: expected {{TARGET: [[iteration, miou], ...]}}"
    for target, points in curves.items():
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
                and _is_number(p[1]) for p in points):
            return f"curves.{target}={_shown(points)}: expected [[iteration, miou], ...]"
    return None


def read_record_or_none(cell_dir: Path) -> dict | None:
    """The lenient reader, for deciding what to run: no record, or an unreadable or malformed one (the strict reader
    would refuse it), means nothing is done yet."""
    try:
        record, problem = _parse_record(Path(cell_dir) / RECORD)
    except OSError:
        return None
    return None if problem else record


class DamagedRecordWarning(UserWarning):
    """A malformed record.json (what could still be read carried over to the cell's new record) or a damaged
    per-image confusion file (its target scored again) was set aside."""


def salvage(record) -> dict:
    """What a malformed record hands on to the record that replaces it: only what training measured and nothing
    else can give back (the scores are computed again from model_final.pt), where it is still well formed: the
    `training` statistics, and the `curves` with the eval settings (`config.eval`) they were scored under."""
    if not isinstance(record, dict):
        return {}
    kept = {}
    if isinstance(record.get("training"), dict):
        kept["training"] = record["training"]
    config = record.get("config")
    if (record.get("curves") and _curves_problem(record["curves"]) is None and isinstance(config, dict)
            and isinstance(config.get("eval"), dict)):
        kept["curves"], kept["config"] = record["curves"], {"eval": config["eval"]}
    return kept


def cell_record(cell: Cell, cell_dir: Path, set_damaged_aside: bool = True) -> dict:
    """The record a run of `cell` continues from: the one in `cell_dir`, else a new one. A malformed record.json
    (truncated, a field of the wrong type) is not overwritten without a word: it is set aside as record.json.damaged
    with a warning naming it, and what is still readable (`salvage`) is carried over. Ranks other than the first pass
    set_damaged_aside=False (their record is never written)."""
    path = Path(cell_dir) / RECORD
    try:
        record, problem = _parse_record(path)
    except FileNotFoundError:  # not started yet, or set aside by the first rank meanwhile
        return new_record(cell)
    if problem is None:
        return record
    kept = salvage(record)
    fresh = new_record(cell)
    if set_damaged_aside:
        moved = set_aside(path)
        carried = (f"carried over its {' and '.join(k for k in kept if k != 'config')}" if kept
                   else "nothing in it could be read back (its training statistics are lost)")
        warnings.warn(f"{path}: {problem}; kept aside as {moved.name}, {carried}; every target is scored again",
                      DamagedRecordWarning, stacklevel=2)
    return {**fresh, **kept, "config": {**fresh["config"], **kept.get("config", {})}}


# --- the per-image confusion files (CONFUSION/TARGET.npz) ------------------------------------------------------------
class ConfusionFileError(RecordError):
    """A per-image confusion file that cannot be read; the message names it and the fix."""


def confusion_path(cell_dir: Path, target: str) -> Path:
    return Path(cell_dir) / CONFUSION / f"{target}.npz"


def _confusion_problem(path: Path) -> tuple[tuple | None, str | None]:
    """((counts, image ids), None) for a well-formed file, else (None, what is wrong). Never loads object arrays."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            counts, images = f["counts"], f["images"]
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        return None, f"truncated or damaged ({type(e).__name__}: {e})"
    except KeyError as e:
        return None, f"not a per-image confusion file ({e.args[0] if e.args else e})"
    except ValueError:  # numpy's refusal of object arrays or pickled data, whose advice (load it unsafely) is not ours
        return None, "holds object arrays or pickled data, which segbench never loads (they can run code)"
    if (counts.ndim != 3 or counts.shape[2] != counts.shape[1] + 1 or not np.issubdtype(counts.dtype, np.integer)
            or images.ndim != 1 or len(images) != len(counts)):
        return None, (f"counts of shape {counts.shape} ({counts.dtype}) and {images.size} image ids; expected N x C x "
                      "C+1 integer counts and N image ids")
    return (counts, [str(i) for i in images]), None


def read_confusions(path: Path) -> tuple:
    """(N x C x C+1 per-image matrices, N image ids), as engine/scoring.py save_image_confusions wrote them;
    ConfusionFileError naming the file and the fix when it cannot be used."""
    path = Path(path)
    loaded, problem = _confusion_problem(path)
    if problem:
        raise ConfusionFileError(f"{path}: {problem}; rerun the study to score {path.stem} again (the run keeps "
                                 f"this file aside as {path.name}{DAMAGED_SUFFIX})")
    return loaded


def damaged_confusions(cell_dir: Path, target: str) -> str | None:
    """What is wrong with the cell's per-image file for `target` when it is there but cannot be used, else None."""
    path = confusion_path(cell_dir, target)
    return _confusion_problem(path)[1] if path.is_file() else None


def per_image_expected(cell_dir: Path, result: dict) -> bool:
    """Whether a scored target should have its per-image file: its record names one, or the cell kept others (a cell
    scored before segbench kept per-image files has no confusion/ directory at all)."""
    return bool(result.get("per_image")) or (Path(cell_dir) / CONFUSION).is_dir()


def _needs_scoring(cell_dir: Path, target: str, result: dict) -> bool:
    """A scored target is scored again when its per-image file is damaged, or missing where it should be."""
    if not confusion_path(cell_dir, target).is_file():
        return per_image_expected(cell_dir, result)
    return damaged_confusions(cell_dir, target) is not None


def missing_targets(cell: Cell, cell_dir: Path) -> list[str]:
    """Targets not yet scored under the cell's current eval settings, or whose per-image file must be written again
    (`_needs_scoring`)."""
    results = (read_record_or_none(cell_dir) or {}).get("results", {})
    want = cell.eval_identity()
    return [t for t in cell.eval_targets
            if results.get(t, {}).get("eval") != want or _needs_scoring(cell_dir, t, results[t])]


def is_done(cell: Cell, cell_dir: Path) -> bool:
    return (Path(cell_dir) / DONE).is_file() and not missing_targets(cell, cell_dir)


def load_records(results_dir: Path) -> list[dict]:
    """Every record of a study, sorted by cell directory; each keeps its directory under `_dir` (strict reader)."""
    records = []
    for path in sorted(Path(results_dir).glob(f"{CELLS}/*/{RECORD}")):
        record = read_record(path)
        record["_dir"] = path.parent
        records.append(record)
    return records


# --- the lock: one process runs a cell at a time -----------------------------------------------------------------
class CellBusy(RuntimeError):
    """Another process holds the cell's lock: it is running the cell now."""


# a filesystem without flock support (Lustre mounted without -o flock, some FUSE): run unlocked, with a warning
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@contextmanager
def cell_lock(cell_dir: Path):
    """Hold CELLDIR/.lock while the block runs, or raise CellBusy naming the process that holds it.

    An advisory flock: the kernel drops it when its process exits, however it ends (kill -9 included), so a crashed
    run never leaves a stale lock. It covers processes on one machine, and across machines on NFS (Linux maps flock
    to NFS byte-range locks). The file itself stays; its text names the holder for the other runner's message.
    """
    path = Path(cell_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not said who it is yet"
            raise CellBusy(f"{cell_dir}: another process is running this cell ({holder}); skipped here. "
                           "Run the study again after it ends to pick up its result") from None
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            warnings.warn(f"{path}: this filesystem does not support file locks ({e.strerror}); the cell runs "
                          "unlocked, so do not start two runners on this results directory", stacklevel=3)
        f.seek(0)
        f.truncate()
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"pid {os.getpid()} on {platform.node()} since {stamp}\n")
        f.flush()
        yield


def lock_holder(cell_dir: Path) -> str | None:
    """Who holds the cell's lock right now (its text), or None when nobody does."""
    path = Path(cell_dir) / LOCK
    if fcntl is None:
        return None
    try:
        f = open(path)
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        except OSError:
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
        return None
