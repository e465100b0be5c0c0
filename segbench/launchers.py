"""Launchers: how a study's jobs get run. Plain functions in a registry, so a site adds its own (DomainBed's
`command_launchers.py` is the model): `launcher(jobs, workdir, **options)` returns one `Launched` per job, in order;
`workdir` (the study's results directory) is where a launcher may keep files of its own (submitit's).

A launcher only launches. Which cells are pending, what command runs each one, where its log goes, and whether a job
that ended left its cell done, are decided once by the caller (`segbench.study`). Options come from the command line as
`--launcher-opt KEY=VALUE` (see `parse_options`), e.g. `--launcher local --launcher-opt jobs=2`,
`--launcher gpus --launcher-opt gpus=0,1,2,3`, `--launcher torchrun --launcher-opt nproc=4`,
`--launcher slurm --launcher-opt partition=gpu`.
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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import yaml

from .io import write_text
from .registry import Registry

LAUNCHERS = Registry("launcher")

# runner(cmd, log, env, cwd) -> exit code; tests pass a fake one, the default runs a real subprocess.
Runner = Callable[[Sequence[str], Path, "dict | None", "str | None"], int]


@dataclass
class Job:
    """One unit of work: a worker process's Python arguments, where its output goes, and the same work in-process."""

    name: str  # shown in progress lines
    args: list[str]  # after the interpreter: ["-m", "segbench.run", ..., "--only", CELL_ID]
    log: Path
    call: Callable[[], object] | None = None  # the in-process equivalent (the local launcher runs it)
    queue_id_file: Path | None = None  # a launcher that submits to a queue records the job's id here


@dataclass
class Launched:
    """What a launcher knows about one job: its exit code (None: submitted, not waited for)."""

    rc: int | None
    seconds: float = 0.0
    error: str | None = None  # what went wrong when the launcher itself saw it (exception, dead task)
    log: Path | None = None  # where to look; defaults to the job's log
    extra: dict = field(default_factory=dict)  # e.g. {"job_id": ...} from Slurm


def python_command(job: Job) -> list[str]:
    """The job under this interpreter, so workers see the same environment."""
    return [sys.executable, *job.args]


