"""Running a planned study: which cells are pending, the job that runs each one, and what became of each cell.

This is the launchers' caller: it decides everything once (done cells are skipped, each pending cell gets its command
line, its log and its in-process equivalent), hands the jobs to the launcher, then judges each cell by what it left
on disk. A worker is the study's own command line narrowed to one cell (`--only CELL_ID --launcher local`), so it
plans exactly what the parent planned.

Two runners on one results directory do not both train a cell: the process running a cell holds its lock (see
lock.cell_lock), and a cell whose earlier job a queue still holds (Slurm) is not submitted again; either way the cell
is reported "busy". A results directory that cannot be written to stops the study before anything runs.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .cells import LAUNCHER_LOG, SLURM_JOB, Cell
from .io import check_writable
from .launchers import Job, Launched, last_line
from .lock import CellBusy, lock_holder
from .pipeline import run_cell
from .record import is_done

# Options of the study's command line that a worker must not inherit: value count (-1 = all following non-options).
# --analyze runs once, in the study's process, over every finished cell: a worker would analyse its one cell and
# overwrite the study's shift_*/divergence_* tables with it.
PARENT_ONLY_OPTIONS = {"--only": -1, "--launcher": 1, "--launcher-opt": 1, "--dry-run": 0, "--analyze": 1,
                       "--analyze-images": 1}


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


def worker_args(argv: Sequence[str], cell_id: str) -> list[str]:
    """What follows the interpreter in a worker's command: `-m segbench.run ... --only ID`."""
    return ["-m", "segbench.run", *cell_argv(argv, cell_id)]


@dataclass
class CellOutcome:
    cell: Cell
    cell_dir: Path
    status: str  # "done", "skipped", "failed", "submitted", "busy" (another process, or a queued job, has it)
    error: str | None = None
    reason: str | None = None  # why a cell is busy
    log: Path | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def run_job(cell: Cell, cell_dir: Path, *, data_root=None, device=None) -> None:
    """A job's in-process work: run the cell, or say that another process is running it (judged "busy" after)."""
    try:
        run_cell(cell, cell_dir, data_root=data_root, device=device)
    except CellBusy as e:
        print(f"  busy: {e}", file=sys.stderr, flush=True)


def cell_job(cell: Cell, results_dir: Path, argv: Sequence[str], *, data_root=None, device=None) -> Job:
    cell_dir = cell.directory(results_dir)
    return Job(name=cell.dirname, args=worker_args(argv, cell.cell_id), log=cell_dir / LAUNCHER_LOG,
               call=functools.partial(run_job, cell, cell_dir, data_root=data_root, device=device),
               queue_id_file=cell_dir / SLURM_JOB)


def judge(cell: Cell, cell_dir: Path, job: Job, launched: Launched) -> CellOutcome:
    """A job succeeded only if it exited 0 AND left the cell done (a record with every target + the done marker)."""
    log = launched.log or job.log
    common = dict(log=log, seconds=launched.seconds, extra=launched.extra)
    if launched.rc is None:
        return CellOutcome(cell, cell_dir, "submitted", **common)
    if launched.rc == 0 and is_done(cell, cell_dir):
        return CellOutcome(cell, cell_dir, "done", **common)
    holder = lock_holder(cell_dir)
    if holder is not None and not is_done(cell, cell_dir):
        return CellOutcome(cell, cell_dir, "busy", reason=f"another process is running it ({holder})", **common)
    if launched.error:
        return CellOutcome(cell, cell_dir, "failed", error=launched.error, **common)
    why = f"exit code {launched.rc}" if launched.rc != 0 else "exited 0 but the cell is not done (no record or done marker)"
    tail = last_line(log)
    return CellOutcome(cell, cell_dir, "failed", error=f"{why}: {tail}" if tail else why, **common)


def still_queued(cells: list[Cell], results_dir: Path, launcher: Callable) -> dict[str, str]:
    """cell_id -> job id, for the cells whose last submitted job the launcher's queue still holds (pending or running).

    Only a launcher that submits to a queue can tell (its `active_jobs(ids)`, e.g. slurm asking squeue)."""
    active_jobs = getattr(launcher, "active_jobs", None)
    if active_jobs is None:
        return {}
    submitted = {}
    for cell in cells:
        try:
            job_id = (cell.directory(results_dir) / SLURM_JOB).read_text().strip()
        except OSError:
            continue
        if job_id:
            submitted[cell.cell_id] = job_id
    alive = active_jobs(list(dict.fromkeys(submitted.values()))) if submitted else set()
    return {cell_id: job_id for cell_id, job_id in submitted.items() if job_id in alive}


def run_study(cells: list[Cell], results_dir: Path, launcher: Callable, options: dict | None = None, *,
              argv: Sequence[str] = (), data_root=None, device=None) -> list[CellOutcome]:
    """Launch every pending cell of `cells`; one outcome per cell, in plan order (finished cells: "skipped").

    NotWritableError before anything runs when the results directory (or a cell's) cannot be written to."""
    results_dir = Path(results_dir)
    check_writable(results_dir)
    pending = [c for c in cells if not is_done(c, c.directory(results_dir))]
    for cell in pending:
        if cell.directory(results_dir).exists():
            check_writable(cell.directory(results_dir))
    queued = still_queued(pending, results_dir, launcher)
    busy = {c.cell_id: CellOutcome(c, c.directory(results_dir), "busy", reason=f"job {queued[c.cell_id]}, submitted "
                                   "earlier, is still queued or running; not submitted again")
            for c in pending if c.cell_id in queued}
    pending = [c for c in pending if c.cell_id not in queued]
    jobs = [cell_job(c, results_dir, argv, data_root=data_root, device=device) for c in pending]
    for cell in pending:
        cell.directory(results_dir).mkdir(parents=True, exist_ok=True)
    launched = launcher(jobs, results_dir, **(options or {})) if jobs else []
    if len(launched) != len(jobs):
        raise RuntimeError(f"launcher {getattr(launcher, '__name__', launcher)} returned {len(launched)} results "
                           f"for {len(jobs)} jobs")
    judged = {c.cell_id: judge(c, c.directory(results_dir), j, r) for c, j, r in zip(pending, jobs, launched)}
    judged.update(busy)
    return [judged.get(c.cell_id) or CellOutcome(c, c.directory(results_dir), "skipped") for c in cells]
