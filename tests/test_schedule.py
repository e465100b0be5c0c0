"""The poly learning-rate schedule, and that lr / momentum / weight decay / power set in the configuration are what
SGD actually applies during `train()`.

Poly schedule as in DeepLab (Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018, "poly" policy): lr = base * (1 - iter / max_iter) ** power.
SGD with momentum and L2 weight decay as torch.optim.SGD documents it (dampening 0, no Nesterov):
    d = grad + wd * p;  buf = d (first step) or momentum * buf + d;  p = p - lr * buf.
"""
import numpy as np
import pytest
import torch
import torch.optim.optimizer as optim_hooks

from segbench.config import apply_overrides, load_config, train_settings
from segbench.data.transforms import build_train_transform
from segbench.engine.optim import poly_lr
from segbench.engine.train import train
from tiny_models import PixelModel


@pytest.mark.parametrize("base, total, power, iteration, expected", [
    (0.01, 40000, 0.9, 0, 0.01),
    (0.01, 40000, 0.9, 10000, 0.01 * 0.75 ** 0.9),
    (0.01, 40000, 0.9, 20000, 0.01 * 0.5 ** 0.9),
    (0.01, 40000, 0.9, 30000, 0.01 * 0.25 ** 0.9),
    (0.01, 40000, 0.9, 39999, 0.01 * (1 / 40000) ** 0.9),
    (0.05, 4, 2.0, 1, 0.028125),  # 0.05 * (3/4)^2
    (0.05, 4, 2.0, 3, 0.003125),  # 0.05 * (1/4)^2
    (0.05, 4, 1.0, 2, 0.025),  # linear decay at power 1
])
def test_poly_lr_at_several_iterations(base, total, power, iteration, expected):
    assert poly_lr(base, iteration, total, power) == pytest.approx(expected, rel=1e-12)


class TinySource:
    """Two 16x16 frames in memory: all `train()` needs from a dataset adapter is `len` and `load_pair`."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 19, (2, 16, 16), dtype=np.uint8)

    def __len__(self):
        return 2

    def load_pair(self, index):
        return self.images[index], self.labels[index]


def test_config_lr_momentum_weight_decay_and_power_reach_sgd(tmp_path, one_thread):
    """Non-default values set through the config path the runner uses; every optimizer step is recorded and replayed
    by hand with the expected lr, so a setting that is dropped or mis-wired changes the weights."""
    cfg = apply_overrides(load_config(), [
        "train.lr=0.05", "train.momentum=0.5", "train.weight_decay=0.1", "train.power=2.0", "train.iters=4",
        "train.batch_size=2", "train.workers=0", "train.ckpt_every=0", "train.crop=[16,16]", "train.scale_range=[1,1]",
    ])
    tcfg = cfg["train"]
    expected_lr = [0.05, 0.05 * (3 / 4) ** 2, 0.05 * (2 / 4) ** 2, 0.05 * (1 / 4) ** 2]
    steps = []

    def record(optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        steps.append({"groups": [dict((k, g[k]) for k in ("lr", "momentum", "weight_decay", "dampening", "nesterov"))
                                 for g in optimizer.param_groups],
                      "params": [p.detach().clone() for p in params], "grads": [p.grad.detach().clone() for p in params]})

    torch.manual_seed(0)
    model = PixelModel()
    handle = optim_hooks.register_optimizer_step_pre_hook(record)
    try:
        train(model, TinySource(), build_train_transform(tcfg["crop"], tcfg["scale_range"], tcfg["hflip"]),
              train_settings(tcfg), seed=0, device=torch.device("cpu"), ckpt_dir=tmp_path / "ckpt", identity={})
    finally:
        handle.remove()

    assert len(steps) == 4
    for k, step in enumerate(steps):
        for group in step["groups"]:
            assert group["lr"] == pytest.approx(expected_lr[k], rel=1e-12), f"step {k}"
            assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (0.5, 0.1, 0, False)

    # replay: plain SGD with momentum and L2 weight decay, from the first step's weights and each step's gradients
    params = [p.clone() for p in steps[0]["params"]]
    bufs = [None] * len(params)
    for k, step in enumerate(steps):
        for p, recorded in zip(params, step["params"]):
            torch.testing.assert_close(p, recorded, msg=f"weights before step {k}")
        for i, (p, g) in enumerate(zip(params, step["grads"])):
            d = g + 0.1 * p
            bufs[i] = d if bufs[i] is None else 0.5 * bufs[i] + d
            params[i] = p - expected_lr[k] * bufs[i]
    for p, final in zip(params, model.parameters()):
        torch.testing.assert_close(final.detach(), p)


# RobustNet's training recipe typed from its source (shachoi/RobustNet): scripts/train_r50os16_gtav_base.sh
# (torch.distributed.launch --nproc_per_node=4, --bs_mult 4, --lr 0.01, --poly_exp 0.9, --max_iter 40000,
# --crop_size 768, --scale_min 0.5, --scale_max 2.0, --class_uniform_pct 0.5, --color_aug 0.5 --gblur, no --fp16),
# optimizer.py get_optimizer (SGD over every parameter, weight_decay=5e-4 hard-coded, momentum=args.momentum whose
# train.py default is 0.9, nesterov=False), train.py (total_loss = main_loss + 0.4 * aux_loss) and
# transforms/joint_transforms.py RandomHorizontallyFlip (p 0.5).
ROBUSTNET_TRAIN = {"iters": 40000, "batch_size": 4 * 4, "accumulate": 1, "lr": 0.01, "momentum": 0.9,
                   "weight_decay": 5e-4, "power": 0.9, "aux_weight": 0.4, "crop": [768, 768], "scale_range": [0.5, 2.0],
                   "hflip": 0.5, "class_uniform": 0.5, "photometric": "robustnet", "amp": False}


@pytest.mark.parametrize("experiment", ["robustnet_dg", "robustnet_methods", "synthia_dg"])
def test_files_that_claim_robustnets_recipe_train_with_it(experiment):
    """Full precision included: RobustNet's --fp16 (apex) is off in every script; AMP is another recipe."""
    train = load_config(experiment)["train"]
    assert {key: train[key] for key in ROBUSTNET_TRAIN} == ROBUSTNET_TRAIN
