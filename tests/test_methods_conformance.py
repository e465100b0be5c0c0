"""Every registered method on every backbone family, through one real training step (engine.train.train) and one
scoring pass (engine.scoring.evaluate), with hooks that clone what the method's modules receive and produce:

- what each module received is what its place means (places.py): the backbone's input, conv1's output, the stem's
  ReLU output, a stage's output, the stem norm's input, or a last block's residual sum, recomputed here from the
  tensors the backbone's own modules produced in the same forward pass;
- nothing a method module produced, nor anything a method keeps for its loss (IW/ISW's InstanceNorm output, SHADE's
  input and layer4), has been changed in place by the time the loss reads it, nor after the step.

So a future change to a block (an in-place op, a reordered norm) cannot silently change what a method sees: the
in-place ReLU after a whitening slot, which made IW's loss read post-ReLU features, fails here. The methods are taken
from the registry, so a new one is covered; `OPTIONS` makes each one act on every call (p = 1) and run its
scheduled passes within the one step.
"""
from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch
from torch import nn

from segbench.config import TrainSettings
from segbench.data import build_dataset
from segbench.data.adapters import synthetic
from segbench.data.transforms import build_train_transform
from segbench.engine.scoring import evaluate, prepare_for_scoring
from segbench.engine.train import train
from segbench.methods import METHODS, MethodError, build_method, resnet_of
from segbench.models import HEADS, create_model
from segbench.models.resnet import SPECS, ResNet

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["resnet18", "resnet50", "resnet18_ibn_a", "resnet18_ibn_b", "resnext101_ibn_a", "se_resnet101_ibn_a",
            "vit_debug_p16"]
#: methods that train only what they add (and the head): the backbone's own weights end the step as they began
ADAPTING = {"frozen", "rein", "vpt", "lora"}
#: the bottleneck families are built with two blocks per stage: the same block code (bottleneck, grouped
#: convolutions, the SE gate, IBN-a), which decides what a place receives, in a fraction of the time
SHALLOW = {"resnet50", "resnext101_ibn_a", "se_resnet101_ibn_a"}
#: options under which each method acts on every call and runs its scheduled pass inside a one-step run
OPTIONS = {"isw": {"stat_epochs": 0.0, "stat_images": 2, "trials": 1}, "mixstyle": {"p": 1.0},
           "dsu": {"p": 1.0}, "np": {"p": 1.0}, "shade": {"basis_images": 2, "basis_styles": 4}}
#: method options that put modules at every place kind, beyond the defaults (dsu's `input`, np at `stem`)
EXTRA = [("dsu", {"p": 1.0, "places": ["input", "stem"]})]
CROP = (32, 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "SPLIT_SIZES", {"train": 2, "val": 1})
        source, target = build_dataset("sim", "train", root), build_dataset("sim", "val", root)
    prepare_for_scoring(target, {})
    return source, target


class Tape:
    """Forward hooks that clone, per module, the tensors each call received and produced (and keep the produced
    tensor itself, to find later in-place changes). Hooks on the backbone's own modules run before the method's
    (prepend), so they see the raw output the method's module is then given."""

    def __init__(self):
        self.calls: dict[str, list[dict]] = defaultdict(list)
        self.handles = []

    def watch(self, name: str, module: nn.Module) -> None:
        def record(_module, inputs, output):
            self.calls[name].append({"input": inputs[0].detach().clone() if inputs else None,
                                     "output": output, "output_clone": output.detach().clone(),
                                     "training": _module.training})

        def record_input(_module, inputs):
            self.calls[name + ".input"].append({"input": inputs[0].detach().clone()})

        self.handles.append(module.register_forward_hook(record, prepend=True))
        self.handles.append(module.register_forward_pre_hook(record_input, prepend=True))

    def assert_outputs_intact(self, names) -> None:
        for name in names:
            for k, call in enumerate(self.calls[name]):
                assert torch.equal(call["output"], call["output_clone"]), (
                    f"the output of {name} (call {k}) was changed in place after it was produced")


def _last_norm(block: nn.Module) -> nn.Module:
    """The module whose output the residual addition takes: the SE gate, else bn3 (bottleneck) or bn2 (basic)."""
    return block.se if getattr(block, "se", None) is not None else getattr(block, "bn3", block.bn2)


def _method_modules(model: nn.Module, method_name: str, before: set[int]) -> dict[str, nn.Module]:
    """place -> module, for every module the method added (found by identity against the plain model's modules)."""
    resnet = resnet_of(model)
    placed = {place: m for place, m in getattr(model, "method_modules", {}).items()}
    if id(resnet.bn1) not in before:
        placed["stem.norm"] = resnet.bn1
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        block = getattr(resnet, stage)[-1]
        if block.IN is not None and id(block.IN) not in before:
            placed[f"{stage}.post_add"] = block.IN
    return placed


def _expected_inputs(tape: Tape, place: str) -> list[torch.Tensor]:
    """What the module at `place` should have received, call by call, from the backbone's own tensors."""
    if place == "input":
        return [c["input"] for c in tape.calls["conv1.input"]]
    if place in ("conv1", "stem.norm"):
        return [c["output_clone"] for c in tape.calls["conv1"]]
    if place == "stem":
        return [c["output_clone"] for c in tape.calls["relu"]]
    if place.endswith(".post_add"):
        stage = place.split(".")[0]
        sums = []
        residuals = tape.calls[f"{stage}.last.downsample"] or tape.calls[f"{stage}.last.input"]
        for branch, residual in zip(tape.calls[f"{stage}.last.norm"], residuals):
            sums.append(branch["output_clone"] + residual.get("output_clone", residual["input"]))
        return sums
    return [c["output_clone"] for c in tape.calls[place]]


