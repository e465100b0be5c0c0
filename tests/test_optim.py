"""The optimizer axis (engine/optim.py): which parameters train, their groups (weight decay, learning-rate
multipliers), SGD unchanged for the existing recipes, AdamW, and the warmup + poly schedule worked out by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segbench.config import ConfigError, TrainSettings, apply_overrides, load_config, validate
from segbench.engine.optim import learning_rate, make_optimizer, parameter_groups, set_learning_rate
from segbench.methods import build_method
from segbench.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{"iters": 100, "lr": 0.01, **kw})


def test_the_default_is_the_sgd_of_the_existing_recipes_step_for_step():
    """One group of every parameter, momentum and weight decay as before: the same weights after three steps as
    torch.optim.SGD(model.parameters(), lr, momentum, weight_decay) under the poly schedule."""
    torch.manual_seed(0)
    model = create_model("resnet18", "fcn", num_classes=3)
    reference = copy.deepcopy(model)
    settings = _settings()
    ours = make_optimizer(model, settings)
    theirs = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert isinstance(ours, torch.optim.SGD) and len(ours.param_groups) == 1
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    for it in range(3):
        set_learning_rate(ours, learning_rate(settings, it))
        for group in theirs.param_groups:
            group["lr"] = 0.01 * (1 - it / 100) ** 0.9
        for net, opt in ((model, ours), (reference, theirs)):
            torch.manual_seed(it)  # the same dropout masks
            opt.zero_grad()
            nn.functional.cross_entropy(net(x)["out"], y).backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_groups_split_by_no_decay_fragments_norm_layers_and_the_longest_lr_prefix():
    model = create_model("resnet18", "fcn", num_classes=3)
    settings = _settings(weight_decay=0.05, no_decay=["downsample"], no_decay_norms=True,
                         lr_mult={"backbone": 0.1, "backbone.layer4": 0.5})
    groups = parameter_groups(model, settings)
    where = {id(p): (g["lr_mult"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert where[id(named["backbone.conv1.weight"])] == (0.1, 0.05)
    assert where[id(named["backbone.bn1.weight"])] == (0.1, 0.0)  # a norm layer's
    assert where[id(named["backbone.layer2.0.downsample.0.weight"])] == (0.1, 0.0)  # a no_decay fragment
    assert where[id(named["backbone.layer4.1.conv2.weight"])] == (0.5, 0.05)  # the longer prefix wins
    assert where[id(named["head.4.weight"])] == (1.0, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert [p for g in groups for p in g["params"]] != []


def test_frozen_parameters_never_reach_the_optimizer():
    model = create_model("vit_debug_p16", "linear", num_classes=3)
    build_method("rein", {"token_length": 10}).build(model)
    optimizer = make_optimizer(model, _settings(optimizer="adamw"))
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in model.method_modules.parameters()} | {id(p) for p in model.head.parameters()} == optimized
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter of the model trains"):
        make_optimizer(model, _settings())


def test_adamw_takes_betas_eps_and_each_groups_weight_decay():
    model = create_model("resnet18", "fcn", num_classes=3)
    optimizer = make_optimizer(model, _settings(optimizer="adamw", lr=1e-4, betas=[0.8, 0.99], eps=1e-6,
                                                weight_decay=0.05, no_decay_norms=True))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["betas"] for g in optimizer.param_groups} == {(0.8, 0.99)}
    assert {g["eps"] for g in optimizer.param_groups} == {1e-6}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 0.05]


@pytest.mark.parametrize("iteration, expected", [
    (0, 1e-4 * 1e-6),  # LinearLR's start factor
    (5, 1e-4 * (1e-6 + (1 - 1e-6) * 5 / 10)),
    (10, 1e-4),  # the poly decay begins at the end of the warmup
    (55, 1e-4 * (1 - 45 / 90) ** 0.9),
    (99, 1e-4 * (1 - 89 / 90) ** 0.9),
])
def test_warmup_then_poly_over_the_rest(iteration, expected):
    settings = _settings(lr=1e-4, warmup_iters=10, warmup_ratio=1e-6)
    assert learning_rate(settings, iteration) == pytest.approx(expected, rel=1e-12)


def test_an_absolute_learning_rate_follows_the_schedule_from_its_own_base():
    model = create_model("resnet18", "fcn", num_classes=3)
    settings = _settings(lr=1e-4, iters=100, lr_abs={"backbone": 1e-6}, lr_mult={"head": 2.0})
    optimizer = make_optimizer(model, settings)
    set_learning_rate(optimizer, learning_rate(settings, 40))
    poly = (1 - 40 / 100) ** 0.9
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-6 * poly, 2e-4 * poly], rel=1e-12)
    with pytest.raises(ConfigError, match=r"train.lr_mult and train.lr_abs both set \['backbone'\]"):
        validate(apply_overrides(load_config(None), ["train.lr_mult={backbone: 0.1}", "train.lr_abs={backbone: 1e-6}"]))


def test_a_groups_multiplier_scales_its_learning_rate():
    model = create_model("resnet18", "fcn", num_classes=3)
    optimizer = make_optimizer(model, _settings(lr_mult={"backbone": 0.1}))
    set_learning_rate(optimizer, 0.02)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([0.002, 0.02])


def test_a_backbone_multiplier_leaves_what_a_method_adds_at_the_base_rate_lora_included():
    """rein_dg.yaml's `backbone: 0.1` is full fine-tuning's backbone rate: LoRA's adapters, which peft puts inside the
    backbone's layers, train at the base rate like Rein's tokens, unless `method_modules.lora` names them."""
    pytest.importorskip("peft")
    for method, options in (("lora", {}), ("rein", {"token_length": 10}), ("vpt", {"num_tokens": 5})):
        model = create_model("vit_debug_p16", "linear", num_classes=3)
        build_method(method, options).build(model)
        groups = parameter_groups(model, _settings(lr_mult={"backbone": 0.1}))
        added = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")]
        assert added and (".lora_" in added[0]) == (method == "lora")
        mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
        named = dict(model.named_parameters())
        assert {mult[id(named[n])] for n in added} == {1.0}, method
    groups = parameter_groups(model, _settings(lr_mult={"backbone": 0.1, "method_modules.vpt": 0.5}))
    assert {g["lr_mult"] for g in groups} == {0.5, 1.0}
    model = create_model("vit_debug_p16", "linear", num_classes=3)
    build_method("lora", {}).build(model)
    groups = parameter_groups(model, _settings(lr_mult={"backbone": 0.1, "method_modules.lora": 2.0}))
    lora = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    assert {g["lr_mult"] for g in groups for p in g["params"] if id(p) in lora} == {2.0}
