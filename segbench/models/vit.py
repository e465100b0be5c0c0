"""DINOv2 vision transformers (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023) as
segmentation backbones, on timm's VisionTransformer.

The layers are timm's (`timm.models.vision_transformer.VisionTransformer`, whose parameter names are the official
ones: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2,
mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`; timm's `reg_token` is the official `register_tokens`). What a segmentation
backbone needs around them follows Rein's DINOv2 (w1oves/Rein `rein/models/backbones/dino_v2.py`):

- features are the raw outputs of the blocks at `out_indices` (Rein's 7, 11, 15, 23 on ViT-L; no final norm unless
  `final_norm`), patch tokens only, reshaped to B x C x H/p x W/p, then resampled bilinearly by 4, 2, 1 and 1/2
  (`DinoVisionTransformer.forward`), a pyramid at strides p/4, p/2, p and 2p (4 / 8 / 16 / 32 at patch 16);
- the position embedding is resized to the input's grid as the official code does it (facebookresearch/dinov2
  `vision_transformer.py` interpolate_pos_encoding): bicubic with scale factor (n + 0.1) / M and no antialiasing for
  the models without registers, to the exact size with antialiasing for the `_reg4` ones; identity at the native
  grid. timm's own dynamic resize (exact size, antialiased) differs from the first at every other size, so it is
  not used;
- the `_p16` backbones are Rein's geometry: patch 16 on a 32 x 32 grid (512 x 512 inputs), official weights
  converted as `tools/convert_models/convert_dinov2_large_512x512.py` does (pretrained.py `convert_rein_p16`).

Blocks are plain modules in `vit.blocks`, so methods hook them without renaming a key (methods/peft.py: Rein's
tokens after every block, VPT's prompts before each one). The prompt or register tokens sit between the class token
and the patch tokens, and features always take the last H x W tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .registries import BACKBONES

#: the resampling of Rein's DinoVisionTransformer.forward: the four stride-p maps -> strides p/4, p/2, p, 2p
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)
DINOV2_PATCH, DINOV2_GRID = 14, 37  # the official checkpoints: 518 x 518 inputs, a 37 x 37 position grid
REIN_PATCH, REIN_GRID = 16, 32  # Rein's conversion: 512 x 512 inputs
REIN_GRID_1024 = 64  # Rein's conversion for its 1024 x 1024 configs (convert_dinov2_large_1024x1024.py)


@dataclass(frozen=True)
class ViTSpec:
    """One DINOv2 size (facebookresearch/dinov2 hub/backbones.py, models/vision_transformer.py vit_*)."""

    embed_dim: int
    depth: int
    num_heads: int
    out_indices: tuple[int, ...]
    swiglu: bool = False  # ViT-g's fused SwiGLU feed-forward (timm's SwiGLUPacked)
    extra: dict = field(default_factory=dict)


#: out_indices: Rein's ViT-L choice (0-based 7, 11, 15, 23: blocks 8, 12, 16 and 24 of 24), kept at the same
#: fractions of depth for the other sizes (Rein publishes only ViT-L)
SIZES = {
    "s": ViTSpec(384, 12, 6, (3, 5, 7, 11)),
    "b": ViTSpec(768, 12, 12, (3, 5, 7, 11)),
    "l": ViTSpec(1024, 24, 16, (7, 11, 15, 23)),
    "g": ViTSpec(1536, 40, 24, (12, 19, 25, 39), swiglu=True),
    # not a DINOv2 release: a 4-block, 64-wide ViT of the same layout, for tests and the embedded domains on a CPU
    "debug": ViTSpec(64, 4, 2, (0, 1, 2, 3)),
}


def dinov2_pos_resize(pos: torch.Tensor, rows: int, cols: int, antialias: bool, offset: float) -> torch.Tensor:
    """A 1 x M*M x C patch position embedding resized to rows x cols as facebookresearch/dinov2's
    interpolate_pos_encoding does: bicubic, by scale factor (n + offset) / M when offset is set (the released
    models without registers: 0.1, no antialiasing), else to the exact size (the `_reg` models: antialiased)."""
    n, c = pos.shape[1], pos.shape[2]
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"a position embedding of {n} patches is not a square grid")
    if (rows, cols) == (m, m):
        return pos
    grid = pos.reshape(1, m, m, c).permute(0, 3, 1, 2).float()
    kwargs = ({"scale_factor": ((rows + offset) / m, (cols + offset) / m)} if offset else {"size": (rows, cols)})
    out = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(out.shape[-2:]) != (rows, cols):
        raise AssertionError(f"resized the position grid to {tuple(out.shape[-2:])}, wanted {(rows, cols)}")
    return out.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, c)


class DinoV2Backbone(nn.Module):
    """A DINOv2 ViT returning Rein's four-level feature pyramid (see the module docstring).

    `out_channels` is (C, C, C, C); `output_stride` the coarsest level's stride, 2 x patch. The model pads inputs to a
    multiple of the patch size (`size_divisor`, read by segbench's Segmenter)."""

    def __init__(self, spec: ViTSpec, patch_size: int = DINOV2_PATCH, grid: int = DINOV2_GRID, registers: int = 0,
                 final_norm: bool = False, checkpointing: bool = False):
        super().__init__()
        from timm.layers import SwiGLUPacked
        from timm.models.vision_transformer import VisionTransformer

        mlp = dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=2.66667 * 2) if spec.swiglu else {}
        # no_embed_class with registers: timm keeps the class token's position folded into cls_token
        # (timm's _convert_dinov2 does the same to the official file), so the position grid holds patches only
        self.vit = VisionTransformer(img_size=grid * patch_size, patch_size=patch_size, embed_dim=spec.embed_dim,
                                     depth=spec.depth, num_heads=spec.num_heads, init_values=1e-5, num_classes=0,
                                     global_pool="", reg_tokens=registers, no_embed_class=registers > 0,
                                     dynamic_img_size=True, **mlp,
                                     # on the meta device (counting, validation) there are no values to initialise:
                                     # timm's init would take 10 s of `segbench models`
                                     weight_init="skip" if torch.empty(0).device.type == "meta" else "")
        if not final_norm:  # features never pass through it: no parameter without a gradient (DDP refuses those)
            self.vit.norm = nn.Identity()
        self.spec, self.patch_size, self.grid, self.registers = spec, patch_size, grid, registers
        self.out_indices = tuple(spec.out_indices)
        self.final_norm = final_norm
        self.checkpointing = checkpointing
        self.size_divisor = patch_size

    @property
    def out_channels(self) -> tuple[int, int, int, int]:
        return (self.spec.embed_dim,) * 4

    @property
    def output_stride(self) -> int:
        return int(self.patch_size / PYRAMID_SCALES[-1])

    @property
    def blocks(self) -> nn.ModuleList:
        return self.vit.blocks

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Image -> [cls, registers, patches] tokens with their positions, and the patch grid (rows, cols)."""
        vit = self.vit
        patches = vit.patch_embed(x)  # B x rows x cols x C (dynamic_img_size)
        b, rows, cols, c = patches.shape
        patches = patches.reshape(b, rows * cols, c)
        pos = vit.pos_embed
        if self.registers:  # timm's layout: the grid only, the class position folded into cls_token
            patches = patches + dinov2_pos_resize(pos, rows, cols, antialias=True, offset=0.0)
            cls = vit.cls_token.expand(b, -1, -1)
            return torch.cat([cls, vit.reg_token.expand(b, -1, -1), patches], 1), rows, cols
        patches = patches + dinov2_pos_resize(pos[:, 1:], rows, cols, antialias=False, offset=0.1)
        cls = (vit.cls_token + pos[:, :1]).expand(b, -1, -1)
        return torch.cat([cls, patches], 1), rows, cols

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"a ViT with patch {self.patch_size} needs H and W divisible by {self.patch_size}, got "
                             f"{tuple(x.shape[-2:])} (segbench's Segmenter pads to its size_divisor)")
        tokens, rows, cols = self.tokens(x)
        self.patches = rows * cols  # the last tokens of every block's output are the patches (methods read this)
        levels = []
        for index, block in enumerate(self.vit.blocks):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in self.out_indices:
                patches = tokens[:, -rows * cols:]
                if self.final_norm:
                    patches = self.vit.norm(patches)
                levels.append(patches.transpose(1, 2).reshape(x.shape[0], -1, rows, cols))
        return [level if scale == 1.0 else F.interpolate(level, scale_factor=scale, mode="bilinear",
                                                         align_corners=False)
                for level, scale in zip(levels, PYRAMID_SCALES)]


#: name -> (size, patch, grid, registers): the official DINOv2 models (patch 14, 37 x 37 grid), with four registers
#: (`_reg4`), and at Rein's patch 16 (`_p16`: a 32 x 32 grid, weights converted by pretrained.convert_rein_p16;
#: `_p16_1024`: the 64 x 64 grid of Rein's 1024 x 1024 configs)
DINOV2_SPECS: dict[str, tuple[str, int, int, int]] = {}
for _size in ("s", "b", "l", "g"):
    for _reg in (0, 4):
        _base = f"dinov2_vit{_size}14" + ("_reg4" if _reg else "")
        DINOV2_SPECS[_base] = (_size, DINOV2_PATCH, DINOV2_GRID, _reg)
        DINOV2_SPECS[f"{_base}_p16"] = (_size, REIN_PATCH, REIN_GRID, _reg)
        DINOV2_SPECS[f"{_base}_p16_1024"] = (_size, REIN_PATCH, REIN_GRID_1024, _reg)
DINOV2_SPECS["vit_debug_p14"] = ("debug", DINOV2_PATCH, 8, 0)
DINOV2_SPECS["vit_debug_p16"] = ("debug", REIN_PATCH, 8, 0)


def _factory(name: str, size: str, patch: int, grid: int, registers: int):
    def build(output_stride: int | None = None) -> DinoV2Backbone:
        model = DinoV2Backbone(SIZES[size], patch, grid, registers)
        if output_stride is not None and output_stride != model.output_stride:
            raise ValueError(f"{name} gives a fixed pyramid (strides {patch / 4:g}, {patch / 2:g}, {patch}, "
                             f"{2 * patch}): model.output_stride must be null or {model.output_stride}, got "
                             f"{output_stride}")
        return model

    build.fixed_output_stride = int(patch / PYRAMID_SCALES[-1])
    build.__name__ = name
    build.__doc__ = (f"{name}: DINOv2 ViT-{size.upper()} (patch {patch}, {grid} x {grid} position grid"
                     f"{f', {registers} registers' if registers else ''}), random init; model.pretrained loads "
                     "weights (models/pretrained.py).")
    return build


for _name, (_size, _patch, _grid, _reg) in DINOV2_SPECS.items():
    BACKBONES.add(_name, _factory(_name, _size, _patch, _grid, _reg))
