"""Faults a study must survive with a clear message and nothing lost: a damaged checkpoint, a full disk, a read-only
results directory, two runners on one cell (locks, Slurm jobs still queued), a resume that would repeat log rows.

Disk-full and read-only are simulated (the writer or the permission check monkeypatched): tests run as root here,
and root ignores permissions; the real chmod test runs only for other users.
"""
from __future__ import annotations

import csv
import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segbench import evaluate as evaluate_cli
from segbench import io as io_mod
from segbench import network, pipeline
from segbench import study as study_mod
from segbench.cells import CHECKPOINTS, DONE, FINAL_WEIGHTS, LOCK, RECORD, SLURM_JOB, plan
from segbench.config import EMBEDDED_DEFAULT, TrainSettings, load_config
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.engine import train as train_mod
from segbench.engine.checkpoint import CheckpointError, DamagedCheckpoint, checkpoint_path, list_checkpoints, \
    load_checkpoint
from segbench.io import DiskFullError, NotWritableError, remove_stale_temp_files, save_torch, write_text
from segbench.launchers import LAUNCHERS
from segbench.lock import CellBusy, cell_lock, lock_holder
from segbench.network import load_trained_model
from segbench.record import new_record, write_record
from segbench.spec import parse_specs
from segbench.study import run_study
from tiny_models import PixelModel

ENFORCE_FAIL = "[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662"


@pytest.fixture
def tiny_sim(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 4, "val": 1})
    return tmp_path / "data"


def _train(tmp_path, data_root, model=None, iters=4, ckpt_every=2):
    ds = build_dataset("sim", "train", root=data_root)
    settings = TrainSettings(iters=iters, batch_size=2, workers=0, ckpt_every=ckpt_every, keep_ckpts=5)
    torch.manual_seed(0)
    return train_mod.train(model or PixelModel(), ds, build_train_transform((32, 32), (0.5, 1.0)), settings, seed=0,
                           device=torch.device("cpu"), ckpt_dir=tmp_path / "ckpt", identity={"a": 1},
                           log_path=tmp_path / "train_log.csv")


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _temp_files(root: Path) -> list[Path]:
    return list(root.rglob("*.tmp"))


# -- 4. damaged checkpoints ------------------------------------------------------------------------------------------

def test_a_truncated_newest_checkpoint_is_set_aside_and_training_resumes_from_the_one_before(tmp_path, tiny_sim):
    _train(tmp_path, tiny_sim)
    ckpt = tmp_path / "ckpt"
    assert [it for it, _ in list_checkpoints(ckpt)] == [2, 4]
    _truncate(ckpt / "iter_0000004.pt")
    with pytest.warns(UserWarning, match=r"iter_0000004\.pt.*damaged") as caught:
        stats = _train(tmp_path, tiny_sim)
    assert "iter_0000004.pt.damaged" in str(caught[0].message)
    assert stats["resumed_from"] == 2
    assert (ckpt / "iter_0000004.pt.damaged").stat().st_size == 100  # kept, not deleted
    assert load_checkpoint(ckpt / "iter_0000004.pt")["iteration"] == 4  # written again by the resumed run


def test_every_checkpoint_damaged_means_training_from_the_start(tmp_path, tiny_sim):
    _train(tmp_path, tiny_sim)
    for _, path in list_checkpoints(tmp_path / "ckpt"):
        _truncate(path, 0)
    with pytest.warns(UserWarning, match="damaged"):
        assert _train(tmp_path, tiny_sim)["resumed_from"] == 0


def test_load_checkpoint_names_a_truncated_file(tmp_path):
    path = tmp_path / "iter_0000004.pt"
    save_torch(path, {"w": torch.zeros(1000)})
    for keep in (0, 10, 100):
        _truncate(path, keep)
        with pytest.raises(DamagedCheckpoint, match=r"iter_0000004\.pt.*(truncated|damaged)"):
            load_checkpoint(path)


