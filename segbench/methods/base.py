"""The method contract: what a domain-generalization method may change in one cell's training, as five hooks.

A method is a small class registered by name (`@METHODS.register("name")`, or a `segbench.methods` entry point), with
`defaults` for its options. The runner calls, in this order:

1. `transform_image(image, rng)`: each training image at full resolution, before crop and photometric augmentation
   (PASTA). `rng` is seeded per sample, so a resumed run draws exactly what an uninterrupted one did.
2. `build(model)`: once, on the freshly built (pretrained) model, before training and before trained weights are loaded
   for scoring: insert or replace modules at named places of the backbone (`places.py`: MixStyle, DSU, IW/ISW, SW).
   Whatever must survive a restart lives in those modules' parameters or buffers, so checkpoints carry it.
3. `before_step(model, iteration, run)`: before each optimizer step (ISW's statistics pass at its scheduled iteration).
4. `before_forward(model, batch)`: before each micro-batch's forward pass, with the `Batch` the loss will see, whose
   `domains` say which source part each sample came from: a module that runs inside the forward pass and needs them
   gets them here (MixStyle's cross-domain mixing).
5. `losses(model, outputs, batch, iteration)`: extra loss terms added to the segmentation loss (IW/ISW whitening).

ERM, plain training, is this class with no hook overridden; every method option is part of the cell id.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..config import ERM
from ..registry import Registry

#: an unknown name's message says where methods from outside segbench come from
METHODS = Registry("method", hint="a method defined outside segbench is found once its module or .py file is named "
                                  "in $SEGBENCH_METHODS (or its package declares a segbench.methods entry point)")

#: entry points a separately installed package declares to add methods (like `segbench.datasets`)
ENTRY_POINT_GROUP = "segbench.methods"


@dataclasses.dataclass
class Batch:
    """One micro-batch as the loss sees it: image (normalised) and target on the device; `domains`, the source part
    of each sample (its index among a multi-source dataset's parts, 0 for a single source), on the CPU, where
    methods draw their pairings. None where the caller has no such record."""

    image: torch.Tensor
    target: torch.Tensor
    domains: torch.Tensor | None = None


@dataclasses.dataclass
class TrainRun:
    """What `before_step` may use besides the model: the source dataset as the cell opened it (`load_pair(i)` gives a
    full-resolution uint8 image and its label), the normalisation the model expects, and where the run is."""

    dataset: Any
    normalize: Callable[[np.ndarray], torch.Tensor]  # H x W x 3 uint8 -> 3 x H x W float, ImageNet-normalised
    device: torch.device
    seed: int
    iters: int
    batch_size: int  # the global batch
    pretrained: str | None = None  # the `model.pretrained` setting: which initial weights the model started from


class MethodError(ValueError):
    """A method that cannot run as configured (a bad option, a backbone it cannot be placed in); says the fix."""


class OptionError(MethodError):
    """An option value a method cannot use on any backbone (an unknown place or mode): the option is to change."""


class Method:
    """Plain training (ERM); subclasses override the hooks they need and declare `defaults`."""

    name: ClassVar[str] = ERM
    paper: ClassVar[str] = "empirical risk minimisation: plain supervised training on the source"
    code: ClassVar[str] = ""  # the official repository and file the method reproduces
    defaults: ClassVar[dict[str, Any]] = {}
    #: raised when a fix changes what the method trains under the same options, so the cells it trained before get
    #: new ids (Cell.method_revision) and are not reported as today's method; 1 is left out of ids and records
    revision: ClassVar[int] = 1

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise MethodError(f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                              f"{valid}")
        self.options = {**self.defaults, **options}

    def transform_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image

    @property
    def transforms_image(self) -> bool:
        """True when the method overrides `transform_image` (the loader then calls it)."""
        return type(self).transform_image is not Method.transform_image

    def build(self, model: nn.Module) -> None:
        pass

    def source_problem(self, sources: list[str]) -> str | None:
        """Why this method cannot train on these source datasets (the parts of one spec's source), or None; the
        study's validation asks before any work."""
        return None

    def before_step(self, model: nn.Module, iteration: int, run: TrainRun) -> None:
        pass

    def before_forward(self, model: nn.Module, batch: Batch) -> None:
        pass

    def losses(self, model: nn.Module, outputs: dict, batch: Batch, iteration: int) -> dict[str, torch.Tensor]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"


METHODS.add(ERM, Method)


def build_method(name: str, options: dict | None = None) -> Method:
    """The method `name` with `options` over its defaults (KeyError lists the valid names); methods from outside
    segbench ($SEGBENCH_METHODS, entry points) are looked for first when the name is not known yet."""
    if name not in METHODS:
        from . import load_plugins  # here: the package imports this module

        load_plugins()
    return METHODS.get(name)(**(options or {}))


def method_options(name: str, overrides: dict | None = None) -> dict:
    """A method's effective options: its defaults with the study's `method.NAME.*` settings on top."""
    return build_method(name, overrides).options
