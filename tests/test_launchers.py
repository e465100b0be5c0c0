"""Launchers: one command line per cell, parallel GPU workers (fake devices on CPU), torchrun and Slurm job construction.

Real components where they fit a CPU test: the local launcher runs real cells in-process (one diverging on purpose),
and real `python -m segbench.run` / `torchrun --nproc-per-node 1` workers finish a cell of a tiny YAML dataset.
FakeWorker stands in for the worker only where a real one cannot show the behaviour on 2 CPU cores: cells running
side by side (a barrier), several GPUs per cell, a worker that dies of CUDA OOM, Slurm array tasks.
"""
from __future__ import annotations

import os
import pickle
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from segbench import launchers
from segbench.cells import DONE, RECORD, plan
from segbench.config import EMBEDDED_DEFAULT, load_config
from segbench.io import write_json
from segbench.launchers import LAUNCHERS, Job, parse_options, visible_gpus
from segbench.record import is_done, new_record
from segbench.spec import parse_specs
from segbench.study import cell_argv, run_study, worker_args

ARGV = ["sim->photo", "--backbones", "resnet18", "resnet18_ibn_b", "--seeds", "2", "--results", "R"]


@pytest.fixture
def cells():
    cfg = load_config(EMBEDDED_DEFAULT)
    cfg["seeds"] = [0, 1]
    return plan(cfg, parse_specs(["sim->photo"]), ["resnet18", "resnet18_ibn_b"], ["fcn"])


def launch(name, cells, results_dir, *, argv=ARGV, data_root=None, device=None, **options):
    """The way run.py launches: the study decides the pending cells and judges each one; the launcher only runs jobs."""
    return run_study(cells, results_dir, LAUNCHERS.get(name), options, argv=argv, data_root=data_root, device=device)


def finish(cell, cell_dir: Path) -> None:
    """What a successful worker leaves behind: a record scoring every target and the done marker."""
    write_json(cell_dir / RECORD, {**new_record(cell),
                                   "results": {t: {"eval": cell.eval_identity()} for t in cell.eval_targets}})
    (cell_dir / DONE).touch()


class FakeWorker:
    """Runner double: finishes the cell named by `--only`, or fails the ones in `fail` (with a log line)."""

    def __init__(self, cells, results_dir, fail=(), barrier=None):
        self.by_id = {c.cell_id: c for c in cells}
        self.results_dir, self.fail, self.barrier = Path(results_dir), set(fail), barrier
        self.calls, self.lock = [], threading.Lock()

    def __call__(self, cmd, log, env, cwd):
        cell_id = cmd[cmd.index("--only") + 1]
        with self.lock:
            self.calls.append((cell_id, env.get("CUDA_VISIBLE_DEVICES"), list(cmd)))
        if self.barrier is not None:
            self.barrier.wait(timeout=10)  # BrokenBarrierError unless the workers really run side by side
        if cell_id in self.fail:
            Path(log).write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
            return 1
        cell = self.by_id[cell_id]
        finish(cell, self.results_dir / "cells" / cell.dirname)
        return 0


def test_cell_argv_strips_parent_only_options_and_runs_one_cell_locally():
    argv = ["sim->photo", "--only", "aaa", "bbb", "--launcher", "gpus", "--launcher-opt", "gpus=0,1", "--seeds", "2",
            "--dry-run", "--launcher=slurm", "--set", "train.iters=3"]
    assert cell_argv(argv, "c0ffee") == ["sim->photo", "--seeds", "2", "--set", "train.iters=3",
                                         "--launcher", "local", "--only", "c0ffee"]


def test_an_abbreviated_parent_only_option_is_refused_not_passed_to_workers(capsys):
    """argparse takes `--launcher-op` for `--launcher-opt` by default; cell_argv strips options by full name, so a
    worker would inherit it and launch workers itself. The study refuses abbreviations instead."""
    from segbench import run

    with pytest.raises(SystemExit) as info:
        run.build_parser().parse_args(["sim->photo", "--launcher-op", "jobs=2"])
    assert info.value.code == 2 and "unrecognized arguments: --launcher-op" in capsys.readouterr().err


