"""Crash safety and multi-process training with real subprocesses (tests/child_train.py runs each one).

* 2 gloo processes sharing the global batch 2 must train exactly like 1 process with batch 2, and 2-process
  evaluation must give exactly the 1-process confusion matrix (tests/test_global_batch.py: batch 8, image by image).
* A run SIGKILLed right after the checkpoint of iteration K, then resumed in a new process, must end bit for bit where
  an uninterrupted run ends, having trained iterations K+1..N itself.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segbench.data.adapters.synthetic import SIZES_ENV, SimDomain, ensure_generated
from segbench.labels import IGNORE_INDEX, NUM_CLASSES

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("child_train.py")
SIZES = "train=8,val=3"
TIMEOUT = 240
ATOL = 1e-6  # float32 summation order (gradients summed in one kernel vs. all-reduced): ~1e-7 seen on CPU


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The `sim` tree written once, before any child starts: concurrent children must not race to generate it."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SIZES_ENV, SIZES)
        ensure_generated(root / SimDomain.default_dir, "sim")
    return root


def _cmd(data_root, out, *args):
    return [sys.executable, str(CHILD), "--data-root", str(data_root), "--out", str(out), *map(str, args)]


class Children:
    """Child processes, each in its own process group (a SIGKILL to the group also takes its DataLoader workers),
    stderr in a file (a full pipe would block a child); whatever still runs at teardown is killed."""

    def __init__(self, tmp_path: Path, env: dict):
        self.tmp_path, self.env, self.started = tmp_path, env, []

    def start(self, name: str, cmd: list, **env) -> subprocess.Popen:
        with open(self.tmp_path / f"{name}.stderr", "w") as err:
            proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        proc.name = name
        self.started.append(proc)
        return proc

    def stderr(self, proc) -> str:
        return (self.tmp_path / f"{proc.name}.stderr").read_text()[-3000:]

    def finish(self, proc) -> None:
        assert proc.wait(timeout=TIMEOUT) == 0, f"{proc.name} failed:\n{self.stderr(proc)}"

    @staticmethod
    def kill(proc) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture
def children(tmp_path):
    kids = Children(tmp_path, dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                                   SEGBENCH_SYNTHETIC_SIZES=SIZES, SEGBENCH_CACHE=str(tmp_path / "cache")))
    yield kids
    for proc in kids.started:
        if proc.poll() is None:
            kids.kill(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def _info(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"rank{rank}.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_train_and_score_exactly_like_one(data_root, tmp_path, children):
    """Global batch 2 either way, over the same sample stream, on a model without BatchNorm (per-process statistics
    on CPU) or dropout (per-process masks): averaged gradients make every step, hence the final weights, the same up
    to float summation order. Without gradient sharing each rank would follow its own samples. Evaluation sharded
    over the 2 ranks must sum to the 1-process confusion matrix, count for count."""
    iters = 4
    # DDP averages per-process mean losses; that equals the batch-2 mean only if every image has as many labelled
    # pixels: the sim labels have no ignore pixels, and 96x192 frames at scale >= 0.5 need no padding for 32x64 crops
    for p in (data_root / SimDomain.default_dir / "labels" / "train").glob("*.png"):
        assert (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) != IGNORE_INDEX).all(), p
    port = str(_free_port())
    ranks = [children.start(f"rank{r}", _cmd(data_root, tmp_path / "two", "--iters", iters, "--batch", 2, "--eval"),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2")
             for r in range(2)]
    one = children.start("one", _cmd(data_root, tmp_path / "one", "--iters", iters, "--batch", 2, "--eval"))
    for proc in (*ranks, one):
        children.finish(proc)

    for r in range(2):
        info = _info(tmp_path / "two", r)
        assert info["world_size"] == 2 and info["forwards"] == iters
        assert info["stats"]["batch_per_process"] == 1 and all(len(batch) == 1 for batch in info["inputs"])
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    init = torch.load(tmp_path / "one" / "init.pt", weights_only=True)
    assert w1.keys() == w2.keys() == init.keys()
    for k in w1:
        moved = (w1[k] - init[k]).abs().max().item()
        assert moved > 1000 * ATOL, f"{k} barely trained ({moved}): the comparison below would be vacuous"
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")

    # evaluation: rank r scores images r, r+2, ... and the matrices are summed; 3 images over 2 ranks is uneven
    cm1 = torch.load(tmp_path / "one" / "cm_rank0.pt", weights_only=True)
    labels = sorted((data_root / SimDomain.default_dir / "labels" / "val").glob("*.png"))
    assert len(labels) == 3
    pixels = sum(np.bincount(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).ravel(), minlength=256) for p in labels)
    assert pixels[NUM_CLASSES:IGNORE_INDEX].sum() == 0
    # rows are ground truth: each class's row holds every labelled pixel of that class, once
    assert cm1.sum(1).tolist() == pixels[:NUM_CLASSES].tolist()
    assert (cm1.sum(0) > 0).sum() >= 2, "the model predicts a single class: a weak check of the matrix"
    for r in range(2):
        cm2 = torch.load(tmp_path / "two" / f"cm_rank{r}.pt", weights_only=True)
        assert cm2.shape == cm1.shape and (cm2 - cm1).abs().sum() == 0, \
            f"rank {r}: 2-process matrix ({cm2.sum()} pixels) differs from the 1-process one ({cm1.sum()} pixels)"
    assert _info(tmp_path / "two")["eval"] == _info(tmp_path / "one")["eval"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["frozen", "rein"])
def test_a_frozen_backbone_trains_under_ddp_without_the_unused_parameter_error(data_root, tmp_path, children, method):
    """Rein's users hit DDP's 'parameters that were not used in producing loss' (w1oves/Rein issue 6). Here the frozen
    parameters are out of DDP's sight (requires_grad off) and Rein's query link is not built for a head that takes no
    queries, so 2 gloo processes train; DDP keeps the ranks' weights equal, and the frozen backbone does not move."""
    port = str(_free_port())
    args = ("--model", "vit_debug_p16", "--optimizer", "adamw", "--iters", 2, "--batch", 2, "--method", method)
    ranks = [children.start(f"rank{r}", _cmd(data_root, tmp_path / "two", *args), MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=port, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2") for r in range(2)]
    for proc in ranks:
        children.finish(proc)
    assert [_info(tmp_path / "two", r)["forwards"] for r in range(2)] == [2, 2]
    final, init = _weights(tmp_path / "two"), torch.load(tmp_path / "two" / "init.pt", weights_only=True)
    backbone = [k for k in init if k.startswith("backbone.")]
    assert backbone and all(torch.equal(final[k], init[k]) for k in backbone)
    assert any(not torch.equal(final[k], init[k]) for k in init if k.startswith("head."))


@pytest.mark.slow
@pytest.mark.parametrize("workers, class_uniform", [(0, 0.0), (2, 0.5)], ids=["plain", "workers-class-uniform"])
def test_sigkill_right_after_a_checkpoint_then_resume_is_bit_identical(data_root, tmp_path, children, workers,
                                                                        class_uniform):
    """resnet18 + FCN: BatchNorm buffers, dropout masks (global RNG), momentum and the sample stream must all
    continue from iteration K as if nothing happened."""
    iters, every, kill_at = 4, 2, 2
    args = ("--model", "resnet18", "--iters", iters, "--batch", 2, "--ckpt-every", every, "--workers", workers,
            "--class-uniform", class_uniform)
    straight = children.start("straight", _cmd(data_root, tmp_path / "straight", *args))
    killed_out = tmp_path / "killed"
    killed = children.start("killed", _cmd(data_root, killed_out, *args, "--freeze-after", kill_at))
    deadline = time.monotonic() + TIMEOUT
    while not (killed_out / "frozen").exists():  # the child writes it right after the checkpoint, then blocks
        if killed.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"child never reached the checkpoint of iteration {kill_at}:\n{children.stderr(killed)}")
        time.sleep(0.02)
    children.kill(killed)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (killed_out / "checkpoints").iterdir()) == [f"iter_{kill_at:07d}.pt"]
    assert not (killed_out / "final.pt").exists()

    children.finish(children.start("resumed", _cmd(data_root, killed_out, *args)))
    children.finish(straight)

    info = _info(killed_out)
    assert info["stats"]["resumed_from"] == kill_at
    assert info["forwards"] == iters - kill_at, "the resumed process must train iterations K+1..N itself"
    assert _info(tmp_path / "straight")["forwards"] == iters
    a, b = _weights(tmp_path / "straight"), _weights(killed_out)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the uninterrupted run's, e.g. {differ[:4]}"


