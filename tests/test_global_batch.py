"""`train.batch_size` is the study's global batch: N processes share it, `train.accumulate` micro-steps split each
process's share, and neither how many processes trained a cell nor their batch enters its id (only the record).

The stream contract (segbench/data/sampler.py): step k holds positions [8k, 8k+8) of one seeded global stream, and
position p goes to rank p % N, so 1 process with batch 8 and 2 gloo processes with global batch 8 put the very same
augmented images through the model at every step.
"""
from __future__ import annotations

import hashlib
import time

import pytest
import torch

from child_train import FROZEN, TinyNet
from segbench import distributed as dist_utils
from segbench.cells import plan
from segbench.config import ConfigError, TrainSettings, apply_overrides, load_config, validate
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.engine import train as train_mod
from segbench.spec import parse_specs
# the 2-process harness of the DDP tests: the `sim` tree written once, children in their own process groups
from test_resume_ddp import ATOL, TIMEOUT, _cmd, _free_port, _info, _weights, children, data_root  # noqa: F401

BATCH = 8


# -- the split itself ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world, accumulate, share", [(1, 1, 16), (4, 1, 4), (1, 4, 4), (2, 2, 4), (16, 1, 1)])
def test_each_process_takes_its_share_of_the_global_batch(world, accumulate, share):
    assert dist_utils.batch_share(16, world, accumulate) == share


def test_an_uneven_split_is_a_config_error_naming_the_fix():
    with pytest.raises(ConfigError) as info:
        dist_utils.batch_share(16, 3)
    msg = str(info.value)
    assert "train.batch_size=16 is the global batch" in msg and "3 process(es) x train.accumulate=1" in msg
    assert "multiple of 3" in msg and "launch 1, 2, 4, 8, 16 process(es)" in msg
    with pytest.raises(ConfigError, match=r"2 process\(es\) x train.accumulate=4: make it a multiple of 8, or "
                                          r"launch 1 process\(es\)"):
        dist_utils.batch_share(4, 2, 4)


def test_accumulate_must_divide_the_batch_before_any_launch():
    cfg = apply_overrides(load_config("embedded"), ["train.batch_size=8", "train.accumulate=3"])
    with pytest.raises(ConfigError, match=r"train.accumulate=3: does not divide train.batch_size=8"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"train.accumulate=0: expected an integer >= 1"):
        validate(apply_overrides(cfg, ["train.accumulate=0"]))
    assert validate(apply_overrides(cfg, ["train.accumulate=4"]))["train"]["accumulate"] == 4