def test_a_worker_leaves_the_analyses_to_the_study():
    """run.py runs --analyze once, after every cell, over all finished ones; a worker that inherited it would analyse
    its one cell and write the study's shift_*/divergence_* tables from it (Slurm with wait=false: the last task's)."""
    from segbench import run

    argv = ["sim->photo", "--analyze", "shift,divergence", "--analyze-images", "4", "--seeds", "2",
            "--analyze=shift"]
    worker = run.build_parser().parse_args(cell_argv(argv, "c0ffee"))
    assert worker.analyze == "" and worker.analyze_images is None
    assert worker.seeds == 2 and worker.only == ["c0ffee"] and worker.specs == ["sim->photo"]


def test_every_rank_leaves_its_process_group_before_rank_0_reports(tmp_path, monkeypatch):
    """Under torchrun the other ranks return once the cells are done, while rank 0 goes on to the report and
    --analyze, whose scoring all_reduces over the group (engine/scoring.py evaluate): still in the group, rank 0 waits
    on ranks that have exited (gloo: 'Connection closed by peer'; NCCL: a hang). PyTorch asks every process to
    destroy its group at its end (pytorch/pytorch torch/distributed/distributed_c10d.py destroy_process_group).
    A one-process gloo group stands in for torchrun's."""
    import socket

    import torch.distributed as dist

    from segbench import analysis, report, run, study

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                       "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    in_group = {}

    def noting(name, result):
        def call(*args, **kwargs):
            in_group[name] = dist.is_initialized()
            return result
        return call

    monkeypatch.setattr(run, "check_datasets", lambda *a: {})  # nothing here needs the data
    monkeypatch.setattr(study, "run_study", noting("cells", []))
    monkeypatch.setattr(report, "build_report", noting("report", ""))
    monkeypatch.setattr(analysis, "run_analyses", noting("analyses", []))
    try:
        assert run.main(["sim->photo", "--backbones", "resnet18", "--device", "cpu", "--results", str(tmp_path),
                         "--set", "model.pretrained=null", "--analyze", "shift"]) == 0
        assert in_group == {"cells": True, "report": False, "analyses": False}
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_torchrun_command_uses_this_interpreter_and_standalone_rendezvous(tmp_path):
    job = Job("cell", worker_args(["sim->photo"], "abc"), tmp_path / "launcher.log")
    assert launchers.python_command(job) == [sys.executable, "-m", "segbench.run", "sim->photo", "--launcher", "local",
                                             "--only", "abc"]
    cmd = launchers.torchrun_command(job, 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:6] == ["--standalone", "--nproc-per-node", "4"]
    assert cmd[6:9] == ["-m", "segbench.run", "sim->photo"] and cmd[-2:] == ["--only", "abc"]


def test_a_launcher_is_a_function_of_jobs_and_only_launches(tmp_path, capsys):
    """The local launcher runs each job's in-process call, in order, keeps going after a failure (traceback in the
    job's log) and reports exit codes; it decides nothing about cells (no done check, no record reading)."""
    ran = []

    def fail():
        raise RuntimeError("boom")

    jobs = [Job("a", [], tmp_path / "a.log", call=lambda: ran.append("a")), Job("b", [], tmp_path / "b.log", call=fail),
            Job("c", [], tmp_path / "c.log", call=lambda: ran.append("c"))]
    out = LAUNCHERS.get("local")(jobs, tmp_path)
    assert ran == ["a", "c"] and [o.rc for o in out] == [0, 1, 0]
    assert out[1].error == "RuntimeError: boom" and "RuntimeError: boom" in (tmp_path / "b.log").read_text()
    assert not (tmp_path / "a.log").exists()
    assert "FAILED: RuntimeError: boom" in capsys.readouterr().err


