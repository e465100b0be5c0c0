"""A study as a plain list of cells (backbone x head x source x seed), each with a deterministic id and directory.

One cell = one training run, evaluated on its source's val split and on every target. A cell hands on exactly one
thing, its record (config + metrics + provenance), written atomically; `done` marks a cell whose record holds every
target asked for, so re-running a study only does what is missing.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .config import identity_view, train_settings
from .io import write_json
from .registry import Registry
from .spec import Transfer

from .cell_files import CELLS, CHECKPOINTS, DONE, FINAL_WEIGHTS, RECORD


def dataset_version(name: str):
    """The `data_version` a dataset class declares (the embedded generator does), else None."""
    from .data import DATASETS

    return getattr(DATASETS.get(name), "data_version", None) if name in DATASETS else None


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

    def training_identity(self) -> dict:
        """Everything that decides the trained weights (not which targets are scored, not speed knobs)."""
        ident = {"backbone": self.backbone, "head": self.head, "source": self.source, "seed": self.seed,
                 "model": self.model, "train": identity_view("train", self.train)}
        version = dataset_version(self.source)
        if version is not None:  # generated data: a new generator means new weights
            ident["data_version"] = version
        return ident

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.training_identity(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.source}__{self.backbone}__{self.head}__s{self.seed}__{self.cell_id}"

    def directory(self, results_dir: Path) -> Path:
        return Path(results_dir) / CELLS / self.dirname

    @property
    def eval_targets(self) -> tuple[str, ...]:
        return (self.source, *[t for t in self.targets if t != self.source])

    def eval_identity(self) -> dict:
        return identity_view("eval", self.eval)


def expand_names(patterns: list[str], registry: Registry) -> list[str]:
    """Backbone/head names with globs (`resnet50*`) expanded against the registry, order kept, no duplicates."""
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = [n for n in registry.names() if fnmatch.fnmatchcase(n, pattern)]
            if not matches:
                raise KeyError(f"no {registry.kind} matches {pattern!r}; valid names: {', '.join(registry.names())}")
        else:
            registry.get(pattern)  # raises with the valid names
            matches = [pattern]
        out += [m for m in matches if m not in out]
    return out


def plan(cfg: dict, transfers: list[Transfer], backbones: list[str], heads: list[str]) -> list[Cell]:
    return [
        Cell(backbone=b, head=h, source=t.source, targets=t.targets, seed=int(s), model=dict(cfg["model"]),
             train=dict(cfg["train"]), eval=dict(cfg["eval"]))
        for t in transfers for b in backbones for h in heads for s in cfg["seeds"]
    ]


def read_record(cell_dir: Path) -> dict | None:
    path = Path(cell_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # cannot happen with atomic writes, but a hand-edited file must not crash a study


def missing_targets(cell: Cell, cell_dir: Path) -> list[str]:
    record = read_record(cell_dir) or {}
    results = record.get("results", {})
    want = cell.eval_identity()
    return [t for t in cell.eval_targets if results.get(t, {}).get("eval") != want]


def is_done(cell: Cell, cell_dir: Path) -> bool:
    return (Path(cell_dir) / DONE).is_file() and not missing_targets(cell, cell_dir)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device) -> dict:
    return {
        "segbench": __version__, "git_commit": git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "host": platform.node(), "argv": sys.argv,
    }


@dataclass
class CellOutcome:
    cell: Cell
    cell_dir: Path
    status: str  # "done", "skipped", "failed"
    error: str | None = None
    log: Path | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def run_cell(cell: Cell, cell_dir: Path, *, data_root=None, device: torch.device | None = None) -> dict:
    """Train (or resume) one cell, evaluate whatever target is missing, write the record. Returns the record."""
    from .data import build_dataset
    from .data.transforms import build_train_transform, eval_transform_for
    from .engine import distributed as dist_utils
    from .engine.checkpoint import load_checkpoint
    from .engine.evaluate import evaluate
    from .engine.logging import tensorboard_writer
    from .engine.inference import InferenceSettings
    from .engine.train import train
    from .io import save_torch
    from .models import create_model

    cell_dir = Path(cell_dir)
    device = device or dist_utils.init_from_env()
    record = read_record(cell_dir) or {
        "cell_id": cell.cell_id, "backbone": cell.backbone, "head": cell.head, "source": cell.source,
        "seed": cell.seed, "config": {"model": cell.model, "train": cell.train, "eval": cell.eval},
        "results": {},
    }
    record["config"]["eval"] = cell.eval
    if dist_utils.is_main():  # the effective configuration, there from the first second of the run
        write_json(cell_dir / "config.json", {**cell.training_identity(), "targets": list(cell.eval_targets),
                                              "train": cell.train, "eval": cell.eval})
    final = cell_dir / FINAL_WEIGHTS
    trained = final.is_file()
    torch.manual_seed(cell.seed)
    # ImageNet weights only matter before training; a trained cell's own weights replace them anyway
    model = create_model(cell.backbone, head=cell.head, output_stride=cell.model.get("output_stride"),
                         pretrained=None if trained else cell.model.get("pretrained"), aux=bool(cell.model.get("aux")))
    if trained:
        model.load_state_dict(load_checkpoint(final))
    else:
        tcfg = cell.train
        source = build_dataset(cell.source, tcfg["split"], root=data_root)
        transform = build_train_transform(tcfg["crop"], tcfg["scale_range"], tcfg["hflip"])
        stats = train(model, source, transform, train_settings(tcfg), seed=cell.seed, device=device,
                      ckpt_dir=cell_dir / CHECKPOINTS, identity=cell.training_identity(),
                      log_path=cell_dir / "train_log.csv", tb_dir=cell_dir / "tb",
                      desc=f"{cell.backbone} on {cell.source} (seed {cell.seed})")
        if dist_utils.is_main():
            save_torch(final, model.state_dict())
        record["training"] = stats
    ecfg = cell.eval
    settings = InferenceSettings.from_config(ecfg)
    record["provenance"] = provenance(device)
    for target in missing_targets(cell, cell_dir):
        ds = build_dataset(target, ecfg["split"], root=data_root)
        ds.transform = eval_transform_for(ds, ecfg.get("size"))
        t0 = time.perf_counter()
        metrics = evaluate(model, ds, device=device, eval_classes=getattr(ds, "eval_classes", None),
                           workers=ecfg.get("workers", 0), settings=settings, desc=f"  test on {target}",
                           dump_dir=cell_dir / "preds" / target, dump_count=int(ecfg.get("dump", 0) or 0))
        metrics.update(eval=cell.eval_identity(), images=len(ds), seconds=time.perf_counter() - t0)
        record["results"][target] = metrics
        if dist_utils.is_main():
            write_json(cell_dir / RECORD, record)
            tb = tensorboard_writer(cell_dir / "tb")
            if tb is not None:
                tb.add_scalar(f"eval/miou/{target}", metrics["miou"], int(cell.train["iters"]))
                tb.close()
    if dist_utils.is_main():
        (cell_dir / DONE).touch()
    return record
