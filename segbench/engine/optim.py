"""The optimizer and the learning-rate schedule of a cell (`train.optimizer`, `lr`, `momentum`, `betas`, `eps`,
`weight_decay`, `no_decay`, `no_decay_norms`, `lr_mult`, `lr_abs`, `power`, `warmup_iters`, `warmup_ratio`).

Only parameters that train (requires_grad) are optimized: a method that freezes a backbone (methods/foundation.py)
hands the optimizer its own parameters and the head's. They are grouped by (learning-rate multiplier, weight decay),
in the model's parameter order, so a recipe without `no_decay` or `lr_mult` has one group of every parameter, as the
SGD of the IBN-Net and RobustNet recipes has. AdamW is torch's (decoupled weight decay), which mmengine's
OptimWrapper wraps for Rein; `no_decay` and `no_decay_norms` are mmengine's DefaultOptimWrapperConstructor
`custom_keys` with decay_mult 0 and `norm_decay_mult=0` (Rein's configs/dinov2/*.py), matched on segbench's
parameter names.

The schedule: lr x poly (1 - t / T)^power over the run, or, with a warmup, lr x (r + (1 - r) t / W) for the first
W iterations (mmengine LinearLR, start_factor r) and lr x (1 - (t - W) / (T - W))^power after (PolyLR from W to T),
each group's lr scaled by its multiplier (`lr_abs` {prefix: a} is the multiplier a / lr: the group follows the same
schedule from its own base rate).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import TrainSettings

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def multipliers(settings: TrainSettings) -> dict[str, float]:
    """{prefix: multiplier} of `lr_mult` and `lr_abs` together (config refuses a prefix in both)."""
    return {**{p: float(m) for p, m in settings.lr_mult.items()},
            **{p: float(a) / float(settings.lr) for p, a in settings.lr_abs.items()}}


#: where a method puts the parameters it adds (methods/foundation.py), and the name fragment peft gives LoRA's
#: adapters inside the backbone's own layers
METHOD_MODULES = "method_modules"
LORA_FRAGMENT = ".lora_"


def matched_name(name: str) -> str:
    """The name `lr_mult` and `lr_abs` prefixes are matched on: LoRA's adapters, which peft puts inside the backbone's
    layers, count as the method's (`method_modules.lora.`...) like Rein's tokens and VPT's prompts, so a backbone
    multiplier meant for full fine-tuning (rein_dg.yaml's `backbone: 0.1`) leaves every added parameter at the base
    rate; `method_modules.lora` scales them."""
    return f"{METHOD_MODULES}.lora.{name}" if LORA_FRAGMENT in name else name


def _multiplier(name: str, lr_mult: dict[str, float]) -> float:
    """The multiplier of the longest prefix of `name` in `lr_mult` (a prefix ends at a dot or the name's end)."""
    name = matched_name(name)
    matches = [p for p in lr_mult if name == p or name.startswith(p.rstrip(".") + ".")]
    return float(lr_mult[max(matches, key=len)]) if matches else 1.0


def parameter_groups(model: nn.Module, settings: TrainSettings) -> list[dict]:
    """The trainable parameters as optimizer groups, each with its `lr_mult` and `weight_decay`, in first-seen order."""
    in_norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    groups: dict[tuple[float, float], dict] = {}
    lr_mult = multipliers(settings)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = any(fragment in name for fragment in settings.no_decay) or (
            settings.no_decay_norms and id(param) in in_norm)
        key = (_multiplier(name, lr_mult), 0.0 if no_decay else float(settings.weight_decay))
        groups.setdefault(key, {"params": [], "lr_mult": key[0], "weight_decay": key[1]})["params"].append(param)
    if not groups:
        raise ValueError("no parameter of the model trains (every one has requires_grad off): a method froze them all")
    return list(groups.values())


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    groups = parameter_groups(model, settings)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)


def poly_lr(base_lr: float, iteration: int, total: int, power: float) -> float:
    return base_lr * (1 - iteration / total) ** power


def learning_rate(settings: TrainSettings, iteration: int) -> float:
    """The base learning rate at `iteration` (before a group's multiplier)."""
    warmup = settings.warmup_iters
    if warmup and iteration < warmup:
        ratio = settings.warmup_ratio
        return settings.lr * (ratio + (1.0 - ratio) * iteration / warmup)
    return poly_lr(settings.lr, iteration - warmup, settings.iters - warmup, settings.power)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)  # a checkpoint from before multipliers has none: 1
