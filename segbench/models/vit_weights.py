"""Weights for the DINOv2 backbones (vit.py): the official files, timm's, and Rein's converted ones, each mapped onto
segbench's keys strictly.

Formats (read from the code that writes them):
- official (facebookresearch/dinov2 `hub/backbones.py`, dl.fbaipublicfiles.com/dinov2/...): `cls_token`,
  `pos_embed` (1 + 37 x 37 positions), `mask_token` (a masked-modelling token no backbone uses: dropped),
  `patch_embed.proj` (14 x 14 kernel), `blocks.N.*`, `norm.*` (the final norm, dropped unless the backbone's
  features go through it); `register_tokens` in the `_reg4` files; ViT-g's
  feed-forward as `mlp.w12` / `mlp.w3`;
- timm's (`vit_*_patch14_dinov2.lvd142m`, `..._reg4_dinov2.lvd142m`): the same names without `mask_token`;
  `reg_token` for the registers, whose models keep the class position folded into `cls_token` and `pos_embed` over
  the patches only (timm `vision_transformer.py` _convert_dinov2), as segbench's backbones do;
- Rein's converted file (w1oves/Rein `tools/convert_models/convert_dinov2_large_512x512.py`): the official keys
  with the position grid resized 37 -> 32 and the patch kernel 14 -> 16, both bicubic without antialiasing
  (`convert_rein_p16`, which segbench applies itself to an official or timm file for the `_p16` backbones);
- any of these inside a checkpoint: {"state_dict"|"model": ...} wrappers and a `backbone.` (or other) prefix in
  front of `cls_token` are taken off; keys of other parts (a head, Rein's `reins.*`) are left to their owners.

`pretrained: dinov2` fetches the official file into torch.hub's cache (offline: the error names the URL and the
path to place it at); a path loads that file.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

DINOV2 = "dinov2"  # model.pretrained's named choice for these backbones: the official LVD-142M weights
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}{reg}_pretrain.pth"
_ANCHOR = "cls_token"


def official_url(name: str) -> str:
    """The official file of a registered DINOv2 backbone name (`_p16` variants convert the same file)."""
    from .vit import DINOV2_SPECS

    size, _, _, registers = DINOV2_SPECS[name]
    if size not in ("s", "b", "l", "g"):
        raise KeyError(f"{name!r} is not a DINOv2 release; it has no official weights")
    arch = f"dinov2_vit{size}14"
    return DINOV2_URL.format(arch=arch, reg="_reg4" if registers else "")


def _unwrap(obj: Mapping, path) -> dict[str, torch.Tensor]:
    """The flat tensor mapping inside {"state_dict"|"model": ...} wrappers."""
    while not any(torch.is_tensor(v) for v in obj.values()):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)]
        if not inner:
            raise ValueError(f"{path}: no state dict found; top-level keys: {sorted(obj)[:10]}")
        obj = inner[0]
    return dict(obj)


def vit_state(obj: Mapping, path="the file") -> dict[str, torch.Tensor]:
    """The ViT's tensors of a file or checkpoint, without the prefix in front of `cls_token`."""
    state = _unwrap(obj, path)
    prefixes = sorted(k[: -len(_ANCHOR)] for k in state if k == _ANCHOR or k.endswith("." + _ANCHOR))
    if len(prefixes) != 1:
        raise ValueError(f"{path}: cannot locate exactly one DINOv2 ViT (keys ending in {_ANCHOR!r}: "
                         f"{prefixes or 'none'}); is this a DINOv2, timm or Rein file?")
    prefix = prefixes[0]
    # a ViT's own keys: its embeddings, blocks and final norm (a head or Rein's tokens under the same prefix stay out)
    own = ("cls_token", "pos_embed", "mask_token", "register_tokens", "reg_token", "patch_embed.", "blocks.", "norm.")
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(own)}