def _finished_cell(tmp_path: Path):
    """A cell directory as a finished run leaves it (record scoring every target, done marker), with PixelModel
    weights: enough for the paths that only load weights and take the cell's lock."""
    cfg = load_config(EMBEDDED_DEFAULT)
    (cell,) = plan(cfg, parse_specs(["sim->sim"]), ["resnet18"], ["fcn"])[:1]
    cell_dir = cell.directory(tmp_path / "results")
    cell_dir.mkdir(parents=True)
    record = new_record(cell)
    record["results"] = {t: {"miou": 50.0, "eval": cell.eval_identity()} for t in cell.eval_targets}
    write_record(cell_dir, record)
    save_torch(cell_dir / FINAL_WEIGHTS, PixelModel().state_dict())
    (cell_dir / DONE).touch()
    return cell, cell_dir


def test_a_truncated_model_final_given_to_evaluate_is_named(tmp_path, capsys):
    cell, cell_dir = _finished_cell(tmp_path)
    save_torch(cell_dir / FINAL_WEIGHTS, {"w": torch.zeros(1000)})
    _truncate(cell_dir / FINAL_WEIGHTS)
    with pytest.raises(CheckpointError, match=r"model_final\.pt.*(truncated|damaged)"):
        load_trained_model(cell_dir)
    code = evaluate_cli.main([str(cell_dir), "--dataset", "sim", "--data-root", str(tmp_path / "data")])
    assert code == 2 and str(cell_dir / FINAL_WEIGHTS) in capsys.readouterr().err


# -- 5. disk full ----------------------------------------------------------------------------------------------------

def _full_disk(monkeypatch):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(io_mod.shutil, "disk_usage", lambda p: type(usage)(usage.total, usage.total, 0))


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError(ENFORCE_FAIL)],
                         ids=["ENOSPC", "torch-enforce-fail"])
def test_disk_full_names_the_device_and_file_and_leaves_no_temp_file(tmp_path, monkeypatch, error):
    target = tmp_path / "ckpt" / "iter_0000004.pt"
    save_torch(target, {"good": 1})
    _full_disk(monkeypatch)

    def write_half_then_fail(obj, f):
        f.write(b"x" * 1000)
        raise error

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(DiskFullError, match=r"no space left on .* while writing .*iter_0000004\.pt") as info:
        save_torch(target, {"new": 2})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(target) == {"good": 1}
    assert _temp_files(tmp_path) == []


def test_a_torch_write_error_with_space_left_is_not_called_disk_full(tmp_path, monkeypatch):
    def fail(obj, f):
        raise RuntimeError(ENFORCE_FAIL)

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="enforce fail") as info:
        save_torch(tmp_path / "x.pt", {})
    assert not isinstance(info.value, DiskFullError)
    assert _temp_files(tmp_path) == []


def test_disk_full_during_training_keeps_the_last_good_checkpoint(tmp_path, tiny_sim, monkeypatch):
    real_save = torch.save

    def full_at_iteration_4(obj, f):
        if isinstance(obj, dict) and obj.get("iteration") == 4:
            _full_disk(monkeypatch)
            raise RuntimeError(ENFORCE_FAIL)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", full_at_iteration_4)
    with pytest.raises(DiskFullError, match=r"while writing .*iter_0000004\.pt"):
        _train(tmp_path, tiny_sim)
    monkeypatch.undo()
    (it, path), = list_checkpoints(tmp_path / "ckpt")
    assert it == 2 and load_checkpoint(path)["iteration"] == 2
    assert _temp_files(tmp_path) == []


def test_stale_temp_files_of_the_atomic_writer_are_removed(tmp_path):
    stale = [tmp_path / ".iter_0000004.pt.k3j_9x2a.tmp", tmp_path / "sub" / ".record.json.abcdefgh.tmp"]
    others = [tmp_path / ".notes.tmp", tmp_path / "iter_0000002.pt", tmp_path / "sub" / "keep.abcdefgh.tmp"]
    for p in stale + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in others) and not any(p.exists() for p in stale)