def test_visible_gpus_explicit_env_and_count(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == ["2", "3"]
    assert visible_gpus("0,1") == ["0", "1"] and visible_gpus([4, 5]) == ["4", "5"] and visible_gpus(3) == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_gpus_launcher_runs_one_cell_per_device_in_parallel_and_survives_a_failure(cells, tmp_path, capsys):
    bad = cells[1].cell_id
    # fake workers: the barrier proves two run at once, which real workers on 2 cores could not show in seconds
    worker = FakeWorker(cells, tmp_path, fail={bad}, barrier=threading.Barrier(2))
    outcomes = launch("gpus", cells, tmp_path, gpus="0,1", runner=worker)
    assert [o.cell for o in outcomes] == cells
    assert sorted(c[0] for c in worker.calls) == sorted(c.cell_id for c in cells)  # each cell exactly once
    assert {c[1] for c in worker.calls} == {"0", "1"}  # one device each, both used
    for cell_id, _, cmd in worker.calls:
        assert cmd[:3] == [sys.executable, "-m", "segbench.run"] and cmd[-4:] == ["--launcher", "local", "--only", cell_id]
    status = {o.cell.cell_id: o for o in outcomes}
    assert status[bad].status == "failed" and "exit code 1" in status[bad].error and "out of memory" in status[bad].error
    assert status[bad].log == tmp_path / "cells" / cells[1].dirname / "launcher.log"
    assert [o.status for o in outcomes if o.cell.cell_id != bad] == ["done"] * 3
    assert "out of memory" in capsys.readouterr().err  # the failure is announced as it happens


def test_gpus_launcher_skips_done_cells_and_flags_a_worker_that_left_no_record(cells, tmp_path):
    finish(cells[0], tmp_path / "cells" / cells[0].dirname)
    silent = lambda cmd, log, env, cwd: 0  # noqa: E731 - exits 0 without finishing its cell
    outcomes = launch("gpus", cells[:2], tmp_path, argv=ARGV, gpus=["7"], runner=silent)
    assert [o.status for o in outcomes] == ["skipped", "failed"]
    assert "not done" in outcomes[1].error


def test_gpus_per_cell_groups_run_under_torchrun(cells, tmp_path):
    # fake workers: real ones would be 2-rank torchrun groups, two groups at once (4 processes on 2 cores)
    worker = FakeWorker(cells, tmp_path)
    outcomes = launch("gpus", cells, tmp_path, argv=ARGV, gpus="0,1,2,3,4", per_cell=2, runner=worker)
    assert all(o.status == "done" for o in outcomes)
    assert {c[1] for c in worker.calls} <= {"0,1", "2,3"}  # the odd fifth GPU idles; groups never overlap
    assert all(c[2][2] == "torch.distributed.run" and "2" in c[2] for c in worker.calls)


def test_torchrun_launcher_takes_all_visible_gpus_by_default(cells, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    # fake worker: a real one would start 3 gloo ranks on 2 cores; only the rank count is under test here
    # (a real 1-rank torchrun worker: test_torchrun_launcher_with_a_real_worker_on_cpu)
    worker = FakeWorker(cells[:1], tmp_path)
    (out,) = launch("torchrun", cells[:1], tmp_path, argv=ARGV, runner=worker)
    assert out.status == "done"
    (_, devices, cmd), = worker.calls
    assert devices == "0,1,2" and cmd[cmd.index("--nproc-per-node") + 1] == "3"


def test_launchers_fail_clearly_without_gpus(cells, tmp_path):
    with pytest.raises(ValueError, match="no GPU"):
        launchers.launch_gpus([], gpus="")
    with pytest.raises(ValueError, match="needs 4 GPU"):
        launchers.launch_torchrun([], gpus="0,1", nproc=4)


def test_parse_options_reads_yaml_values_and_rejects_unknown_keys():
    assert parse_options(["gpus=0,1", "per_cell=2"], launchers.launch_gpus) == {"gpus": "0,1", "per_cell": 2}
    assert parse_options(["gpus=[0, 1]"], launchers.launch_gpus) == {"gpus": [0, 1]}
    with pytest.raises(ValueError, match="nproc"):
        parse_options(["nprocs=2"], launchers.launch_torchrun)
    with pytest.raises(ValueError, match="partition"):
        parse_options(["gpus"], launchers.launch_slurm)


# --- real workers ----------------------------------------------------------------------------------------------------

def _tiny_yaml_dataset(root: Path) -> None:
    """Four train and two val 32x64 images in a YAML-declared dataset, so a real worker trains and scores in seconds."""
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for d in ("images", "labels"):
            (root / "tiny" / d / split).mkdir(parents=True)
        for i in range(n):
            label = np.repeat(np.arange(4, dtype=np.uint8)[:, None] * [2, 5, 8, 10][i % 4] % 19, 8, 0)
            label = np.repeat(label, 64, 1)
            cv2.imwrite(str(root / "tiny/images" / split / f"{i}.png"), rng.integers(0, 255, (32, 64, 3), np.uint8))
            cv2.imwrite(str(root / "tiny/labels" / split / f"{i}.png"), label)
    (root / "tiny.yaml").write_text("segbench_dataset: 1\nname: tiny\nsplits: [train, val]\n"
                                    "images: {dir: 'images/{split}', suffix: .png}\n"
                                    "labels: {dir: 'labels/{split}', suffix: .png}\nencoding: trainid\n")


def _tiny_study(tmp_path: Path, *extra: str):
    """The study's command line on the tiny dataset (CPU, resnet18, from scratch), its planned cells, its results."""
    from segbench import run

    _tiny_yaml_dataset(tmp_path / "data")
    argv = ["tiny->tiny", "--backbones", "resnet18", "--name", "t", "--device", "cpu",
            "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "results"),
            "--set", "train.iters=1", "--set", "train.batch_size=2", "--set", "train.crop=[32,64]",
            "--set", "train.workers=0", "--set", "model.pretrained=null", "--set", "eval.workers=0", *extra]
    cfg = run.resolve_config(run.build_parser().parse_args(argv))
    return argv, plan(cfg, parse_specs(cfg["specs"]), ["resnet18"], cfg["heads"]), tmp_path / "results" / "t"


@pytest.mark.slow
def test_local_launcher_logs_a_failing_cell_and_runs_the_next(tmp_path, one_thread, capsys):
    """A cell whose training really diverges (lr 1e30: NaN loss, NonFiniteLoss) is reported failed with its
    traceback in its launcher.log, and the cell after it still trains and finishes."""
    import torch

    _, (bad, good), results = _tiny_study(tmp_path, "--seeds", "2", "--set", "train.iters=2")
    bad.train["lr"] = 1e30  # the NaN shows at the second iteration's loss
    outcomes = launch("local", [bad, good], results, data_root=str(tmp_path / "data"),
                                      device=torch.device("cpu"))
    assert [o.cell for o in outcomes] == [bad, good]
    assert [o.status for o in outcomes] == ["failed", "done"]
    failed = outcomes[0]
    assert failed.error.startswith("NonFiniteLoss: ") and failed.log == bad.directory(results) / "launcher.log"
    trace = failed.log.read_text()
    assert trace.startswith("Traceback (most recent call last)") and "NonFiniteLoss" in trace
    assert not is_done(bad, bad.directory(results)) and not (bad.directory(results) / "model_final.pt").exists()
    assert is_done(good, good.directory(results))
    assert "FAILED: NonFiniteLoss" in capsys.readouterr().err  # announced as it happens


@pytest.mark.slow
def test_gpus_launcher_with_real_workers_on_cpu(tmp_path, monkeypatch):
    """A real `python -m segbench.run ... --only ID` worker on a fake device with --device cpu: the narrowed command
    line parses, plans the same cell and finishes it (one cell only: each worker pays the torch import)."""
    argv, cells_, results = _tiny_study(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    outcomes = launch("gpus", cells_, results, argv=argv, gpus="fake0")
    assert len(outcomes) == 1
    for o in outcomes:
        assert o.status == "done", (o.error, o.log.read_text() if o.log else "")
        assert is_done(o.cell, o.cell_dir)
        assert o.log.read_text().startswith("=== ")  # the worker's output, after a header naming its command


@pytest.mark.slow
def test_torchrun_launcher_with_a_real_worker_on_cpu(tmp_path, monkeypatch):
    """A real `torchrun --standalone --nproc-per-node 1 -m segbench.run ... --only ID`: nproc comes from the one
    (fake) visible device, the worker joins a gloo process group (no CUDA: --device cpu) and finishes the cell."""
    argv, cells_, results = _tiny_study(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "fake0")
    (out,) = launch("torchrun", cells_, results, argv=argv)
    log = out.log.read_text()
    assert out.status == "done", (out.error, log)
    assert is_done(out.cell, out.cell_dir)
    assert "-m torch.distributed.run --standalone --nproc-per-node 1 -m segbench.run" in log.splitlines()[0]


# --- Slurm (submitit), no cluster ----------------------------------------------------------------------------------

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` that records the script and answers like Slurm; `srun` only has to exist for submitit to pick Slurm."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_array_is_built_from_the_pending_cells(cells, tmp_path, fake_slurm):
    results = tmp_path / "results"
    finish(cells[0], results / "cells" / cells[0].dirname)
    outcomes = launch("slurm", cells, results, argv=ARGV, partition="gpu", gpus_per_cell=2, timeout_min=90,
                                      account="proj", wait=False)
    assert [o.status for o in outcomes] == ["skipped", "submitted", "submitted", "submitted"]
    assert [o.extra["job_id"] for o in outcomes[1:]] == ["4242_0", "4242_1", "4242_2"]
    script = fake_slurm.read_text()
    for flag in ("--array=0-2%3", "--partition=gpu", "--gpus-per-node=2", "--time=90", "--account=proj",
                 "--ntasks-per-node=1", "--cpus-per-task=16", "--signal=USR2@"):
        assert f"#SBATCH {flag}" in script, flag
    # the pickled array tasks are CellJobs running each pending cell under torchrun on its 2 GPUs
    pickles = sorted((results / "slurm").glob("*/*_submitted.pkl"))
    assert len(pickles) == 3
    jobs = [pickle.loads(p.read_bytes()).function for p in pickles]
    assert sorted(j.cmd[-1] for j in jobs) == sorted(c.cell_id for c in cells[1:])
    for job in jobs:
        assert job.cmd[2] == "torch.distributed.run" and job.cmd[job.cmd.index("--nproc-per-node") + 1] == "2"
        assert Path(job.log).name == "launcher.log" and Path(job.log).is_absolute()
        resubmit = job.checkpoint()  # what submitit requeues on timeout or preemption: the same task
        assert resubmit.function is job


def test_slurm_tasks_run_and_failures_are_reported(cells, tmp_path):
    submitit = pytest.importorskip("submitit")
    # fake workers: four real cells would cost a torch import and a training each; the array bookkeeping is under test
    worker = FakeWorker(cells, tmp_path, fail={cells[2].cell_id})
    executor = submitit.AutoExecutor(folder=tmp_path / "slurm", cluster="debug")
    outcomes = launch("slurm", cells, tmp_path, argv=ARGV, partition="gpu", executor=executor, runner=worker)
    assert [o.status for o in outcomes] == ["done", "done", "failed", "done"]
    assert "out of memory" in outcomes[2].error and outcomes[2].log.name == "launcher.log"
    assert all(cmd[:3] == [sys.executable, "-m", "segbench.run"] for _, _, cmd in worker.calls)


# --- local launcher, several cells at once (--launcher-opt jobs=N) --------------------------------------------------

# A worker that leaves its marker, then waits up to 20 s for its partner's: it exits 0 only when both run side by side.
MEET = ("import pathlib, sys, time\n"
        "mine, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])\n"
        "mine.touch()\n"
        "deadline = time.monotonic() + 20\n"
        "while not other.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('met' if other.exists() else 'alone')\n"
        "sys.exit(0 if other.exists() else 1)\n")


def _worker_job(tmp_path: Path, name: str, code: str, *argv: str) -> Job:
    """A job whose worker is `python -c CODE ARGV...`; `call` fails the test if the launcher runs it in-process."""
    def in_process():
        raise AssertionError(f"{name} ran in-process; a worker process was expected")

    return Job(name, ["-c", code, *argv], tmp_path / name / "launcher.log", call=in_process)


def test_local_jobs_option_is_spelled_jobs_and_checked():
    local = launchers.launch_local
    assert launchers.option_names(local) == ["jobs"]
    assert parse_options(["jobs=2"], local) == {"jobs_at_once": 2}
    with pytest.raises(ValueError, match="one of: jobs$"):
        parse_options(["jobs_at_once=2"], local)  # the keyword is not a command-line spelling
    for bad in ("two", 0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"jobs=.*at least 1"):
            local([], jobs_at_once=bad)


def test_run_command_line_accepts_launcher_opt_jobs(tmp_path, capsys):
    from segbench import run

    base = ["sim->photo", "--backbones", "resnet18", "--seeds", "1", "--results", str(tmp_path), "--dry-run"]
    assert run.main([*base, "--launcher-opt", "jobs=2"]) == 0
    assert "--launcher-opt" not in capsys.readouterr().out  # a worker never inherits it (it runs in-process)
    assert run.main([*base, "--launcher-opt", "job=2"]) != 0
    assert "KEY one of: jobs" in capsys.readouterr().err


def test_thread_slots_split_the_cores():
    assert [s.env for s in launchers.thread_slots(2, 8)] == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2
    assert {s.env["OMP_NUM_THREADS"] for s in launchers.thread_slots(3, 8)} == {"2"}  # 8 // 3: a core stays free
    assert {s.env["OMP_NUM_THREADS"] for s in launchers.thread_slots(4, 2)} == {"1"}  # never below one thread
    assert len(launchers.thread_slots(3, 8)) == 3


def test_local_jobs_2_runs_two_worker_processes_side_by_side(tmp_path, capsys):
    a, b = tmp_path / "a.marker", tmp_path / "b.marker"
    jobs = [_worker_job(tmp_path, "a", MEET, str(a), str(b)), _worker_job(tmp_path, "b", MEET, str(b), str(a))]
    out = launchers.launch_local(jobs, tmp_path, jobs_at_once=2)
    assert [o.rc for o in out] == [0, 0], [j.log.read_text() for j in jobs]
    for job in jobs:
        log = job.log.read_text()
        assert log.startswith("=== ") and f"{sys.executable} -c" in log.splitlines()[0]  # run_logged's header
        assert log.splitlines()[-1] == "met"
    err = capsys.readouterr().err
    assert "[1/2] a (" in err and "[2/2] b (" in err and "b: exit code 0" in err


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch caps its threads at the cores it sees")
@pytest.mark.parametrize("at_once, cores, parent_threads", [(2, 2, "2"), (3, 6, "1")])
def test_local_jobs_n_gives_each_worker_its_share_of_threads(tmp_path, monkeypatch, at_once, cores, parent_threads):
    """torch in the worker really starts with cores // N threads, whatever OMP_NUM_THREADS the parent had (torch caps
    the count at the machine's cores, so the shares tested stay within two)."""
    monkeypatch.setattr(launchers, "usable_cores", lambda: cores)
    monkeypatch.setenv("OMP_NUM_THREADS", parent_threads)
    monkeypatch.setenv("MKL_NUM_THREADS", parent_threads)
    show = "import os, torch; print(torch.get_num_threads(), os.environ['MKL_NUM_THREADS'])"
    jobs = [_worker_job(tmp_path, f"t{i}", show) for i in range(at_once)]
    out = launchers.launch_local(jobs, tmp_path, jobs_at_once=at_once)
    assert [o.rc for o in out] == [0] * at_once, [j.log.read_text() for j in jobs]
    share = {2: "1", 3: "2"}[at_once]  # 2 // 2 and 6 // 3
    assert [j.log.read_text().splitlines()[-1] for j in jobs] == [f"{share} {share}"] * at_once


def test_local_jobs_2_reports_a_failing_worker_and_runs_the_others(tmp_path, capsys):
    ok = "print('fine')"
    bad = "import sys; print('step 3: ValueError: bad batch'); sys.exit(3)"
    jobs = [_worker_job(tmp_path, "a", ok), _worker_job(tmp_path, "b", bad), _worker_job(tmp_path, "c", ok),
            _worker_job(tmp_path, "d", ok)]
    out = launchers.launch_local(jobs, tmp_path, jobs_at_once=2)
    assert [o.rc for o in out] == [0, 3, 0, 0]  # in job order, whichever finished first
    assert all(j.log.read_text().splitlines()[-1] == "fine" for j in jobs if j.name != "b")
    err = capsys.readouterr().err
    assert "b: exit code 3 after" in err and f"(step 3: ValueError: bad batch; log: {jobs[1].log})" in err
    assert "a: exit code 0" in err and "log:" not in err.split("a: exit code 0")[1].splitlines()[0]


def test_local_jobs_1_stays_in_process(tmp_path):
    def no_worker(cmd, log, env, cwd):
        raise AssertionError("jobs=1 must not start a worker process")

    ran = []
    jobs = [Job(n, ["-c", "pass"], tmp_path / f"{n}.log", call=lambda n=n: ran.append((n, os.getpid())))
            for n in "ab"]
    out = launchers.launch_local(jobs, tmp_path, jobs_at_once=1, runner=no_worker)
    assert [o.rc for o in out] == [0, 0] and ran == [("a", os.getpid()), ("b", os.getpid())]


def test_study_with_local_jobs_2_runs_cells_as_workers(cells, tmp_path, monkeypatch):
    """Through the study: each pending cell is `python -m segbench.run ... --launcher local --only ID` with the thread
    share in its environment, two at once (the barrier), and judged done from what it left."""
    monkeypatch.setattr(launchers, "usable_cores", lambda: 6)
    envs = []

    class Recording(FakeWorker):
        def __call__(self, cmd, log, env, cwd):
            with self.lock:
                envs.append((env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]))
            return super().__call__(cmd, log, env, cwd)

    worker = Recording(cells, tmp_path, barrier=threading.Barrier(2))
    outcomes = launch("local", cells, tmp_path, jobs_at_once=2, runner=worker)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert sorted(c[0] for c in worker.calls) == sorted(c.cell_id for c in cells)
    for cell_id, _, cmd in worker.calls:
        assert cmd[:3] == [sys.executable, "-m", "segbench.run"] and cmd[-4:] == ["--launcher", "local", "--only", cell_id]
        assert "--launcher-opt" not in cmd
    assert envs == [("3", "3")] * 4



@pytest.mark.slow
def test_local_jobs_2_with_real_workers_on_cpu(tmp_path, monkeypatch):
    """Two real cells as `python -m segbench.run ... --only ID` workers side by side, each on its thread share: both
    train, score and are judged done, each worker's output in its own launcher.log."""
    argv, cells_, results = _tiny_study(tmp_path, "--seeds", "2")
    monkeypatch.setattr(launchers, "usable_cores", lambda: 2)
    outcomes = launch("local", cells_, results, argv=argv, jobs_at_once=2)
    assert len(outcomes) == 2
    for o in outcomes:
        assert o.status == "done", (o.error, o.log.read_text() if o.log else "")
        assert is_done(o.cell, o.cell_dir) and o.log.read_text().startswith("=== ")


# --- data that workers started together share ------------------------------------------------------------------------

GENERATE = ("import pathlib, sys, time\n"
            "from segbench.data.adapters.synthetic import ensure_generated\n"
            "pathlib.Path(sys.argv[2]).touch()\n"
            "while not pathlib.Path(sys.argv[3]).exists():\n"
            "    time.sleep(0.001)\n"
            "print(ensure_generated(pathlib.Path(sys.argv[1]), 'sim'))\n")


def test_two_processes_generating_one_domain_at_once_build_it_once(tmp_path):
    """Two workers of a study started together both find the embedded domain missing: one generates it, the other
    waits for the lock and finds it current (unlocked, both would build it and one would move the other's tree away)."""
    import json
    import subprocess

    from segbench.data.adapters.synthetic import SIZES_ENV

    root = tmp_path / "synthetic" / "sim"
    env = {**os.environ, SIZES_ENV: "train=12,val=4", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", GENERATE, str(root), str(tmp_path / f"ready{i}"), str(go)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        for i in range(2):
            deadline = time.monotonic() + 60
            while not (tmp_path / f"ready{i}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        go.touch()  # both imported and waiting: released together
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o.strip().splitlines()[-1] for o in outs) == ["False", "True"]
    sizes = {"train": 12, "val": 4}
    for split, n in sizes.items():
        assert len(list((root / "images" / split).glob("*.png"))) == n
        assert len(list((root / "labels" / split).glob("*.png"))) == n
    assert json.loads((root / "meta.json").read_text())["splits"] == sizes
    assert sorted(p.name for p in root.parent.iterdir()) == [".sim.lock", "sim"]  # no temp trees left behind


def test_progress_lines_give_each_cell_its_time_and_the_time_left(tmp_path, capsys):
    """After each cell, how long it took and, from the mean of the cells done so far, roughly how long the rest
    will take: an estimate made from measured cells, not promised before any ran."""
    jobs = [Job(name, [], tmp_path / f"{name}.log", call=lambda: None) for name in ("a", "b", "c")]
    assert [r.rc for r in launchers.launch_local(jobs)] == [0, 0, 0]
    err = capsys.readouterr().err
    assert "[1/3] a: done after 0 s; about 0 s left for 2 more" in err
    assert "[3/3] c: done after 0 s\n" in err
    assert launchers.time_left([10.0, 20.0], 3) == "; about 45 s left for 3 more"
    assert launchers.time_left([100.0], 3, at_once=2) == "; about 3 min 20 s left for 3 more"
    assert launchers.duration(7500) == "2 h 05 min" and launchers.time_left([5.0], 0) == ""