def torchrun_command(job: Job, nproc: int) -> list[str]:
    """The job under `torchrun --standalone` through this interpreter (`-m torch.distributed.run`: no reliance on
    PATH). --standalone picks a free rendezvous port, so several jobs can run side by side on one node."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *job.args]


def run_logged(cmd: Sequence[str], log: Path, env: dict | None = None, cwd: str | None = None) -> int:
    """Run `cmd`, appending its stdout and stderr to `log` (a requeued or resumed attempt keeps the earlier ones)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        f.write(f"=== {stamp} on {platform.node()}: {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode


def last_line(log: Path | None) -> str:
    """The last non-empty line of a log (usually the error), for one-line summaries."""
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return ""
    return lines[-1][:200] if lines else ""


def duration(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`: how progress lines give times."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def time_left(finished: Sequence[float], left: int, at_once: int = 1) -> str:
    """The rough estimate a progress line may honestly give: the cells still to run, at the mean time of the ones
    this run finished (cells of one study are alike), `at_once` side by side; "" when nothing is left."""
    if not left or not finished:
        return ""
    rounds = -(-left // max(1, at_once))
    return f"; about {duration(rounds * sum(finished) / len(finished))} left for {left} more"


def option_keys(launcher: Callable) -> dict[str, str]:
    """`--launcher-opt` key -> the keyword it is passed as. Keys are a launcher's keyword parameters (less the test
    seams `runner` and `executor`) and the fields of its `options` dataclass when it declares one (slurm); a launcher
    may spell a key differently in `option_aliases` (local's `jobs=N` is `jobs_at_once`: `jobs` is the job list)."""
    params = inspect.signature(launcher).parameters.values()
    names = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("runner", "executor")]
    extra = getattr(launcher, "options", None)
    names += [f.name for f in fields(extra)] if extra is not None else []
    spelled = {param: key for key, param in getattr(launcher, "option_aliases", {}).items()}
    return {spelled.get(name, name): name for name in names}


def option_names(launcher: Callable) -> list[str]:
    """The `--launcher-opt` keys a launcher accepts."""
    return list(option_keys(launcher))


def parse_options(pairs: Sequence[str], launcher: Callable) -> dict:
    """`["gpus=0,1", "nproc=4"]` -> keyword options, values parsed as YAML; unknown keys fail with the valid ones."""
    keys = option_keys(launcher)
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"--launcher-opt {pair!r}: expected KEY=VALUE with KEY one of: {', '.join(keys) or 'none'}")
        options[keys[key]] = yaml.safe_load(raw) if raw else None
    return options


def _say(msg: str, lock: threading.Lock | None = None) -> None:
    if lock is None:
        print(msg, file=sys.stderr, flush=True)
        return
    with lock:
        print(msg, file=sys.stderr, flush=True)


# --- worker processes on this machine ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """A place for one worker at a time: the environment it runs with (its GPUs, its threads) and how progress lines
    name it."""

    env: dict
    label: str


def _run_workers(jobs: list[Job], slots: list[Slot], command: Callable[[Job], list[str]],
                 runner: Runner) -> list[Launched]:
    """Each job as a worker process, one per free slot at a time, in order of the list; results in the same order.
    A worker that fails (or cannot start) is announced with its log's last line and path; the others go on."""
    free: queue.Queue = queue.Queue()
    for slot in slots:
        free.put(slot)
    lock = threading.Lock()
    finished: list[float] = []  # seconds of each job done so far, for the time left

    def work(index: int, job: Job) -> Launched:
        slot = free.get()
        try:
            cmd = command(job)
            env = {**os.environ, **slot.env, "PYTHONUNBUFFERED": "1"}
            _say(f"[{index}/{len(jobs)}] {job.name} {slot.label}", lock)
            t0 = time.perf_counter()
            try:
                rc = runner(cmd, job.log, env, os.getcwd())
            except OSError as e:  # the command could not even start
                with open(job.log, "a") as f:
                    f.write(f"could not start {cmd[0]}: {e}\n")
                rc = 127
            seconds = time.perf_counter() - t0
            with lock:
                finished.append(seconds)
                left = len(jobs) - len(finished)
            _say(f"[{index}/{len(jobs)}] {job.name}: exit code {rc} after {seconds:.0f}s"
                 + (f" ({last_line(job.log)}; log: {job.log})" if rc else "")
                 + time_left(finished, left, len(slots)), lock)
            return Launched(rc, seconds)
        finally:
            free.put(slot)

    with ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="segbench-worker") as pool:
        futures = [pool.submit(work, i, job) for i, job in enumerate(jobs, 1)]
        return [f.result() for f in futures]


# --- local -----------------------------------------------------------------------------------------------------------

#: the variables intra-op thread pools read at start-up (torch sizes its pool from OMP_NUM_THREADS, capped at the
#: machine's cores; nothing in segbench calls torch.set_num_threads, so a worker keeps what it is given)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share), else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_slots(workers: int, cores: int) -> list[Slot]:
    """`workers` slots sharing `cores`: each worker gets max(1, cores // workers) intra-op threads, so cells side by
    side do not oversubscribe the machine (a spare core when they do not divide it stays free)."""
    threads = str(max(1, cores // workers))
    label = f"({threads} thread{'s' if threads != '1' else ''})"
    return [Slot({name: threads for name in THREAD_ENV}, label) for _ in range(workers)]


def _jobs_at_once(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--launcher-opt jobs={value!r}: expected a whole number of cells to run at once, at least 1 "
                         "(e.g. jobs=2)")
    return value


@LAUNCHERS.register("local")
def launch_local(jobs: list[Job], workdir: Path | None = None, *, jobs_at_once: int = 1,
                 runner: Runner = run_logged) -> list[Launched]:
    """Run jobs on this machine. `jobs_at_once=1` (`--launcher-opt jobs=1`, the default): one after another in this
    process, a failing job's traceback in its log and the rest going on.

    `jobs_at_once=N>1`: up to N at once, each a worker process (`python -m segbench.run ... --only ID`, output in its
    log), the usable cores split between them through OMP_NUM_THREADS/MKL_NUM_THREADS. Small CPU models gain little
    from a second intra-op thread, so cells side by side finish a study sooner than one cell on every core.
    DataLoader workers are each cell's own `train.workers` (the embedded study uses 0); lower it with
    `--set train.workers=K` when N cells times K workers crowd the cores.
    """
    at_once = _jobs_at_once(jobs_at_once)
    if at_once > 1:
        workers = min(at_once, len(jobs)) or 1
        return _run_workers(jobs, thread_slots(workers, usable_cores()), python_command, runner)
    out = []
    for i, job in enumerate(jobs, 1):
        _say(f"[{i}/{len(jobs)}] {job.name}")
        t0 = time.perf_counter()
        try:
            job.call()
            out.append(Launched(0, time.perf_counter() - t0))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the study
            job.log.parent.mkdir(parents=True, exist_ok=True)
            with open(job.log, "a") as f:
                f.write(traceback.format_exc())
            out.append(Launched(1, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}"))
            _say(f"  FAILED: {type(e).__name__}: {e}\n  (traceback in {job.log})")
        _say(f"[{i}/{len(jobs)}] {job.name}: {'done' if out[-1].rc == 0 else 'failed'} after "
             f"{duration(out[-1].seconds)}" + time_left([o.seconds for o in out], len(jobs) - i))
    return out


launch_local.option_aliases = {"jobs": "jobs_at_once"}


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


def _groups(devices: list[str], per_job: int) -> list[list[str]]:
    if per_job < 1:
        raise ValueError(f"each cell needs at least one GPU, got {per_job}")
    if len(devices) < per_job:
        raise ValueError(f"each cell needs {per_job} GPU(s) but only {len(devices)} are visible ({devices}); "
                         "set CUDA_VISIBLE_DEVICES or --launcher-opt gpus=0,1,...")
    return [devices[i:i + per_job] for i in range(0, len(devices) - per_job + 1, per_job)]


def _launch_on_devices(jobs: list[Job], devices: list[str], per_job: int, use_torchrun: bool,
                       runner: Runner) -> list[Launched]:
    """One worker per device group; each takes the next job with CUDA_VISIBLE_DEVICES set to its group."""
    slots = [Slot({"CUDA_VISIBLE_DEVICES": ",".join(g)}, f"on GPU {','.join(g)}") for g in _groups(devices, per_job)]
    command = (lambda job: torchrun_command(job, per_job)) if use_torchrun else python_command
    return _run_workers(jobs, slots, command, runner)


@LAUNCHERS.register("gpus")
def launch_gpus(jobs: list[Job], workdir: Path | None = None, *, gpus=None, per_cell: int = 1,
                runner: Runner = run_logged) -> list[Launched]:
    """Jobs in parallel, one per visible GPU (or per group of `per_cell` GPUs, each then run under torchrun).

    Each worker is a fresh process with its own CUDA_VISIBLE_DEVICES: no shared CUDA context, and a crash (OOM,
    segfault) takes down one cell only.
    """
    devices = visible_gpus(gpus)
    if not devices:
        raise ValueError("the gpus launcher found no GPU (CUDA_VISIBLE_DEVICES empty, torch sees none); "
                         "use --launcher local, or name devices with --launcher-opt gpus=0,1")
    return _launch_on_devices(jobs, devices, int(per_cell), int(per_cell) > 1, runner)


@LAUNCHERS.register("torchrun")
def launch_torchrun(jobs: list[Job], workdir: Path | None = None, *, nproc=None, gpus=None,
                    runner: Runner = run_logged) -> list[Launched]:
    """Each job on `nproc` GPUs (default: all visible) under `torchrun --standalone`; with more GPUs than `nproc`,
    several jobs run side by side on disjoint groups."""
    devices = visible_gpus(gpus)
    nproc = int(nproc or len(devices))
    if nproc < 1:
        raise ValueError("the torchrun launcher found no GPU; pass --launcher-opt nproc=N and gpus=...")
    return _launch_on_devices(jobs, devices, nproc, True, runner)


# --- Slurm through submitit --------------------------------------------------------------------------------------------

class CellJob:
    """One task of the Slurm job array: run one job's command, append its output to the job's log.

    submitit calls `checkpoint()` when Slurm signals a timeout or preemption and requeues what it returns (this same
    task); the requeued attempt resumes from the cell's own training checkpoints, so nothing else needs saving.
    It returns the exit code instead of raising, so one failed cell is reported, not re-raised into the study.
    """

    def __init__(self, cmd: list[str], log: str, cwd: str, runner: Runner = run_logged):
        self.cmd, self.log, self.cwd, self.runner = list(cmd), str(log), str(cwd), runner

    def __call__(self) -> int:
        return self.runner(self.cmd, Path(self.log), {**os.environ, "PYTHONUNBUFFERED": "1"}, self.cwd)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class SlurmOptions:
    """The Slurm resources of one array task (one cell: one node, all its GPUs; torchrun starts the ranks inside it,
    so Slurm never needs to know about DDP)."""

    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus_per_cell: int = 1
    cpus_per_task: int | None = None  # default: 8 per GPU
    mem_gb: float | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] | None = None  # shell lines run before each task (module load ..., source venv)

    def executor_parameters(self, name: str) -> dict:
        """submitit AutoExecutor parameters."""
        gpus = max(1, int(self.gpus_per_cell))
        params = {"name": name, "timeout_min": int(self.timeout_min), "nodes": 1, "tasks_per_node": 1,
                  "gpus_per_node": int(self.gpus_per_cell), "cpus_per_task": self.cpus_per_task or 8 * gpus,
                  "mem_gb": self.mem_gb, "slurm_partition": self.partition,
                  "slurm_array_parallelism": int(self.array_parallelism), "slurm_account": self.account,
                  "slurm_qos": self.qos, "slurm_constraint": self.constraint,
                  "slurm_setup": list(self.setup) if self.setup else None}
        return {k: v for k, v in params.items() if v is not None}


def slurm_tasks(jobs: list[Job], gpus_per_cell: int = 1, runner: Runner = run_logged) -> list[CellJob]:
    """The job array: each job under torchrun when it takes several GPUs, its log path made absolute."""
    return [CellJob(torchrun_command(job, gpus_per_cell) if gpus_per_cell > 1 else python_command(job),
                    str(Path(job.log).resolve()), os.getcwd(), runner) for job in jobs]


@LAUNCHERS.register("slurm")
def launch_slurm(jobs: list[Job], workdir: Path | None = None, *, wait: bool = True, cluster: str = "slurm",
                 executor=None, runner: Runner = run_logged, **options) -> list[Launched]:
    """Submit the jobs as one Slurm job array (submitit, `pip install segbench[slurm]`); `options` are SlurmOptions.

    wait=True blocks until every task ends; wait=False returns right after submission (rc None; `segbench report`
    shows progress). Timeouts and preemptions are requeued (submitit's checkpoint protocol, up to its
    max_num_timeout). `cluster`/`executor` exist for tests and other submitit back ends ("local", "debug").
    """
    try:
        import submitit
    except ImportError:
        raise ImportError("the slurm launcher needs submitit: pip install 'segbench[slurm]'") from None
    opts = SlurmOptions(**options)
    if not jobs:
        return []
    workdir = Path(workdir or ".")
    tasks = slurm_tasks(jobs, int(opts.gpus_per_cell), runner)
    if executor is None:
        executor = submitit.AutoExecutor(folder=workdir / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**opts.executor_parameters(f"segbench-{workdir.resolve().name}"))
    submitted = executor.submit_array(tasks)
    for job, sub in zip(jobs, submitted):  # at once, not after waiting: a rerun meanwhile must see them queued
        if job.queue_id_file is not None:
            write_text(job.queue_id_file, f"{sub.job_id}\n")
    _say(f"submitted {len(submitted)} cell(s) as job array {submitted[0].job_id.split('_')[0]}; submitit files in "
         f"{workdir / 'slurm'}")
    out = []
    for task, sub in zip(tasks, submitted):
        extra = {"job_id": sub.job_id}
        if not wait:
            out.append(Launched(None, log=Path(task.log), extra=extra))
            continue
        t0 = time.perf_counter()
        try:
            rc = int(sub.result())
        except Exception as e:  # noqa: BLE001 - the task itself died (node failure, too many requeues)
            out.append(Launched(1, time.perf_counter() - t0, error=f"{type(e).__name__}: {e}",
                                log=Path(sub.paths.stderr), extra=extra))
            continue
        out.append(Launched(rc, time.perf_counter() - t0, log=Path(task.log), extra=extra))
    return out


def slurm_active_jobs(job_ids: Sequence[str]) -> set[str]:
    """Which of `job_ids` (array tasks "4242_1" or plain jobs) Slurm still holds, pending or running (squeue).

    When squeue cannot answer (not on the cluster, controller down) none are taken as queued, with a warning: a cell
    submitted twice then finds its lock held and is skipped by the second task."""
    if not job_ids:
        return set()
    cmd = ["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        _say(f"warning: could not ask Slurm which earlier jobs are still queued ({e}); submitting their cells again")
        return set()
    if out.returncode != 0:
        if "invalid job id" not in out.stderr.lower():  # squeue's answer when none of the ids is known any more
            _say(f"warning: {shlex.join(cmd)} failed ({out.stderr.strip()[:200]}); submitting their cells again")
        return set()
    return {line.strip() for line in out.stdout.splitlines()} & set(job_ids)


launch_slurm.options = SlurmOptions
launch_slurm.active_jobs = slurm_active_jobs