def convert_rein_p16(state: dict[str, torch.Tensor], grid: int = 32, patch: int = 16) -> dict[str, torch.Tensor]:
    """Rein's conversion of an official (patch 14, 37 x 37) file to patch 16 on a `grid` x `grid` position grid:
    `pos_embed`'s patch positions resized bicubically (align_corners False, no antialiasing), the class position
    kept; the patch kernel resized bicubically in float32. Not timm's `resample_patch_embed` (a pseudo-inverse
    resize): Rein's weights are these."""
    out = dict(state)
    pos = state["pos_embed"]
    m = int(round((pos.shape[1] - 1) ** 0.5))
    c = pos.shape[2]
    out["pos_embed"] = torch.cat((pos[:, :1, :], F.interpolate(
        pos[:, 1:, :].reshape(1, m, m, c).permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
        align_corners=False).permute(0, 2, 3, 1).reshape(1, grid * grid, c)), dim=1)
    out["patch_embed.proj.weight"] = F.interpolate(state["patch_embed.proj.weight"].float(), size=(patch, patch),
                                                   mode="bicubic", align_corners=False)
    return out


def to_segbench(state: dict[str, torch.Tensor], backbone) -> dict[str, torch.Tensor]:
    """An official, timm or Rein-converted ViT state onto `backbone.vit`'s keys: the `_p16` conversion where the file
    is at patch 14 and the backbone at 16, registers renamed and the class position folded as timm keeps them, ViT-g's
    w12 / w3 as fc1 / fc2, the mask token dropped."""
    unused = ("mask_token",) + (() if backbone.final_norm else ("norm.weight", "norm.bias"))
    state = {k: v for k, v in state.items() if k not in unused}
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
    state = {k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v for k, v in state.items()}
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.shape[-1] != backbone.patch_size and backbone.patch_size == 16:
        with_cls = state["pos_embed"].shape[1] == _square(state["pos_embed"].shape[1] - 1) + 1
        if not with_cls:  # a timm register file: put a zero class position back for the conversion's split
            state["pos_embed"] = torch.cat([torch.zeros_like(state["pos_embed"][:, :1]), state["pos_embed"]], 1)
        state = convert_rein_p16(state, backbone.grid, backbone.patch_size)
        if not with_cls:
            state["pos_embed"] = state["pos_embed"][:, 1:]
    if backbone.registers and state["pos_embed"].shape[1] == backbone.grid ** 2 + 1:
        state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]  # timm's no_embed_class layout
        state["pos_embed"] = state["pos_embed"][:, 1:]
    return state


def _square(n: int) -> int:
    root = int(round(n ** 0.5))
    return root * root


def load_dinov2(backbone, name: str, pretrained) -> None:
    """`pretrained` = 'dinov2' (the official file, fetched into torch.hub's cache) or a path, loaded strictly."""
    from ..engine.frozen_weights import loaded_from
    from .pretrained import IMAGENET, SCRATCH_HINT, TORCHVISION, PretrainedWeightsError, cache_path, download

    if str(pretrained) in (IMAGENET, TORCHVISION):
        raise PretrainedWeightsError(f"model.pretrained={pretrained!r} names ResNet weights; {name} takes "
                                     f"'{DINOV2}' (the official LVD-142M file), a file path, or null")
    if str(pretrained) == DINOV2:
        url = official_url(name)
        path = cache_path(url)
        if not path.exists():
            try:
                download(url, path)
            except OSError as err:
                raise PretrainedWeightsError(
                    f"could not download the DINOv2 weights for {name!r} ({err}).\n  URL: {url}\n"
                    f"  Offline? Put the file at: {path}\n  Or train from scratch: {SCRATCH_HINT}") from err
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained file {path} does not exist (or use '{DINOV2}', or "
                                         f"{SCRATCH_HINT})")
    try:
        state = to_segbench(vit_state(torch.load(path, map_location="cpu", weights_only=True), path), backbone)
    except ValueError as e:
        raise PretrainedWeightsError(str(e)) from None
    ours = backbone.vit.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    shapes = sorted(k for k in set(ours) & set(state) if ours[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(part for part in (
            missing and f"missing {missing[:4]}", unexpected and f"unexpected {unexpected[:4]}",
            shapes and "other shapes: " + ", ".join(f"{k} {tuple(state[k].shape)} here {tuple(ours[k].shape)}"
                                                    for k in shapes[:3])) if part)
        raise PretrainedWeightsError(
            f"{path} does not fit backbone {name!r} ({detail}): give the file of this size and variant (ViT-S/B/L/g, "
            f"with or without registers); official, timm and Rein-converted files are read")
    backbone.vit.load_state_dict(state, strict=True)
    loaded_from(backbone, path, backbone.vit.parameters())  # what a frozen-backbone method's weights files leave out
