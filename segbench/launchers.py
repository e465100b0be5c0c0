"""Launchers: how the cells of a study get run. Plain functions in a registry, so a site adds its own.

A launcher is called as `launcher(cells, results_dir, *, data_root, device, argv, **options)` and returns one
CellOutcome per cell (status done / skipped / failed, or submitted for a cluster launcher that does not wait);
it never stops the study for one failed cell. Subprocess launchers re-run the study's own command line `argv`
narrowed to one cell (`--only CELL_ID --launcher local`), so a worker plans exactly what the parent planned, and
write the worker's stdout/stderr to `CELLDIR/launcher.log`.

Options come from the command line as `--launcher-opt KEY=VALUE` (see `parse_options`), e.g.
`--launcher gpus --launcher-opt gpus=0,1,2,3`, `--launcher torchrun --launcher-opt nproc=4`,
`--launcher slurm --launcher-opt partition=gpu --launcher-opt gpus_per_cell=4`.
"""
from __future__ import annotations

import datetime
import inspect
import os
import platform
import queue
import shlex
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import yaml

from .matrix import Cell, CellOutcome, is_done, run_cell
from .registry import Registry

LAUNCHERS = Registry("launcher")

LOG_NAME = "launcher.log"
# Options of the study's command line that a worker must not inherit: value count (-1 = all following non-options).
PARENT_ONLY_OPTIONS = {"--only": -1, "--launcher": 1, "--launcher-opt": 1, "--dry-run": 0}
# The parameters every launcher receives from run.py; anything else a launcher accepts is an option.
COMMON_PARAMETERS = ("cells", "results_dir", "data_root", "device", "argv")

# runner(cmd, log, env, cwd) -> exit code; tests pass a fake one, the default runs a real subprocess.
Runner = Callable[[Sequence[str], Path, "dict | None", "str | None"], int]


# --- one cell's command line -------------------------------------------------------------------------------------

def cell_argv(argv: Sequence[str], cell_id: str) -> list[str]:
    """The study's arguments narrowed to one cell: parent-only options stripped, `--launcher local --only ID` added."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if name in PARENT_ONLY_OPTIONS and arg.startswith("--"):
            count = PARENT_ONLY_OPTIONS[name]
            i += 1
            if "=" in arg:
                continue
            if count < 0:
                while i < len(args) and not args[i].startswith("-"):
                    i += 1
            else:
                i += count
            continue
        out.append(arg)
        i += 1
    return [*out, "--launcher", "local", "--only", cell_id]


def python_command(argv: Sequence[str], cell_id: str) -> list[str]:
    """`python -m segbench.run ... --only ID` with this interpreter, so workers see the same environment."""
    return [sys.executable, "-m", "segbench.run", *cell_argv(argv, cell_id)]


def torchrun_command(argv: Sequence[str], cell_id: str, nproc: int) -> list[str]:
    """`torchrun --standalone` through this interpreter (`-m torch.distributed.run`: no reliance on PATH).

    --standalone picks a free rendezvous port, so several cells can run side by side on one node.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "segbench.run", *cell_argv(argv, cell_id)]


