"""A cell's record (`record.json`): the one thing a cell hands on. Its fields, written down once; the writer; the strict
reader (the report, the analysis tools, `segbench evaluate`) and the lenient one (deciding what to run); what a
malformed record hands on to the one that replaces it; the per-image confusion files beside it; and, from both, which
targets a cell still has to score.

A record is written atomically; `done` marks a cell whose record holds every target asked for. Nothing here imports
torch: the report and `--dry-run` read records without loading the training code.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .cells import CELLS, CONFUSION, DONE, RECORD
from .config import ERM
from .io import DAMAGED_SUFFIX, set_aside, write_json

if TYPE_CHECKING:
    from .cells import Cell

# --- the record -------------------------------------------------------------------------------------------------------
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


def new_record(cell: Cell) -> dict:
    """The record of a cell that has not been scored on anything yet."""
    return {"cell_id": cell.cell_id, "backbone": cell.backbone, "head": cell.head, "source": cell.source,
            "seed": cell.seed, "method": cell.method_block,
            "targets": list(cell.eval_targets),
            "config": {"model": cell.model, "train": cell.train, "eval": cell.eval}, "results": {}}


def record_method(record: dict) -> dict:
    """The method a record was trained with, as {name, options, revision}: a record from before methods existed (no
    `method` field) was trained with plain ERM, one from before revisions with revision 1."""
    method = record.get("method") or {}
    return {"name": method.get("name") or ERM, "options": method.get("options") or {},
            "revision": method.get("revision", 1)}


def write_record(cell_dir: Path, record: dict) -> None:
    unknown = set(record) - set(RECORD_FIELDS)
    if unknown:
        raise RecordError(f"record fields {sorted(unknown)} are not in record.RECORD_FIELDS; declare them there")
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


# --- from both: what a cell still has to score, and a study's records ------------------------------------------------
def missing_targets(cell: Cell, cell_dir: Path) -> list[str]:
    """Targets not yet scored under the cell's current eval settings, or whose per-image file must be written again
    (`_needs_scoring`)."""
    results = (read_record_or_none(cell_dir) or {}).get("results", {})
    return [t for t in cell.eval_targets
            if results.get(t, {}).get("eval") != cell.eval_identity(t) or _needs_scoring(cell_dir, t, results[t])]


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
