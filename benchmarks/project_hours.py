"""Projected training hours of each experiment file's whole recipe on this device, from its measured training steps.

    python benchmarks/project_hours.py [--experiments rein_dg robustnet_dg] [--compile] [--device cuda]

Each distinct training step among a file's cells (backbone, head, method and its options, model settings, crop,
global batch, micro-steps, precision, optimizer) runs through segbench's own loop (engine/train.py) on synthetic
in-memory batches at the recipe's crop: LOG_EVERY warm-up iterations (cudnn autotuning, the allocator, compilation),
then LOG_EVERY timed ones, read from the loop's own log (its cumulative images/s at both ends). A file's hours are
the sum over its cells of iterations x seconds per iteration, so the same step shared by several files or seeds is
measured once. One device runs the whole global batch in one process; a step that does not fit in memory is
reported as such (run it on more GPUs, or with train.accumulate).

Not in the projection, so a real run takes longer: data loading (gpu_check's `data` section says whether the loader
keeps up), scoring, checkpoints, ISW's and SHADE's one-off statistics passes over real images (ISW's steps are
timed with every covariance entry selected, as costly as a real selection), and PASTA's augmentation, which runs in
the loader on the CPU. Weights start random (pretrained files are not read), and the class-uniform sampler is off
(it picks other images at the same cost). A step that fails is recorded with its error and leaves its file's hours
open; the other steps are still timed.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

#: the train settings that change what one iteration costs (the rest change what it computes, not how long)
STEP_SETTINGS = ("crop", "batch_size", "accumulate", "amp", "optimizer", "channels_last", "compile")


@dataclass(frozen=True)
class Step:
    """One distinct training step: every cell with these settings costs the same per iteration."""

    backbone: str
    head: str
    method: str
    method_options: str  # JSON, sorted keys
    model: str  # JSON, sorted keys
    train: str  # JSON of STEP_SETTINGS, sorted keys

    @property
    def label(self) -> str:
        train = json.loads(self.train)
        method = "" if self.method == "erm" else f"+{self.method}"
        crop = "x".join(str(s) for s in train["crop"])
        return f"{self.backbone}{method}+{self.head} {crop} b{train['batch_size']}"


def experiment_cells(path: Path) -> list:
    """The cells `python -m segbench.run --config PATH` would plan, without looking for datasets."""
    from segbench import run

    args = run.build_parser().parse_args(["--config", str(path)])
    return run.study_cells(run.resolve_config(args, run.base_config(args)))


def step_of(cell, compile_: bool = False) -> Step:
    def text(value) -> str:
        return json.dumps(value, sort_keys=True, default=list)

    train = {k: cell.train.get(k) for k in STEP_SETTINGS}
    train["compile"] = bool(compile_)
    return Step(cell.backbone, cell.head, cell.method, text(cell.method_options), text(cell.model), text(train))


def measure(step: Step, cell, device: torch.device) -> dict:
    """Seconds per iteration of `step` in segbench's loop, timed over the second LOG_EVERY iterations; or why it
    could not be timed ("fits": False for out of memory, "error" for anything else, so one step never loses the
    figures of the others)."""
    import bench_train
    from segbench.config import model_settings, train_settings
    from segbench.engine.train import LOG_EVERY, train
    from segbench.methods.whitening import InstanceWhitening
    from segbench.network import build_cell_model

    # class_uniform's sampler needs the label files a real split has; it changes which images, not the step's cost
    settings = train_settings({**cell.train, **json.loads(step.train), "iters": 2 * LOG_EVERY, "workers": 0,
                               "ckpt_every": 0, "warmup_iters": 0, "class_uniform": 0.0})
    images, masks = bench_train.make_data(settings.batch_size, tuple(settings.crop))
    if settings.compile:
        torch._dynamo.reset()  # else after 8 networks through one forward, dynamo runs the next ones eagerly
    torch.manual_seed(0)
    try:
        model, method = build_cell_model(step.backbone, step.head, model_settings(cell.model), step.method,
                                         json.loads(step.method_options), pretrained=False)
        if hasattr(method, "selection_iteration"):  # ISW selects its entries from real images later: time its steps
            for module in model.modules():  # as after the selection (the loss on; the entries do not change the cost)
                if isinstance(module, InstanceWhitening):
                    module.set_mask(module.mask.bool())
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "train_log.csv"
            train(model, bench_train.InMemory(images, masks), bench_train.Passthrough(), settings, seed=0,
                  device=device, ckpt_dir=Path(tmp) / "ckpt", identity={}, log_path=log, desc=step.label,
                  method=method)
            rows = {int(r["iteration"]): float(r["images_per_s"]) for r in csv.DictReader(log.open())}
    except torch.cuda.OutOfMemoryError:
        return {"fits": False, "seconds_per_iteration": None}
    except Exception as e:  # noqa: BLE001 - recorded with the step, the next one runs
        return {"fits": None, "seconds_per_iteration": None, "error": f"{type(e).__name__}: {e}"}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"fits": True, "seconds_per_iteration": bench_train.window_seconds(rows, settings.batch_size, LOG_EVERY)}


def project(files: list[Path], device: torch.device, compile_: bool = False,
            can_measure: Callable[[int], bool] = lambda measured: True, progress=print) -> dict:
    """{file stem: {cells, iterations, hours, steps: [...]}}; each distinct step measured once over all files.
    `can_measure(n)`, asked before each new step with the number measured so far, stops the measuring (a step
    budget, a deadline): the steps left leave their file's hours open."""
    measured: dict[Step, dict] = {}
    report = {}
    for path in files:
        cells = experiment_cells(path)
        by_step: dict[Step, list] = {}
        for cell in cells:
            by_step.setdefault(step_of(cell, compile_), []).append(cell)
        hours, entries = 0.0, []
        for step, group in by_step.items():
            if step not in measured and can_measure(len(measured)):
                progress(f"{path.stem}: timing step {len(measured) + 1}, {step.label}")
                measured[step] = measure(step, group[0], device)
            figures = measured.get(step, {"fits": None, "seconds_per_iteration": None})
            iterations = sum(c.train["iters"] for c in group)
            seconds = figures["seconds_per_iteration"]
            step_hours = None if seconds is None else iterations * seconds / 3600
            hours = None if hours is None or step_hours is None else hours + step_hours
            entries.append({"step": step.label, "cells": len(group), "iterations": iterations, **figures,
                            "hours": step_hours})
        report[path.stem] = {"cells": len(cells), "iterations": sum(c.train["iters"] for c in cells),
                             "hours": hours, "compile": compile_, "steps": entries}
    return report


