"""One cell, top to bottom: dataset -> transforms -> model -> train -> score every target -> record.

Read it like torchvision's `references/segmentation/train.py` `main()`: each step is one call into the module that owns
it (data/factory, data/transforms, network (models/factory, methods), engine/train, engine/scoring, record and
protocol_card).
"""
from __future__ import annotations

import platform
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from . import distributed as dist_utils
from .cells import CHECKPOINTS, CONFIG, DONE, FINAL_WEIGHTS, PREDS, TENSORBOARD, TRAIN_LOG, Cell, view_eval
from .config import identity_view, model_settings, train_settings
from .data import build_dataset
from .data.base import missing_pairs
from .data.multisource import apply_unknown_label_policy_per_source
from .data.transforms import train_transform
from .engine.checkpoint import load_final_weights, prune_checkpoints
from .engine.frozen_weights import needs_pretrained, weights_to_load, weights_to_save
from .engine.logging import tensorboard_writer
from .engine.scoring import evaluate, prepare_for_scoring, scoring_options
from .engine.train import train
from .io import remove_stale_temp_files, save_torch, set_aside, write_json
from .lock import CellBusy, cell_lock
from .models.pretrained import init_record
from .network import build_cell_model
from .protocol_card import protocol_card, target_protocol
from .record import DamagedRecordWarning, cell_record, confusion_path, damaged_confusions, missing_targets, \
    write_record
from .spec import scoring_view


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


@contextmanager
def claim_cell(cell_dir: Path, device: torch.device):
    """Hold the cell's lock (lock.cell_lock) for every rank of this job, or raise CellBusy on every rank: the first
    rank takes it and tells the others. Once it is held no other process writes here, so the temp files of a save
    that a killed run left behind are removed."""
    with ExitStack() as held:
        busy = None
        if dist_utils.is_main():
            try:
                held.enter_context(cell_lock(cell_dir))
            except CellBusy as e:
                busy = e
            else:
                remove_stale_temp_files(cell_dir)
        if dist_utils.is_dist():
            flag = torch.tensor(int(busy is not None), device=device)
            torch.distributed.broadcast(flag, 0)
            if flag.item() and busy is None:
                busy = CellBusy(f"{cell_dir}: another process is running this cell; skipped here")
        if busy is not None:
            raise busy
        yield


def run_cell(cell: Cell, cell_dir: Path, *, data_root=None, device: torch.device | None = None) -> dict:
    """Train (or resume) one cell, evaluate whatever target is missing, write the record. Returns the record.

    The cell's lock is held throughout: CellBusy, before any work, when another process runs the cell."""
    cell_dir = Path(cell_dir)
    device = device or dist_utils.init_from_env()
    with claim_cell(cell_dir, device):
        return train_and_score(cell, cell_dir, data_root=data_root, device=device)


def target_opener(cell: Cell, data_root) -> Callable[[str], tuple]:
    """target -> (its dataset set up as the cell scores it, the classes its mIoU averages over), each target opened
    once, for periodic and final scoring alike."""
    opened: dict[str, tuple] = {}

    def open_target(target: str) -> tuple:
        if target not in opened:  # a view (`cityscapes~native`) opens its dataset under the view's protocol
            ds = build_dataset(scoring_view(target)[0], cell.eval["split"], root=data_root)
            opened[target] = (ds, prepare_for_scoring(ds, view_eval(cell.eval, target)))
        return opened[target]
    return open_target


def periodic_evaluation(cell: Cell, model: torch.nn.Module, open_target, device: torch.device):
    """`on_eval` for engine/train.py under `eval.every`: iteration -> {target: mIoU} on every target of the cell,
    scored as the final scores are (same split, protocol, classes, inference), so the curve's last point is the
    result. Every target is opened before training starts; no predictions or per-image matrices are kept."""
    targets = {target: open_target(target) for target in cell.eval_targets}
    options = {target: scoring_options(view_eval(cell.eval, target)) for target in targets}

    def on_eval(iteration: int) -> dict[str, float]:
        return {target: evaluate(model, ds, device=device, eval_classes=classes, **options[target],
                                 desc=f"  iteration {iteration}: {target}")["miou"]
                for target, (ds, classes) in targets.items()}
    return on_eval