#: every method with state a resume must restore: torch RNG draws (mixstyle, dsu, np), per-sample numpy draws in the
#: loader (pasta), running statistics (sw), and ISW's mask, selected before the kill (stat_epochs small) or after it
METHOD_CASES = {
    "iw": [], "irw": [], "sw": [], "mixstyle": [], "dsu": [], "np": [], "pasta": [],
    "isw-selected-before-kill": ["stat_epochs=0.25", "stat_images=3", "trials=2"],
    "isw-selected-after-kill": ["stat_epochs=0.75", "stat_images=3", "trials=2"],
    # basis styles at iterations 0 and 3 (every 0.75 epoch of 8 images at batch 2): the second in the resumed process;
    # no retrospection, which needs ImageNet weights these children do not start from
    "shade": ["basis_epochs=0.75", "retrospection=0"],
    # the parameter-efficient methods on a tiny ViT, with AdamW (its moments must be restored too)
    "frozen-vit": [], "full-vit": [], "rein-vit": [], "vpt-vit": [], "lora-vit": [],
    # Rein's recipe: its tokens as a Mask2Former head's queries, mmseg's pipeline, AdamW
    "rein-recipe": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_resume_after_sigkill_is_bit_identical_with_every_method(data_root, tmp_path, children, case):
    """A method's state (RNG draws, running statistics, ISW's mask) is in the checkpoint: killed at iteration 2 and
    resumed, the run ends bit-identical to an uninterrupted one. ISW's pass runs at round(epochs * 8 / 2) (8 images,
    batch 2): iteration 1 (before the checkpoint at 2) or 3 (in the resumed process)."""
    method = case.split("-")[0]
    if method == "lora":
        pytest.importorskip("peft")
    opts = [a for o in METHOD_CASES[case] for a in ("--method-opt", o)]
    iters, every, kill_at = 4, 2, 2
    model = ("--model", "vit_debug_p16", "--optimizer", "adamw") if case.endswith(("-vit", "-recipe")) else \
        ("--model", "resnet18")
    if case.endswith("-recipe"):
        pytest.importorskip("transformers")
        model = (*model, "--head", "mask2former", "--pipeline", "rein")
    args = (*model, "--iters", iters, "--batch", 2, "--ckpt-every", every, "--method", method, *opts)
    straight = children.start("straight", _cmd(data_root, tmp_path / "straight", *args))
    killed_out = tmp_path / "killed"
    killed = children.start("killed", _cmd(data_root, killed_out, *args, "--freeze-after", kill_at))
    deadline = time.monotonic() + TIMEOUT
    while not (killed_out / "frozen").exists():
        if killed.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"child never reached the checkpoint of iteration {kill_at}:\n{children.stderr(killed)}")
        time.sleep(0.02)
    children.kill(killed)
    children.finish(children.start("resumed", _cmd(data_root, killed_out, *args)))
    children.finish(straight)
    assert _info(killed_out)["stats"]["resumed_from"] == kill_at
    a, b = _weights(tmp_path / "straight"), _weights(killed_out)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ from the uninterrupted run's, e.g. {differ[:4]}"
    if method == "isw":
        masks = [k for k in a if k.endswith("mask_selected")]
        assert len(masks) == 3 and all(bool(a[k]) for k in masks), "the mask was selected in both runs"