def test_the_cell_id_ignores_the_launch_but_not_the_micro_batch(monkeypatch):
    """The id hashes the global batch: the same study planned for 1 process or under torchrun's environment of 4
    has the same ids; accumulate changes BatchNorm's batch, hence the weights, hence the id (1 keeps old ids)."""
    cfg = load_config("embedded")
    specs = parse_specs(cfg["specs"])

    def ids(c):
        return [cell.cell_id for cell in plan(c, specs, ["resnet18"], ["fcn"])]

    alone = ids(cfg)
    for var, value in {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(var, value)
    assert ids(cfg) == alone
    assert ids(apply_overrides(cfg, ["train.accumulate=1"])) == alone
    assert ids(apply_overrides(cfg, ["train.accumulate=2"])) != alone


# -- one process: accumulation, the record's launch statistics --------------------------------------------------------
@pytest.fixture
def sim_train(tmp_path, monkeypatch, one_thread):
    """8 sim frames: their labels have no ignore pixels and 32x64 crops of 96x192 frames at scale >= 0.5 need no
    padding, so every micro-batch holds as many labelled pixels (the condition for exact accumulation)."""
    monkeypatch.setattr(synthetic, "SPLIT_SIZES", {"train": BATCH, "val": 1})
    return build_dataset("sim", "train", root=tmp_path / "data")


def _train(tmp_path, dataset, name: str, iters=3, **settings):
    """TinyNet (no BatchNorm, no dropout) from the same initial weights; returns (weights, stats, per-forward image
    digests)."""
    torch.manual_seed(0)
    model = TinyNet()
    seen = []
    model.register_forward_pre_hook(lambda m, inputs: seen.append(
        [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in inputs[0]]))
    settings = TrainSettings(iters=iters, batch_size=BATCH, lr=0.01, workers=0, ckpt_every=0, amp=False,
                             channels_last=False, **settings)
    stats = train_mod.train(model, dataset, build_train_transform((32, 64), scale_range=(0.5, 2.0)), settings, seed=1,
                            device=torch.device("cpu"), ckpt_dir=tmp_path / name, identity={"test": name})
    return model.state_dict(), stats, seen


def test_accumulation_gives_the_full_batch_update_without_batchnorm(tmp_path, sim_train):
    """batch 8 in 1, 2 and 4 micro-steps: the same 8 images per step, in the same order, and the same weights (up to
    float summation order); the mean of equal-sized micro-batch means is the batch mean."""
    iters = 3
    full, stats, seen = _train(tmp_path, sim_train, "full", iters)
    assert stats["world_size"] == 1 and stats["batch_per_process"] == BATCH
    assert [len(batch) for batch in seen] == [BATCH] * iters
    torch.manual_seed(0)
    init = TinyNet().state_dict()
    for accumulate in (2, 4):
        weights, stats, micro = _train(tmp_path, sim_train, f"acc{accumulate}", iters, accumulate=accumulate)
        assert stats["batch_per_process"] == BATCH, "accumulation splits the share, it does not shrink it"
        assert [len(batch) for batch in micro] == [BATCH // accumulate] * (iters * accumulate)
        steps = [sum(micro[k * accumulate:(k + 1) * accumulate], []) for k in range(iters)]
        assert steps == seen
        for k, v in full.items():
            assert (v - init[k]).abs().max() > 1000 * ATOL, f"{k} barely trained: a vacuous comparison"
            torch.testing.assert_close(weights[k], v, rtol=0, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")


def test_resumes_are_listed_with_their_launch(tmp_path, sim_train):
    _train(tmp_path, sim_train, "run", iters=2)
    _, stats, _ = _train(tmp_path, sim_train, "run", iters=4)  # the checkpoint of iteration 2 is resumed
    assert stats["resumed_from"] == 2
    assert stats["launches"] == [{"from_iteration": 0, "world_size": 1, "batch_per_process": BATCH},
                                 {"from_iteration": 2, "world_size": 1, "batch_per_process": BATCH}]


def test_training_refuses_an_uneven_split_before_any_work(tmp_path, sim_train, monkeypatch):
    monkeypatch.setattr(dist_utils, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match=r"train.batch_size=8 is the global batch .* 3 process\(es\)"):
        _train(tmp_path, sim_train, "uneven")
    assert not (tmp_path / "uneven").exists()


# -- two gloo processes ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_gloo_processes_see_the_images_of_one_process_per_step(data_root, tmp_path, children):
    """Global batch 8: each rank puts 4 images through the model per step, rank r the positions r, r+2, ... of the
    1-process batch, pixel for pixel; the averaged gradients then give the 1-process weights (no BatchNorm), and the
    statistics name the launch. With train.accumulate=2 each rank takes its 4 in two micro-batches of 2 and DDP
    reduces the gradients once per step (no_sync on the first): the same images, the same weights."""
    iters = 3
    runs = {"two": (), "two_acc2": ("--accumulate", 2)}
    for name, extra in runs.items():
        port = str(_free_port())
        for r in range(2):
            children.start(f"{name}{r}", _cmd(data_root, tmp_path / name, "--iters", iters, "--batch", BATCH, *extra),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2")
    children.start("one", _cmd(data_root, tmp_path / "one", "--iters", iters, "--batch", BATCH))
    for proc in children.started:
        children.finish(proc)

    single = _info(tmp_path / "one")["inputs"]
    assert [len(batch) for batch in single] == [BATCH] * iters
    assert all(len(set(batch)) == BATCH for batch in single), "8 distinct augmented images per step"
    assert len({d for batch in single for d in batch}) == BATCH * iters
    w1 = _weights(tmp_path / "one")
    for name, accumulate in (("two", 1), ("two_acc2", 2)):
        micro = BATCH // 2 // accumulate
        for r in range(2):
            info = _info(tmp_path / name, r)
            assert info["world_size"] == 2
            assert info["stats"]["world_size"] == 2 and info["stats"]["batch_per_process"] == BATCH // 2
            assert info["stats"]["launches"] == [{"from_iteration": 0, "world_size": 2, "batch_per_process": 4}]
            assert [len(batch) for batch in info["inputs"]] == [micro] * (iters * accumulate)
            steps = [sum(info["inputs"][k * accumulate:(k + 1) * accumulate], []) for k in range(iters)]
            assert steps == [batch[r::2] for batch in single], f"{name} rank {r} saw other images"
        w2 = _weights(tmp_path / name)
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=ATOL, msg=lambda m, k=k, n=name: f"{n} {k}: {m}")


@pytest.mark.slow
def test_a_cell_started_on_one_process_resumes_on_two(data_root, tmp_path, children):
    """The stream position of a checkpoint is global (iteration x global batch): a run killed after the checkpoint of
    iteration 2 on 1 process, resumed by 2 gloo processes, trains iterations 3..4 on the images and to the weights
    of an uninterrupted 1-process run; the statistics list both launches."""
    iters, kill_at = 4, 2
    args = ("--iters", iters, "--batch", BATCH, "--ckpt-every", kill_at)
    straight = children.start("straight", _cmd(data_root, tmp_path / "straight", *args))
    out = tmp_path / "moved"
    killed = children.start("killed", _cmd(data_root, out, *args, "--freeze-after", kill_at))
    deadline = time.monotonic() + TIMEOUT
    while not (out / FROZEN).exists():  # written right after the checkpoint of iteration 2, then the child blocks
        if killed.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"child never reached the checkpoint of iteration {kill_at}:\n{children.stderr(killed)}")
        time.sleep(0.02)
    children.kill(killed)
    port = str(_free_port())
    ranks = [children.start(f"rank{r}", _cmd(data_root, out, *args), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                            RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2") for r in range(2)]
    for proc in (straight, *ranks):
        children.finish(proc)

    single = _info(tmp_path / "straight")["inputs"]
    for r in range(2):
        info = _info(out, r)
        assert info["stats"]["resumed_from"] == kill_at
        assert info["stats"]["launches"] == [{"from_iteration": 0, "world_size": 1, "batch_per_process": BATCH},
                                             {"from_iteration": kill_at, "world_size": 2, "batch_per_process": 4}]
        assert info["inputs"] == [batch[r::2] for batch in single[kill_at:]], f"rank {r} saw other images"
    a, b = _weights(tmp_path / "straight"), _weights(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")