@pytest.fixture
def tiny_model(monkeypatch):
    """run_cell builds PixelModel instead of a ResNet: the cell paths under test only load and save weights."""
    monkeypatch.setattr(network, "create_model", lambda *a, **k: PixelModel())


def test_starting_a_cell_removes_temp_files_a_killed_save_left(tmp_path, tiny_model):
    cell, cell_dir = _finished_cell(tmp_path)
    orphan = cell_dir / CHECKPOINTS / ".iter_0000004.pt.k3j_9x2a.tmp"
    orphan.parent.mkdir()
    orphan.write_bytes(b"x" * 4096)
    pipeline.run_cell(cell, cell_dir, device=torch.device("cpu"))
    assert _temp_files(tmp_path) == []


def test_a_damaged_model_final_is_set_aside_and_rebuilt_from_the_last_checkpoint(tmp_path, tiny_model, tiny_sim):
    cell, cell_dir = _finished_cell(tmp_path)
    model = PixelModel()
    weights = model.state_dict()
    iters = int(cell.train["iters"])
    save_torch(checkpoint_path(cell_dir / CHECKPOINTS, iters), {
        "iteration": iters, "identity": cell.training_identity(), "model": weights,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "rng_cpu": torch.get_rng_state()})
    _truncate(cell_dir / FINAL_WEIGHTS)
    with pytest.warns(UserWarning, match=r"model_final\.pt.*damaged"):
        pipeline.run_cell(cell, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    assert (cell_dir / (FINAL_WEIGHTS + ".damaged")).is_file()
    loaded = load_checkpoint(cell_dir / FINAL_WEIGHTS)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


@pytest.mark.parametrize("rescored_flip", [False, True], ids=["same-eval", "other-eval"])
def test_a_cell_killed_while_scoring_keeps_its_training_statistics_and_curves(tmp_path, tiny_model, tiny_sim,
                                                                              monkeypatch, rescored_flip):
    """Scoring after training can outlast many iterations (a full-size test set), and a kill there leaves
    model_final.pt, so the rerun only scores. Its record must still carry what training measured: the statistics and
    the eval.every curves that --select needs (report/selection.py), as an uninterrupted run's record does; unless
    the rerun scores under other eval settings, which the curves no longer describe."""
    import dataclasses
    import json

    cfg = load_config(EMBEDDED_DEFAULT)
    cfg["train"].update(iters=2, batch_size=2, workers=0, ckpt_every=1, crop=[32, 32])
    cfg["model"]["pretrained"] = None
    cfg["eval"].update(every=1, workers=0)
    cfg["seeds"] = [0]
    (cell,) = plan(cfg, parse_specs(["sim->sim"]), ["resnet18"], ["fcn"])
    cell_dir = cell.directory(tmp_path / "results")
    scoring = pipeline.evaluate

    def killed_in_final_scoring(*args, **kwargs):
        if kwargs.get("dump_dir") is not None:  # the final scoring; periodic scoring writes no predictions
            raise KeyboardInterrupt("killed")
        return scoring(*args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate", killed_in_final_scoring)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_cell(cell, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    assert (cell_dir / FINAL_WEIGHTS).is_file() and not (cell_dir / DONE).exists()
    monkeypatch.setattr(pipeline, "evaluate", scoring)
    rerun = dataclasses.replace(cell, eval={**cell.eval, "flip": rescored_flip})
    assert rerun.cell_id == cell.cell_id
    pipeline.run_cell(rerun, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    record = json.loads((cell_dir / RECORD).read_text())
    assert record["results"]["sim"]["eval"]["flip"] is rescored_flip
    assert record["training"]["resumed_from"] == 0 and record["training"]["train_seconds"] > 0
    if rescored_flip:
        assert "sim" not in record.get("curves", {})
    else:
        assert [it for it, _ in record["curves"]["sim"]] == [1, 2]
        assert record["curves"]["sim"][-1][1] == record["results"]["sim"]["miou"]  # same weights, same scoring


# -- 6. read-only results ------------------------------------------------------------------------------------------

def _cells(n_seeds=1):
    cfg = load_config(EMBEDDED_DEFAULT)
    cfg["seeds"] = list(range(n_seeds))
    return plan(cfg, parse_specs(["sim->photo"]), ["resnet18"], ["fcn"])


def _never_called(jobs, workdir, **options):
    raise AssertionError("the launcher must not be reached")


def _read_only(monkeypatch, root: Path):
    real = os.access
    monkeypatch.setattr(io_mod.os, "access",
                        lambda p, mode, **k: False if Path(p).is_relative_to(root) else real(p, mode, **k))


def test_a_read_only_results_directory_is_refused_before_any_work(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    _read_only(monkeypatch, results)
    with pytest.raises(NotWritableError, match=rf"{results}.*not writable"):
        run_study(_cells(), results / "study", _never_called)
    assert not (results / "study").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_results_directory_is_refused_for_real(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o555)
    try:
        with pytest.raises(NotWritableError, match=str(results)):
            run_study(_cells(), results / "study", _never_called)
    finally:
        results.chmod(0o755)


def test_writing_a_report_into_a_read_only_directory_names_it(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", refuse)
    with pytest.raises(NotWritableError, match=rf"cannot write {tmp_path / 'table.md'}: {tmp_path} is not writable"):
        write_text(tmp_path / "table.md", "| a |\n")


def test_run_and_report_on_a_read_only_results_directory_end_in_one_message(tmp_path, monkeypatch, capsys):
    from segbench import run
    from segbench.report import cli as report_cli

    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
    monkeypatch.setattr(study_mod, "run_cell", lambda *a, **k: pytest.fail("a cell ran"))
    results = tmp_path / "results"
    (results / "study" / "cells").mkdir(parents=True)
    _read_only(monkeypatch, results)
    code = run.main(["sim->sim", "--backbones", "resnet18", "--name", "study", "--results", str(results),
                     "--data-root", str(tmp_path / "data"), "--set", "model.pretrained=null",
                     "--set", "train.batch_size=2"])
    err = capsys.readouterr().err
    assert code == 2 and f"{results / 'study'}: {results / 'study'} is not writable" in err and "Traceback" not in err

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EROFS, "Read-only file system")))
    assert report_cli.main([str(results / "study"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"{results / 'study'} is not writable" in err and "Traceback" not in err


# -- 7. two runners on one results directory ---------------------------------------------------------------------

def test_a_cell_lock_is_exclusive_and_names_its_holder(tmp_path):
    with cell_lock(tmp_path):
        assert f"pid {os.getpid()}" in lock_holder(tmp_path)
        with pytest.raises(CellBusy, match=rf"another process is running .*pid {os.getpid()}"):
            with cell_lock(tmp_path):
                pass
    assert lock_holder(tmp_path) is None
    with cell_lock(tmp_path):  # released: taken again
        pass


def test_the_lock_of_a_killed_process_is_not_stale(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a');"
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) is not None
        with pytest.raises(CellBusy):
            with cell_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with cell_lock(tmp_path):
        pass


def test_a_cell_another_process_runs_is_skipped_as_busy(tmp_path, capsys):
    cells = _cells()
    results = tmp_path / "results"
    cell_dir = cells[0].directory(results)
    with cell_lock(cell_dir):  # stands for the other runner
        (outcome,) = run_study(cells, results, LAUNCHERS.get("local"), device=torch.device("cpu"))
    assert outcome.status == "busy" and "another process is running" in outcome.reason
    assert not (cell_dir / CHECKPOINTS).exists() and not (cell_dir / RECORD).exists()
    assert "FAILED" not in capsys.readouterr().err


def test_a_worker_process_that_found_its_cell_busy_is_reported_busy(tmp_path):
    """A subprocess worker (gpus, torchrun, slurm) that found the lock held exits without finishing the cell; the
    study tells that apart from a failure by the lock, still held by the other runner."""
    cells = _cells(n_seeds=2)
    results = tmp_path / "results"

    def worker_exits_0(cmd, log, env, cwd):
        return 0

    with cell_lock(cells[1].directory(results)):
        outcomes = run_study(cells, results, LAUNCHERS.get("gpus"), {"gpus": "0", "runner": worker_exits_0})
    assert [o.status for o in outcomes] == ["failed", "busy"]
    assert f"pid {os.getpid()}" in outcomes[1].reason


def test_the_lock_is_held_while_the_cell_runs(tmp_path, tiny_model, monkeypatch):
    cell, cell_dir = _finished_cell(tmp_path)
    seen = []
    real_load = pipeline.load_final_weights

    def load_and_look(path, **kwargs):
        seen.append(lock_holder(cell_dir))
        return real_load(path, **kwargs)

    monkeypatch.setattr(pipeline, "load_final_weights", load_and_look)
    pipeline.run_cell(cell, cell_dir, device=torch.device("cpu"))
    assert seen and f"pid {os.getpid()}" in seen[0]
    assert lock_holder(cell_dir) is None


CLAIM_AS_A_RANK = """
import sys
from pathlib import Path
from segbench.lock import CellBusy, lock_holder
from segbench import distributed
from segbench.pipeline import claim_cell
device = distributed.init_from_env("cpu")
try:
    with claim_cell(Path(sys.argv[1]), device):
        print("claimed, lock held:", lock_holder(Path(sys.argv[1])) is not None)
        distributed.dist.barrier()
except CellBusy:
    print("busy")
"""


@pytest.mark.slow
def test_every_rank_of_a_ddp_job_learns_whether_the_first_took_the_lock(tmp_path):
    """Only rank 0 takes the lock (a second rank's flock would fail against it); the others follow its answer, so no
    rank trains alone while the rest skip (a hang) or the reverse."""
    import socket

    def ranks() -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        procs = [subprocess.Popen([sys.executable, "-c", CLAIM_AS_A_RANK, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                       "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                       "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"})
                 for r in range(2)]
        return [proc.communicate(timeout=120)[0].strip().splitlines()[-1] for proc in procs]

    assert ranks() == ["claimed, lock held: True"] * 2
    with cell_lock(tmp_path):
        assert ranks() == ["busy"] * 2


@pytest.fixture
def fake_slurm_queue(tmp_path, monkeypatch):
    """`sbatch` answering job 4242 and `squeue` printing the ids listed in QUEUE (what Slurm still holds); each
    squeue call's arguments go to squeue.args."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/squeue.args\ncat {tmp_path}/QUEUE\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_rerunning_a_slurm_study_does_not_resubmit_cells_still_queued(tmp_path, fake_slurm_queue, capsys):
    cells = _cells(n_seeds=3)
    results = tmp_path / "results"
    slurm = LAUNCHERS.get("slurm")
    first = run_study(cells, results, slurm, {"wait": False}, argv=["sim->photo", "--seeds", "3"])
    assert [o.status for o in first] == ["submitted"] * 3
    assert [(c.directory(results) / SLURM_JOB).read_text().strip() for c in cells] == ["4242_0", "4242_1", "4242_2"]

    (tmp_path / "QUEUE").write_text("4242_0\n4242_2\n")  # task 1 has ended (without finishing its cell)
    second = run_study(cells, results, slurm, {"wait": False}, argv=["sim->photo", "--seeds", "3"])
    assert [o.status for o in second] == ["busy", "submitted", "busy"]
    assert "job 4242_0" in second[0].reason
    assert "submitted 1 cell(s)" in capsys.readouterr().err  # only the cell whose job left the queue
    assert (cells[1].directory(results) / SLURM_JOB).read_text().strip() == second[1].extra["job_id"]
    args = (tmp_path / "squeue.args").read_text().split()
    assert args[args.index("-j") + 1].split(",") == ["4242_0", "4242_1", "4242_2"]


def test_squeue_that_knows_none_of_the_jobs_means_none_are_queued(tmp_path, fake_slurm_queue):
    (fake_slurm_queue / "bin" / "squeue").write_text(
        "#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    from segbench.launchers import slurm_active_jobs

    assert slurm_active_jobs(["4242_0"]) == set()


# -- small: the train log and the training statistics over a resume --------------------------------------------------

class CrashAt(torch.nn.Module):
    """PixelModel that raises in its given forward call, as a killed process would stop."""

    def __init__(self, call):
        super().__init__()
        self.inner, self.call, self.calls = PixelModel(), call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt("killed")
        return self.inner(x)

    def state_dict(self, *a, **k):
        return self.inner.state_dict(*a, **k)

    def load_state_dict(self, *a, **k):
        return self.inner.load_state_dict(*a, **k)


def test_a_resumed_run_logs_each_iteration_once_and_counts_the_whole_run(tmp_path, tiny_sim, monkeypatch):
    monkeypatch.setattr(train_mod, "LOG_EVERY", 1)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_sim, CrashAt(4))  # rows 1..3 logged, checkpoint at 2, killed in iteration 4
    before = load_checkpoint(tmp_path / "ckpt" / "iter_0000002.pt")
    stats = _train(tmp_path, tiny_sim)
    with open(tmp_path / "train_log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "loss", "lr", "images_per_s"]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3, 4]
    assert stats["resumed_from"] == 2
    assert stats["train_seconds"] > before["train_seconds"] > 0
    # 4 iterations x batch 2 over the whole run, not the 2 x 2 of the resumed process
    assert stats["images_per_s"] * stats["train_seconds"] == pytest.approx(8)


# -- a payload among the checkpoints ---------------------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (print, ("this file ran code",))


def test_a_payload_as_the_newest_checkpoint_is_set_aside_like_a_damaged_one(tmp_path, tiny_sim, capsys):
    """Not a resume that fails on every rerun with advice for `evaluate`: kept aside, the run resumes before it."""
    _train(tmp_path, tiny_sim)
    newest = tmp_path / "ckpt" / "iter_0000004.pt"
    torch.save({"model": Payload()}, newest)
    with pytest.warns(UserWarning, match=r"iter_0000004\.pt: not a segbench checkpoint.*kept aside as "
                                         r"iter_0000004\.pt\.damaged, resuming from the checkpoint before it"):
        stats = _train(tmp_path, tiny_sim)
    assert stats["resumed_from"] == 2 and "ran code" not in capsys.readouterr().out
    assert (tmp_path / "ckpt" / "iter_0000004.pt.damaged").is_file()


def test_evaluate_on_a_truncated_model_final_says_rerunning_the_study_repairs_it(tmp_path, capsys):
    cell, cell_dir = _finished_cell(tmp_path)
    _truncate(cell_dir / FINAL_WEIGHTS)
    code = evaluate_cli.main([str(cell_dir), "--dataset", "sim", "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(cell_dir / FINAL_WEIGHTS) in err and "rerunning the study that wrote it repairs it" in err


# -- a malformed record, a damaged per-image file: kept aside, never lost without a word --------------------------

TRAINING = {"train_seconds": 123.5, "images_per_s": 7.25, "resumed_from": 40, "world_size": 1,
            "batch_per_process": 8, "launches": [{"from_iteration": 0, "world_size": 1, "batch_per_process": 8},
                                                 {"from_iteration": 40, "world_size": 1, "batch_per_process": 8}]}


@pytest.mark.parametrize("damage", ["wrong-type", "truncated"])
def test_a_malformed_record_is_kept_aside_and_what_is_readable_carried_over(tmp_path, tiny_model, tiny_sim, damage):
    import json

    cell, cell_dir = _finished_cell(tmp_path)
    record = json.loads((cell_dir / RECORD).read_text())
    record["training"] = TRAINING
    record["results"]["sim"]["miou"] = "fifty"  # a hand edit
    text = json.dumps(record, indent=2, sort_keys=True)
    if damage == "truncated":
        text = text[: len(text) // 2]
    (cell_dir / RECORD).write_text(text)
    with pytest.warns(UserWarning, match=rf"{cell_dir / RECORD}: .*kept aside as record\.json\.damaged") as caught:
        pipeline.run_cell(cell, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    assert (cell_dir / "record.json.damaged").read_text() == text  # nothing thrown away
    rebuilt = json.loads((cell_dir / RECORD).read_text())
    assert isinstance(rebuilt["results"]["sim"]["miou"], float)  # scored again from model_final.pt
    if damage == "wrong-type":
        assert rebuilt["training"] == TRAINING
        assert "results.sim.miou" in str(caught[0].message) and "carried over its training" in str(caught[0].message)
    else:
        assert "training" not in rebuilt and "its training statistics are lost" in str(caught[0].message)


@pytest.mark.parametrize("damage", ["truncated", "object-array"])
def test_a_damaged_per_image_file_is_kept_aside_and_its_target_scored_again(tmp_path, tiny_model, tiny_sim, damage):
    import numpy as np

    from segbench.cells import CONFUSION
    from segbench.record import is_done
    from segbench.report.bootstrap import load_image_confusions

    cell, cell_dir = _finished_cell(tmp_path)
    path = cell_dir / CONFUSION / "sim.npz"
    path.parent.mkdir()
    if damage == "truncated":
        io_mod.save_npz(path, counts=np.ones((3, 19, 20), np.int64), images=np.array(["a", "b", "c"]))
        _truncate(path, 60)
    else:
        np.savez(path, counts=np.array([Payload()], dtype=object), images=np.array(["a"]))
    damaged = path.read_bytes()
    assert not is_done(cell, cell_dir)  # the rerun does not skip the cell
    with pytest.warns(UserWarning, match=rf"{path}: .*kept aside as sim\.npz\.damaged, sim is scored again"):
        pipeline.run_cell(cell, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    assert (cell_dir / CONFUSION / "sim.npz.damaged").read_bytes() == damaged
    counts, images = load_image_confusions(path)
    assert counts.shape == (1, 19, 20) and len(images) == 1 and is_done(cell, cell_dir)


# -- a finished cell keeps no training checkpoints -------------------------------------------------------------------

@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_cell_prunes_its_training_checkpoints_unless_asked_to_keep_them(tmp_path, tiny_model, tiny_sim,
                                                                                   keep):
    import dataclasses
    import json

    cfg = load_config(EMBEDDED_DEFAULT)
    cfg["train"].update(iters=2, batch_size=2, workers=0, ckpt_every=1, crop=[32, 32], keep_ckpts_when_done=keep)
    cfg["model"]["pretrained"] = None
    cfg["eval"].update(every=1, workers=0)
    (cell,) = plan(cfg, parse_specs(["sim->sim"]), ["resnet18"], ["fcn"])[:1]
    other = dataclasses.replace(cell, train={**cell.train, "keep_ckpts_when_done": not keep})
    assert other.cell_id == cell.cell_id  # not part of the cell id: finished studies keep their cells
    cell_dir = cell.directory(tmp_path / "results")
    pipeline.run_cell(cell, cell_dir, data_root=tiny_sim, device=torch.device("cpu"))
    kept = [it for it, _ in list_checkpoints(cell_dir / CHECKPOINTS)]
    assert kept == ([1, 2] if keep else []) and (cell_dir / CHECKPOINTS).is_dir() == keep
    record = json.loads((cell_dir / RECORD).read_text())
    assert (cell_dir / FINAL_WEIGHTS).is_file() and (cell_dir / DONE).is_file()
    assert [it for it, _ in record["curves"]["sim"]] == [1, 2]  # what model selection reads stays in the record
    assert set(load_checkpoint(cell_dir / FINAL_WEIGHTS)) == set(PixelModel().state_dict())  # what evaluate reads