def _model(family: str) -> nn.Module:
    if family.startswith("vit_"):
        return create_model(family, "linear")
    if family not in SHALLOW:
        return create_model(family, "fcn")
    spec = HEADS.get("fcn")
    return spec.build(ResNet(output_stride=spec.default_output_stride, **{**SPECS[family], "layers": (2, 2, 2, 2)}),
                      19, False)


def _cases():
    names = METHODS.names()
    for family in FAMILIES:
        for name in names:
            yield pytest.param(family, name, OPTIONS.get(name, {}), id=f"{family}-{name}")
        for name, options in EXTRA:
            yield pytest.param(family, name, options, id=f"{family}-{name}-extra")


@pytest.mark.parametrize("family, name, options", list(_cases()))
def test_each_method_module_receives_what_its_place_means_and_nothing_it_keeps_is_overwritten(
        family, name, options, data, tmp_path):
    source, target = data
    torch.manual_seed(0)
    model = _model(family)
    before = {id(m) for m in model.modules()}
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    method = build_method(name, options)
    try:
        method.build(model)
    except MethodError as e:  # refused with the fix: a slot IBN-b already fills, a ViT method on a ResNet, or back
        assert (family.endswith("_ibn_b") and "use a plain ResNet or an IBN-a backbone" in str(e)) or \
               ("use a dinov2_* backbone" in str(e)) or (family.startswith("vit_") and "ResNet" in str(e)), str(e)
        return
    if family.startswith("vit_"):
        _step_and_score(model, method, source, target, tmp_path)
        _assert_what_trained(model, name, backbone_before)
        return
    placed = _method_modules(model, name, before)
    resnet = resnet_of(model)
    tape = Tape()
    for part in ("conv1", "relu", *(f"layer{i}" for i in range(1, 5)), "maxpool"):
        tape.watch(part, getattr(resnet, part))
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        block = getattr(resnet, stage)[-1]
        tape.watch(f"{stage}.last", block)
        tape.watch(f"{stage}.last.norm", _last_norm(block))
        if block.downsample is not None:
            tape.watch(f"{stage}.last.downsample", block.downsample)
    for place, module in placed.items():
        tape.watch(f"method:{place}", module)
    if hasattr(method, "_tap"):
        tape.watch("layer4.kept", resnet.layer4)

    kept_checks = []
    real_losses = method.losses

    def losses_after_checking(model_, outputs, batch, iteration):
        """When the loss reads the kept tensors: each equals what its module produced in this forward."""
        tape.assert_outputs_intact([f"method:{p}" for p in placed])
        for place, module in placed.items():
            if hasattr(module, "output") and module.training:
                assert module.output is tape.calls[f"method:{place}"][-1]["output"]
                kept_checks.append(place)
        if getattr(method, "_tap", None) is not None and method._tap.layer4 is not None:
            assert torch.equal(method._tap.layer4, tape.calls["layer4"][-1]["output_clone"])
            assert torch.equal(method._tap.input, tape.calls["conv1.input"][-1]["input"])
            kept_checks.append("shade")
        return real_losses(model_, outputs, batch, iteration)

    method.losses = losses_after_checking
    images_seen = []
    if method.transforms_image:
        real_transform = method.transform_image
        method.transform_image = lambda image, rng: images_seen.append(image.shape) or real_transform(image, rng)
    _step_and_score(model, method, source, target, tmp_path)
    _assert_what_trained(model, name, backbone_before)

    assert placed or name in ("erm", "pasta", "frozen", "full"), f"{name} placed no module"
    for place in placed:
        calls = tape.calls[f"method:{place}"]
        expected = _expected_inputs(tape, place)
        assert calls and any(c["training"] for c in calls) and not calls[-1]["training"]  # a step, then scoring
        assert len(calls) == len(expected), place
        for k, (call, want) in enumerate(zip(calls, expected)):
            assert torch.equal(call["input"], want), f"{name} at {place}: call {k} received another tensor"
    tape.assert_outputs_intact([f"method:{p}" for p in placed])
    if name in ("iw", "irw", "isw"):
        assert sorted(set(kept_checks)) == sorted(placed)  # the loss read every whitening layer's own output
    if name == "shade":
        assert "shade" in kept_checks
    if method.transforms_image:
        assert images_seen and all(shape == (96, 192, 3) for shape in images_seen)  # full frames, before the crop


def _step_and_score(model, method, source, target, tmp_path) -> None:
    """One real training step (engine.train.train) and one scoring pass (engine.scoring.evaluate)."""
    settings = TrainSettings(iters=1, batch_size=2, workers=0, ckpt_every=0, crop=CROP, amp=False)
    transform = build_train_transform(CROP, image_method=method.transform_image if method.transforms_image else None)
    train(model, source, transform, settings, seed=0, device=torch.device("cpu"), ckpt_dir=tmp_path / "ck",
          identity={}, method=method, pretrained="imagenet-like (SHADE's retrospection needs some)")
    evaluate(model, target, device=torch.device("cpu"), workers=0)


def _assert_what_trained(model, name, backbone_before) -> None:
    """An adapting method leaves every weight the backbone had before it was built as it was (its own parameters
    and the head train); the others move the backbone. BatchNorm's running statistics count as weights here."""
    after = model.backbone.state_dict()
    kept = [k for k, v in backbone_before.items() if k in after and torch.equal(after[k], v)]
    moved = [k for k, v in backbone_before.items() if k in after and not torch.equal(after[k], v)]
    if name in ADAPTING:
        assert not moved, f"{name} changed backbone weights {moved[:3]}"
        lora = [k for k in backbone_before if k not in after]  # peft renames qkv.weight to qkv.base_layer.weight
        for key in lora:
            assert torch.equal(after[key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")],
                               backbone_before[key]), key
    else:
        assert moved, f"{name} trained no backbone weight"
