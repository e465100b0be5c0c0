"""`segbench report` over a study of many finished cells (a benchmark, not a test): how long the report takes, first
and again, on records and per-image confusion files written directly, without training.

    python benchmarks/bench_report.py [--cells 900] [--images 60] [--out DIR] [--code CHECKOUT] [--no-plot]

The study is the embedded default's plan (3 backbones, `sim->photo`) with as many seeds as make `--cells` cells; each
cell gets a record as the runner writes it (config, protocol card, results whose mIoU and per-class IoU are those of
its per-image matrices) and CELL/confusion/TARGET.npz with `--images` random per-image matrices over the embedded
domains' 13 classes. `--code` reports with another segbench checkout (e.g. an older commit exported with
`git archive`), so two versions are timed on the same files; each report runs in a fresh interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segbench.cells import CELLS, DONE, RECORD, plan  # noqa: E402
from segbench.config import EMBEDDED_DEFAULT, load_config  # noqa: E402
from segbench.labels import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from segbench.protocol_card import protocol_card  # noqa: E402
from segbench.record import confusion_path, new_record  # noqa: E402
from segbench.spec import parse_specs  # noqa: E402

PRESENT = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)  # the 13 classes the embedded domains draw


def per_image_counts(rng: np.random.Generator, images: int) -> np.ndarray:
    """`images` x 19 x 20 confusion matrices: most pixels of a present class right, the rest spread over the others."""
    counts = np.zeros((images, NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    for c in PRESENT:
        counts[:, c, c] = rng.integers(200, 1500, images)
        counts[:, c, list(PRESENT)] += rng.integers(0, 150, (images, len(PRESENT)))
    return counts


def scored(counts: np.ndarray) -> dict:
    """What the record says of a target scored with these matrices (ConfusionMatrix.summary's semantics)."""
    total = counts.sum(0)
    tp = np.diag(total[:, :NUM_CLASSES])
    denom = total[:, :NUM_CLASSES].sum(0) + total.sum(1) - tp
    iou = {name: (100 * tp[c] / denom[c] if denom[c] else None) for c, name in enumerate(CLASS_NAMES)}
    defined = [v for v in iou.values() if v is not None]
    return {"miou": sum(defined) / len(defined), "pixel_acc": 100 * tp.sum() / total[:, :NUM_CLASSES].sum(),
            "per_class_iou": iou, "images": len(counts)}


def write_study(root: Path, n_cells: int, images: int, seed: int = 0) -> Path:
    cfg = load_config(EMBEDDED_DEFAULT)
    cfg["seeds"] = list(range(-(-n_cells // len(cfg["backbones"]))))
    cells = plan(cfg, parse_specs(cfg["specs"]), cfg["backbones"], cfg["heads"])[:n_cells]
    rng = np.random.default_rng(seed)
    geometry = {"geometry": {"type": "ImageResize", "size": None, "height": None}}
    for cell in cells:
        cell_dir = cell.directory(root)
        record = new_record(cell)
        for target in cell.eval_targets:
            counts = per_image_counts(rng, images)
            path = confusion_path(cell_dir, target)
            path.parent.mkdir(parents=True, exist_ok=True)  # plain writes: the runner's fsync per file is not timed
            np.savez_compressed(path, counts=counts, images=np.array([f"{target}/{i:05d}.png" for i in range(images)]))
            record["results"][target] = {**scored(counts), "eval": cell.eval_identity(), "seconds": 1.0,
                                         "per_image": str(path.relative_to(cell_dir))}
        record["protocol"] = protocol_card(cell, {t: {"split": "val", "transform": geometry, "classes": NUM_CLASSES}
                                                  for t in cell.eval_targets})
        (cell_dir / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (cell_dir / DONE).touch()
    return root


def time_report(study: Path, code: Path, plot: bool) -> float:
    """Seconds of `python -m segbench.cli report STUDY` with `code` first on the path, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "segbench.cli", "report", str(study), *([] if plot else ["--no-plot"])]
    began = time.perf_counter()
    subprocess.run(argv, cwd=code, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=900)
    parser.add_argument("--images", type=int, default=60, help="test images per target (the embedded val split: 60)")
    parser.add_argument("--out", type=Path, help="write the study here and keep it (default: a temporary directory)")
    parser.add_argument("--code", type=Path, default=ROOT, help="segbench checkout that reports (default: this one)")
    parser.add_argument("--no-plot", action="store_true", help="time `report --no-plot`")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = args.out or Path(tmp) / "embedded"
        if not (study / CELLS).is_dir():
            began = time.perf_counter()
            write_study(study, args.cells, args.images)
            print(f"wrote {args.cells} cells ({args.images} images per target) in {time.perf_counter() - began:.1f} s")
        first, again = (time_report(study, args.code, not args.no_plot) for _ in range(2))
        print(f"segbench report ({args.code}): {first:.1f} s, again {again:.1f} s")


if __name__ == "__main__":
    main()