def table(report: dict, device_name: str) -> str:
    lines = [f"projected training hours on one {device_name} (training steps only: no loading, scoring, "
             "statistics passes)", "", "| experiment | cells | iterations | hours | slowest step (s/it) |",
             "|:---|---:|---:|---:|:---|"]
    for name, e in report.items():
        timed = [s for s in e["steps"] if s["seconds_per_iteration"] is not None]
        slowest = max(timed, key=lambda s: s["seconds_per_iteration"], default=None)
        hours = "not measured" if e["hours"] is None else f"{e['hours']:.2f}"
        if any(s["fits"] is False for s in e["steps"]):
            hours = "does not fit"
        elif any("error" in s for s in e["steps"]):
            hours = "a step failed (see the JSON)"
        lines.append(f"| {name}{' (compiled)' if e['compile'] else ''} | {e['cells']} | {e['iterations']} | {hours} | "
                     + ("–" if slowest is None else f"{slowest['step']}: {slowest['seconds_per_iteration']:.3f}")
                     + " |")
    return "\n".join(lines)


def experiment_files(names: list[str] | None) -> list[Path]:
    from segbench.config import experiments_dir

    every = sorted(experiments_dir().glob("*.yaml"))
    if not names:
        return every
    known = {p.stem: p for p in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--experiments {' '.join(unknown)}: not in {experiments_dir()} "
                         f"(there: {', '.join(sorted(known))})")
    return [known[n] for n in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="+", metavar="NAME", help="experiment file stems (default: all)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="time the steps with train.compile=true")
    parser.add_argument("--max-steps", type=int, help="measure at most this many distinct steps")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = project(experiment_files(args.experiments), device, args.compile,
                     lambda measured: args.max_steps is None or measured < args.max_steps,
                     progress=lambda line: print(line, file=sys.stderr))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(table(report, name))
    if args.out:
        from segbench.io import write_text

        write_text(args.out, json.dumps({"device": name, "experiments": report}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