def train_and_score(cell: Cell, cell_dir: Path, *, data_root, device: torch.device) -> dict:
    """run_cell's work, once the cell is claimed."""
    main = dist_utils.is_main()
    record = cell_record(cell, cell_dir, set_damaged_aside=main)
    curves_eval = record["config"].get("eval")  # what a trained cell's curves were scored under, before it is replaced
    record["config"]["eval"] = cell.eval
    record["targets"] = list(cell.eval_targets)
    if main:  # the effective configuration, there from the first second of the run
        write_json(cell_dir / CONFIG, {**cell.training_identity(), "targets": list(cell.eval_targets),
                                       "train": cell.train, "eval": cell.eval})

    # 1. the model: a trained cell's own weights, else (pretrained) initial weights and training
    final = cell_dir / FINAL_WEIGHTS
    final_state = load_final_weights(final, set_damaged_aside=main)
    trained = final_state is not None
    torch.manual_seed(cell.seed)
    # ImageNet weights only matter before training; a trained cell's own weights replace them anyway
    open_target = target_opener(cell, data_root)
    # (a frozen backbone's weights file holds the trained parameters only: the pretrained file completes it)
    model, method = build_cell_model(cell.backbone, cell.head, model_settings(cell.model), cell.method,
                                     cell.method_options, pretrained=not trained or needs_pretrained(final_state))
    if trained:
        model.load_state_dict(weights_to_load(model, final_state, final))
    else:
        settings = train_settings(cell.train)
        source = build_dataset(cell.source, settings.split, root=data_root, classes=cell.training_classes)
        unknown_labels = apply_unknown_label_policy_per_source(source, settings.unknown_labels, settings.workers)
        transform = train_transform(settings, image_method=method.transform_image if method.transforms_image else None)
        every = int(cell.eval.get("every") or 0)
        record["training"] = train(model, source, transform, settings, seed=cell.seed, device=device,
                                   ckpt_dir=cell_dir / CHECKPOINTS, identity=cell.training_identity(),
                                   log_path=cell_dir / TRAIN_LOG, tb_dir=cell_dir / TENSORBOARD,
                                   desc=f"{cell.trained_as} on {cell.source} (seed {cell.seed})", method=method,
                                   pretrained=cell.model.get("pretrained"),
                                   eval_every=every,
                                   on_eval=periodic_evaluation(cell, model, open_target, device) if every else None)
        curves, eval_seconds = record["training"].pop("curves"), record["training"].pop("eval_seconds")
        if curves:  # nothing is added to a record trained without periodic evaluation
            record["curves"] = curves
            record["training"]["eval_seconds"] = eval_seconds
        record["training"].update(unknown_labels)
        init = init_record(cell.backbone, cell.model.get("pretrained"))  # a partial load names what it left out
        if init is not None:
            record["training"]["init"] = init
        if main:  # the record first: a run killed while scoring then keeps its training statistics and curves
            write_record(cell_dir, record)
            save_torch(final, weights_to_save(model))

    # 2. every target not yet scored under the current eval settings, the record rewritten after each
    ecfg = cell.eval
    record["provenance"] = provenance(device)
    stale = curves_eval is None or identity_view("eval", curves_eval) != cell.eval_identity()
    for target in missing_targets(cell, cell_dir):
        # a curve scored under other eval settings than this run's (not one a kill left unscored)
        if trained and target in record.get("curves", {}) and (stale or target in record["results"]):
            del record["curves"][target]
        if main:
            keep_damaged_confusions_aside(cell_dir, target)
        ds, classes = open_target(target)
        t0 = time.perf_counter()
        per_image = confusion_path(cell_dir, target)
        metrics = evaluate(model, ds, device=device, eval_classes=classes, **scoring_options(view_eval(ecfg, target)),
                           desc=f"  test on {target}",
                           dump_dir=cell_dir / PREDS / target, dump_count=int(ecfg.get("dump", 0) or 0),
                           per_image_path=per_image)
        metrics.update(eval=cell.eval_identity(target), images=len(ds), seconds=time.perf_counter() - t0,
                       per_image=str(per_image.relative_to(cell_dir)))
        left_out = len(missing_pairs(ds))  # files without their partner, scored without under eval.missing_pairs=skip
        if left_out:
            metrics["missing_pairs"] = left_out
        record["results"][target] = metrics
        scored = {**(record.get("protocol") or {}).get("targets", {}),
                  target: target_protocol(ds, classes, missing_pairs=left_out)}
        record["protocol"] = protocol_card(cell, scored)
        if main:
            write_record(cell_dir, record)
            tb = tensorboard_writer(cell_dir / TENSORBOARD)
            if tb is not None:
                tb.add_scalar(f"eval/miou/{target}", metrics["miou"], int(cell.train["iters"]))
                tb.close()
    if main:
        (cell_dir / DONE).touch()
        if not cell.train.get("keep_ckpts_when_done", False):
            prune_checkpoints(cell_dir / CHECKPOINTS)
    return record


def keep_damaged_confusions_aside(cell_dir: Path, target: str) -> None:
    """A per-image file that cannot be read is set aside as NAME.damaged with a warning (never deleted), before the
    target is scored again and the file written anew."""
    problem = damaged_confusions(cell_dir, target)
    if problem is not None:
        path = confusion_path(cell_dir, target)
        moved = set_aside(path)
        warnings.warn(f"{path}: {problem}; kept aside as {moved.name}, {target} is scored again", DamagedRecordWarning,
                      stacklevel=2)