def run_logged(cmd: Sequence[str], log: Path, env: dict | None = None, cwd: str | None = None) -> int:
    """Run `cmd`, appending its stdout and stderr to `log` (a requeued or resumed attempt keeps the earlier ones)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"=== {stamp} on {platform.node()}: {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode


def _last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def outcome_after(cell: Cell, cell_dir: Path, rc: int, log: Path, seconds: float) -> CellOutcome:
    """A worker succeeded only if it exited 0 AND left the cell done (record with every target + done marker)."""
    if rc == 0 and is_done(cell, cell_dir):
        return CellOutcome(cell, cell_dir, "done", log=log, seconds=seconds)
    why = f"exit code {rc}" if rc != 0 else "exited 0 but the cell is not done (no record or done marker)"
    tail = _last_line(log)
    return CellOutcome(cell, cell_dir, "failed", error=f"{why}: {tail}" if tail else why, log=log, seconds=seconds)


def parse_options(pairs: Sequence[str], launcher: Callable) -> dict:
    """`["gpus=0,1", "nproc=4"]` -> keyword options, values parsed as YAML; unknown keys fail with the valid ones."""
    valid = [p for p in inspect.signature(launcher).parameters if p not in COMMON_PARAMETERS and p != "runner"]
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in valid:
            raise ValueError(f"--launcher-opt {pair!r}: expected KEY=VALUE with KEY one of: {', '.join(valid) or 'none'}")
        options[key] = yaml.safe_load(raw) if raw else None
    return options


# --- local ---------------------------------------------------------------------------------------------------------

@LAUNCHERS.register("local")
def launch_local(cells: list[Cell], results_dir: Path, *, data_root=None, device=None, argv=()) -> list[CellOutcome]:
    """Run cells one after another in this process. A failing cell is logged and the rest go on.

    `argv` (the study's command line) is what subprocess launchers re-run with `--only CELL_ID`; unused here.
    """
    outcomes = []
    for i, cell in enumerate(cells, 1):
        cell_dir = cell.directory(results_dir)
        if is_done(cell, cell_dir):
            outcomes.append(CellOutcome(cell, cell_dir, "skipped"))
            continue
        print(f"[{i}/{len(cells)}] {cell.dirname}", file=sys.stderr, flush=True)
        cell_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            run_cell(cell, cell_dir, data_root=data_root, device=device)
            outcomes.append(CellOutcome(cell, cell_dir, "done", seconds=time.perf_counter() - t0))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the study
            log = cell_dir / "error.log"
            log.write_text(traceback.format_exc())
            outcomes.append(CellOutcome(cell, cell_dir, "failed", error=f"{type(e).__name__}: {e}", log=log,
                                        seconds=time.perf_counter() - t0))
            print(f"  FAILED: {type(e).__name__}: {e}\n  (traceback in {log})", file=sys.stderr, flush=True)
    return outcomes


# --- GPUs of this machine --------------------------------------------------------------------------------------------

def visible_gpus(gpus=None) -> list[str]:
    """Device ids to hand out: the explicit list (`"0,1"`, `[0, 1]` or a count `4`), else CUDA_VISIBLE_DEVICES,
    else every device torch sees. Ids are kept as strings (CUDA_VISIBLE_DEVICES also accepts GPU UUIDs)."""
    if gpus is None:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            return [g.strip() for g in env.split(",") if g.strip()]
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    if isinstance(gpus, int):
        return [str(i) for i in range(gpus)]
    if isinstance(gpus, str):
        return [g.strip() for g in gpus.split(",") if g.strip()]
    return [str(g) for g in gpus]


def _groups(devices: list[str], per_cell: int) -> list[list[str]]:
    if per_cell < 1:
        raise ValueError(f"each cell needs at least one GPU, got {per_cell}")
    if len(devices) < per_cell:
        raise ValueError(f"each cell needs {per_cell} GPU(s) but only {len(devices)} are visible ({devices}); "
                         "set CUDA_VISIBLE_DEVICES or --launcher-opt gpus=0,1,...")
    return [devices[i:i + per_cell] for i in range(0, len(devices) - per_cell + 1, per_cell)]


def _launch_on_devices(cells, results_dir, argv, devices, per_cell, use_torchrun, runner: Runner) -> list[CellOutcome]:
    """One worker per device group; each takes the next pending cell with CUDA_VISIBLE_DEVICES set to its group."""
    groups = _groups(devices, per_cell)
    free: queue.Queue = queue.Queue()
    for g in groups:
        free.put(g)
    lock = threading.Lock()
    pending = [c for c in cells if not is_done(c, c.directory(results_dir))]

    def say(msg: str) -> None:
        with lock:
            print(msg, file=sys.stderr, flush=True)

    def work(index: int, cell: Cell) -> CellOutcome:
        cell_dir = cell.directory(results_dir)
        group = free.get()
        try:
            cell_dir.mkdir(parents=True, exist_ok=True)
            cmd = (torchrun_command(argv, cell.cell_id, len(group)) if use_torchrun
                   else python_command(argv, cell.cell_id))
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group), "PYTHONUNBUFFERED": "1"}
            say(f"[{index}/{len(pending)}] {cell.dirname} on GPU {','.join(group)}")
            t0 = time.perf_counter()
            try:
                rc = runner(cmd, cell_dir / LOG_NAME, env, os.getcwd())
            except OSError as e:  # the command could not even start
                with open(cell_dir / LOG_NAME, "a") as f:
                    f.write(f"could not start {cmd[0]}: {e}\n")
                rc = 127
            out = outcome_after(cell, cell_dir, rc, cell_dir / LOG_NAME, time.perf_counter() - t0)
            say(f"[{index}/{len(pending)}] {cell.dirname}: {out.status} in {out.seconds:.0f}s"
                + (f" ({out.error}; log: {out.log})" if out.status == "failed" else ""))
            return out
        finally:
            free.put(group)

    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="segbench-gpu") as pool:
        futures = {c.cell_id: pool.submit(work, i, c) for i, c in enumerate(pending, 1)}
        outcomes = []
        for cell in cells:
            fut = futures.get(cell.cell_id)
            outcomes.append(fut.result() if fut else
                            CellOutcome(cell, cell.directory(results_dir), "skipped"))
    return outcomes


@LAUNCHERS.register("gpus")
def launch_gpus(cells: list[Cell], results_dir: Path, *, data_root=None, device=None, argv=(), gpus=None,
                per_cell: int = 1, runner: Runner = run_logged) -> list[CellOutcome]:
    """Cells in parallel, one per visible GPU (or per group of `per_cell` GPUs, each then run under torchrun).

    Each worker is a fresh process with its own CUDA_VISIBLE_DEVICES: no shared CUDA context, and a crash (OOM,
    segfault) takes down one cell only. `data_root`/`device` travel inside `argv`.
    """
    devices = visible_gpus(gpus)
    if not devices:
        raise ValueError("the gpus launcher found no GPU (CUDA_VISIBLE_DEVICES empty, torch sees none); "
                         "use --launcher local, or name devices with --launcher-opt gpus=0,1")
    return _launch_on_devices(cells, results_dir, argv, devices, per_cell, per_cell > 1, runner)


@LAUNCHERS.register("torchrun")
def launch_torchrun(cells: list[Cell], results_dir: Path, *, data_root=None, device=None, argv=(), nproc=None,
                    gpus=None, runner: Runner = run_logged) -> list[CellOutcome]:
    """Each cell on `nproc` GPUs (default: all visible) under `torchrun --standalone`; with more GPUs than
    `nproc`, several cells run side by side on disjoint groups."""
    devices = visible_gpus(gpus)
    nproc = int(nproc or len(devices))
    if nproc < 1:
        raise ValueError("the torchrun launcher found no GPU; pass --launcher-opt nproc=N and gpus=...")
    return _launch_on_devices(cells, results_dir, argv, devices, nproc, True, runner)


# --- Slurm through submitit --------------------------------------------------------------------------------------------

class CellJob:
    """One task of the Slurm job array: run one cell's command, append its output to the cell's launcher.log.

    submitit calls `checkpoint()` when Slurm signals a timeout or preemption and requeues what it returns (this same
    job); the requeued attempt resumes from the cell's own training checkpoints, so nothing else needs saving.
    It returns the exit code instead of raising, so one failed cell is reported, not re-raised into the study.
    """

    def __init__(self, cmd: list[str], log: str, cwd: str, runner: Runner = run_logged):
        self.cmd, self.log, self.cwd, self.runner = list(cmd), str(log), str(cwd), runner

    def __call__(self) -> int:
        return self.runner(self.cmd, Path(self.log), {**os.environ, "PYTHONUNBUFFERED": "1"}, self.cwd)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(name: str, *, partition=None, timeout_min: int = 24 * 60, gpus_per_cell: int = 1,
                     cpus_per_task: int | None = None, mem_gb: float | None = None, array_parallelism: int = 64,
                     account=None, qos=None, constraint=None, setup=None) -> dict:
    """AutoExecutor parameters for one cell per array task: one task per node holding all its GPUs (torchrun
    starts the ranks inside it), so SLURM never needs to know about DDP."""
    params = {"name": name, "timeout_min": int(timeout_min), "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": int(gpus_per_cell), "cpus_per_task": cpus_per_task or 8 * max(1, int(gpus_per_cell)),
              "mem_gb": mem_gb, "slurm_partition": partition, "slurm_array_parallelism": int(array_parallelism),
              "slurm_account": account, "slurm_qos": qos, "slurm_constraint": constraint,
              "slurm_setup": list(setup) if setup else None}
    return {k: v for k, v in params.items() if v is not None}


def slurm_jobs(cells: list[Cell], results_dir: Path, argv, gpus_per_cell: int = 1, runner: Runner = run_logged):
    """(cell, CellJob) for every cell not yet done: the job array built from the plan."""
    jobs = []
    for cell in cells:
        cell_dir = cell.directory(Path(results_dir).resolve())
        if is_done(cell, cell_dir):
            continue
        cmd = (torchrun_command(argv, cell.cell_id, gpus_per_cell) if gpus_per_cell > 1
               else python_command(argv, cell.cell_id))
        jobs.append((cell, CellJob(cmd, str(cell_dir / LOG_NAME), os.getcwd(), runner)))
    return jobs


@LAUNCHERS.register("slurm")
def launch_slurm(cells: list[Cell], results_dir: Path, *, data_root=None, device=None, argv=(), partition=None,
                 timeout_min: int = 24 * 60, gpus_per_cell: int = 1, cpus_per_task=None, mem_gb=None,
                 array_parallelism: int = 64, account=None, qos=None, constraint=None, setup=None,
                 wait: bool = True, cluster: str = "slurm", executor=None, runner: Runner = run_logged):
    """Submit the missing cells as one Slurm job array (submitit, `pip install segbench[slurm]`).

    wait=True blocks until every task ends and reports done/failed per cell; wait=False returns right after
    submission (status "submitted"; `segbench report` shows progress). Timeouts and preemptions are requeued
    (submitit's checkpoint protocol, up to its max_num_timeout). `cluster`/`executor` exist for tests and other
    submitit back ends ("local", "debug").
    """
    try:
        import submitit
    except ImportError:
        raise ImportError("the slurm launcher needs submitit: pip install 'segbench[slurm]'") from None
    results_dir = Path(results_dir)
    jobs = slurm_jobs(cells, results_dir, argv, int(gpus_per_cell), runner)
    todo = {cell.cell_id for cell, _ in jobs}
    outcomes = {c.cell_id: CellOutcome(c, c.directory(results_dir), "skipped")
                for c in cells if c.cell_id not in todo}
    if jobs:
        for cell, _ in jobs:
            cell.directory(results_dir).mkdir(parents=True, exist_ok=True)
        if executor is None:
            executor = submitit.AutoExecutor(folder=results_dir / "slurm" / "%j", cluster=cluster)
        executor.update_parameters(**slurm_parameters(
            f"segbench-{results_dir.name}", partition=partition, timeout_min=timeout_min, gpus_per_cell=gpus_per_cell,
            cpus_per_task=cpus_per_task, mem_gb=mem_gb, array_parallelism=array_parallelism, account=account,
            qos=qos, constraint=constraint, setup=setup))
        submitted = executor.submit_array([job for _, job in jobs])
        print(f"submitted {len(submitted)} cell(s) as job array {submitted[0].job_id.split('_')[0]}; "
              f"submitit files in {results_dir / 'slurm'}", file=sys.stderr, flush=True)
        for (cell, job), sub in zip(jobs, submitted):
            cell_dir = cell.directory(results_dir)
            if not wait:
                outcomes[cell.cell_id] = CellOutcome(cell, cell_dir, "submitted", log=Path(job.log),
                                                     extra={"job_id": sub.job_id})
                continue
            t0 = time.perf_counter()
            try:
                rc = int(sub.result())
            except Exception as e:  # noqa: BLE001 - the task itself died (node failure, too many requeues)
                outcomes[cell.cell_id] = CellOutcome(cell, cell_dir, "failed", error=f"{type(e).__name__}: {e}",
                                                     log=Path(sub.paths.stderr), extra={"job_id": sub.job_id})
                continue
            out = outcome_after(cell, cell_dir, rc, Path(job.log), time.perf_counter() - t0)
            out.extra["job_id"] = sub.job_id
            outcomes[cell.cell_id] = out
    return [outcomes[c.cell_id] for c in cells]
