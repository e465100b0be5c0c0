"""The cell: one training run of a study (backbone x head x source x seed x method), its id, its directory.

A study is a plain list of cells (DomainBed's sweep). A cell's id is a hash of everything that decides its weights, and
its directory is named by it, so re-running a study finds what is already there. What a cell hands on, its record, is
record.py's; what its numbers were measured under, protocol_card.py's; who runs it now, lock.py's.

Nothing here imports torch: the report and `--dry-run` use it without loading the training code.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import ERM, identity_view
from .labels import CLASS_SETS, NUM_CLASSES
from .source_weights import cell_source_weights
from .spec import Transfer, is_multi_source, prepared_parts, scoring_view, source_parts, view_name

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
        """The datasets scored (`scored_datasets`)."""
        return scored_datasets(self.source, self.targets, self.eval)

    @property
    def training_classes(self) -> tuple[int, ...] | None:
        """The trainIds a multi-source cell trains on: the study's class set (`eval.classes`) applied to every
        source's labels, so the sources agree on one label space (data/multisource.py says why); None (every class
        as each source decodes it) for one source, or without a class set smaller than 19."""
        classes = self.eval.get("classes")
        if not is_multi_source(self.source) or classes is None or classes == NUM_CLASSES:
            return None
        return CLASS_SETS[classes]

    def eval_identity(self, target: str | None = None) -> dict:
        """What a score was made under: the eval settings of the cell, or of a view of a target (`view_eval`)."""
        return identity_view("eval", self.eval if target is None else view_eval(self.eval, target))


def _dataset_class(name: str):
    """The registered class of `name` (of its source, for a prepared copy `NAME@WxH`), else None."""
    from .data import DATASETS  # here, not at the top: reading records must not load the data stack (torch)

    name = prepared_parts(name)[0]
    return DATASETS.get(name) if name in DATASETS else None


def _dataset_version(name: str) -> str | None:
    """The `data_version` a dataset class declares (the embedded generator does), else None."""
    return getattr(_dataset_class(name), "data_version", None)


def scored_datasets(source: str, targets, ecfg: dict, views: bool = True) -> tuple[str, ...]:
    """The datasets a cell scores: in-domain first (the source; each part of a multi-source one; none under
    `eval.in_domain: false`), then the targets; then, with `views`, each of them again under each protocol of
    `eval.geometries` (`NAME~PROTOCOL`, spec.view_name)."""
    own = source_parts(source)
    first = own if ecfg.get("in_domain", True) else ()
    scored = (*first, *[t for t in targets if t not in own and t != source])
    if not views:
        return scored
    return (*scored, *[view_name(t, p) for p in ecfg.get("geometries") or [] for t in scored])


def view_eval(ecfg: dict, target: str) -> dict:
    """The eval settings a target (or a view of it) is scored under: a view's own protocol, with no `eval.size`
    (which the native protocol alone takes, and which belongs to the cell's own protocol)."""
    protocol = scoring_view(target)[1]
    return ecfg if protocol is None else {**ecfg, "protocol": protocol, "size": None}


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
