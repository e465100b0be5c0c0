"""Named places in a ResNet backbone where a method puts its modules, without touching the backbone's own code.

Places (a segbench ResNet, an IBN variant, or an smp encoder with torchvision's module names):
  "input"                the image the backbone receives, before conv1
  "conv1"                output of conv1, before the stem's norm (DSU's official position 0)
  "stem"                 output of conv1-bn1-relu (before max pooling)
  "maxpool"              output of the max pooling
  "layer1" .. "layer4"   output of each stage
  "stem.norm"            the stem's BatchNorm itself, replaced (RobustNet's `--wt_layer` slot 2)
  "layerN.post_add"      inside the stage's last block, after the residual addition, before the final ReLU
                         (RobustNet's slots 3-6: shachoi/RobustNet network/Resnet.py; where IBN-b puts its IN)

Modules inserted after an output are registered under `model.method_modules` (state-dict keys
`method_modules.<place>.*`) and run by a forward hook on the module that produces that output (a pre-hook on conv1
for "input"), so the backbone keeps its own keys and pretrained weights load unchanged. Replacements take the
replaced module's name.

The ReLU after a replaced or post-addition slot stops working in place once a module sits there (RobustNet builds
it with `inplace=False` for its whitening slots, network/Resnet.py): an in-place ReLU would overwrite that module's
output, so a loss or a hook that keeps the output (IW/ISW's covariance) would read post-ReLU features instead.
"""
from __future__ import annotations

from torch import nn

from .base import MethodError, OptionError

OUTPUT_PLACES = ("input", "conv1", "stem", "maxpool", "layer1", "layer2", "layer3", "layer4")
_STAGES = ("layer1", "layer2", "layer3", "layer4")
_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", *_STAGES)
#: every place a method option may name
PLACES = (*OUTPUT_PLACES, "stem.norm", *(f"{stage}.post_add" for stage in _STAGES))


def check_place(place: object) -> str:
    """`place` when it is one of PLACES, else OptionError naming it and the valid ones."""
    if place not in PLACES:
        raise OptionError(f"unknown place {place!r}; places: {', '.join(PLACES)}")
    return place


def resnet_of(model: nn.Module) -> nn.Module:
    """The model's ResNet (the first sub-module with a stem and four stages), or MethodError."""
    for module in model.modules():
        if all(hasattr(module, part) for part in _RESNET_PARTS):
            return module
    raise MethodError(f"{type(model).__name__} holds no ResNet-like backbone (modules {', '.join(_RESNET_PARTS)}); "
                      "segbench's methods place their modules in ResNet backbones only")


class _RunAfter:
    """A forward hook that passes the hooked module's output through `module` (a class, not a closure, so the hook
    names what it runs in a debugger)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, _hooked: nn.Module, _inputs, output):
        return self.module(output)


class _RunBefore:
    """A forward pre-hook that passes the hooked module's input through `module`."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, _hooked: nn.Module, inputs):
        return (self.module(inputs[0]), *inputs[1:])


def insert_after(model: nn.Module, place: str, module: nn.Module) -> nn.Module:
    """Run `module` on the output at `place` (one of OUTPUT_PLACES; "input": on the backbone's input); returns
    `module`."""
    if place not in OUTPUT_PLACES:
        raise OptionError(f"unknown place {place!r}; places after an output: {', '.join(OUTPUT_PLACES)}")
    resnet = resnet_of(model)
    if not hasattr(model, "method_modules"):
        model.method_modules = nn.ModuleDict()
    if place in model.method_modules:
        raise MethodError(f"place {place!r} already holds {type(model.method_modules[place]).__name__}")
    model.method_modules[place] = module
    if place == "input":
        resnet.conv1.register_forward_pre_hook(_RunBefore(module))
    else:
        producer = resnet.relu if place == "stem" else getattr(resnet, place)
        producer.register_forward_hook(_RunAfter(module))
    return module


def replace_stem_norm(model: nn.Module, module: nn.Module) -> nn.Module:
    """Put `module` in place of the stem's BatchNorm; MethodError when the stem holds something else (IBN-b's IN)."""
    resnet = resnet_of(model)
    if type(resnet.bn1) is not nn.BatchNorm2d:
        raise MethodError(f"the stem norm of this backbone is {type(resnet.bn1).__name__}, not BatchNorm2d: this method "
                          "replaces a BatchNorm there (use a plain ResNet or an IBN-a backbone)")
    resnet.bn1 = module
    resnet.relu.inplace = False  # the stem's ReLU: see the module docstring
    return module


def set_post_add(model: nn.Module, stage: str, module: nn.Module) -> nn.Module:
    """Put `module` after the residual addition of `stage`'s last block; MethodError when that slot is taken."""
    if stage not in _STAGES:
        raise OptionError(f"unknown stage {stage!r}; stages: {', '.join(_STAGES)}")
    block = getattr(resnet_of(model), stage)[-1]
    if not hasattr(block, "IN"):
        raise MethodError("the blocks of this backbone have no post-addition slot (`IN`): a segbench ResNet is needed")
    if block.IN is not None:
        raise MethodError(f"{stage}'s last block of this backbone already holds {type(block.IN).__name__} after the "
                          "residual addition (IBN-b): this method puts its own module there (use a plain ResNet or "
                          "an IBN-a backbone)")
    block.IN = module
    block.relu.inplace = False  # the block's ReLU, after the slot as after its convs: see the module docstring
    return module


def place_module(model: nn.Module, place: str, module: nn.Module) -> nn.Module:
    """Put `module` at any place above: after an output, in place of the stem norm, or after a stage's last addition."""
    check_place(place)
    if place == "stem.norm":
        return replace_stem_norm(model, module)
    if place.endswith(".post_add"):
        return set_post_add(model, place.split(".")[0], module)
    return insert_after(model, place, module)


def place_channels(model: nn.Module, place: str) -> int:
    """Channels of the feature map at a place of the model's ResNet."""
    check_place(place)
    resnet = resnet_of(model)
    if place == "input":
        return resnet.conv1.in_channels
    if place in ("conv1", "stem", "stem.norm", "maxpool"):
        return resnet.conv1.out_channels
    block = getattr(resnet, place.split(".")[0])[-1]
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features
