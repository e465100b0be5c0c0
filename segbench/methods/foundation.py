"""Parameter-efficient fine-tuning of a vision foundation model, on the methods axis: `frozen`, `full`, `rein`,
`lora`, `vpt`. Each decides which parameters train and what it adds; the head always trains.

- frozen: the backbone's parameters never train and it stays in eval mode (Rein's FrozenBackboneEncoderDecoder,
  w1oves/Rein `rein/models/segmentors/frozen_encoder_decoder.py`; for a ViT eval mode changes nothing, for a ResNet
  it keeps BatchNorm's running statistics).
- full: everything trains (Rein's `configs/dinov2/dinov2_mask2former_512x512_bs1x4.py`: the backbone at the head's
  learning rate, no multiplier).
- rein: Rein (Wei et al., "Stronger, Fewer, & Superior: Harnessing Vision Foundation Models for Domain Generalized
  Semantic Segmentation", CVPR 2024), `LoRAReins` of `rein/models/backbones/reins.py` applied after every block as
  `reins_dinov2.py` applies it; only its parameters (and the head) train.
- lora: LoRA (Hu et al., ICLR 2022) on the attention's `qkv` (and optionally `proj`, `fc1`, `fc2`) through the `peft`
  package (`inject_adapter_in_model`, its route for models that are not transformers'); only the adapters train.
- vpt: VPT-deep (Jia et al., "Visual Prompt Tuning", ECCV 2022; KMnP/vpt `src/models/vit_prompt/vit.py`): learned
  prompt tokens after the class (and register) tokens, replaced before every block; only the prompts train.

Where each differs from its official code is listed in its class docstring. A frozen part is frozen by
`freeze(module)`: requires_grad off (so the optimizer and DDP never see it) and a forward pre-hook that keeps it in
eval mode whatever `model.train()` says, as the official `train()` overrides do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import METHODS, Method, MethodError, OptionError


class KeepEval:
    """Forward pre-hook: the module runs in eval mode, however its parent's train() set it (a class, not a closure,
    so a deep copy of the model keeps working hooks)."""

    def __call__(self, module: nn.Module, _inputs) -> None:
        if module.training:
            module.eval()


def freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.register_forward_pre_hook(KeepEval())
    module.eval()


def vit_of(model: nn.Module):
    """The model's DINOv2 backbone, or MethodError naming what the method needs."""
    from ..models.vit import DinoV2Backbone

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, DinoV2Backbone):
        raise MethodError(f"this method adapts a vision transformer's blocks; the backbone is "
                          f"{type(backbone).__name__}: use a dinov2_* backbone (segbench models lists them)")
    return backbone


def _modules_of(model: nn.Module) -> nn.ModuleDict:
    if not hasattr(model, "method_modules"):
        model.method_modules = nn.ModuleDict()
    return model.method_modules


@METHODS.register("frozen")
class FrozenBackbone(Method):
    name = "frozen"
    paper = "a frozen backbone, only the head trains (Rein's 'Frozen' rows)"
    code = "w1oves/Rein rein/models/segmentors/frozen_encoder_decoder.py"

    def build(self, model: nn.Module) -> None:
        freeze(model.backbone)


@METHODS.register("full")
class FullFineTuning(Method):
    """Everything trains: plain training, named for the foundation-model tables. Rein's full fine-tuning config trains
    the backbone at the head's learning rate; `train.lr_mult` sets a backbone multiplier for other recipes."""

    name = "full"
    paper = "full fine-tuning of the backbone and the head (Rein's 'Full' rows)"
    code = "w1oves/Rein configs/dinov2/dinov2_mask2former_512x512_bs1x4.py"


# ------------------------------------------------------------------------------------------------------------- Rein

class LoRAReins(nn.Module):
    """Rein's LoRAReins (w1oves/Rein `rein/models/backbones/reins.py`, Reins + LoRAReins), with its parameter names.

    Per layer l, tokens T_l = A_l B_l (token_length x lora_dim times lora_dim x C); for the patch features F of that
    layer (the class and any other prefix token untouched): S = softmax(F T_l^T / sqrt(C)) over the tokens,
    dF = mlp_delta_f(S[:, 1:] mlp_token2feat(T_l[1:]) + F), F <- F + scale dF (the first token takes part in the
    softmax and is dropped from the update). `mlp_token2feat`, `mlp_delta_f` and `scale` (initialised at 1e-3) are
    shared by all layers. `queries()` is Rein's return_auto: transform(T) max-, average- and last-pooled over the
    layers, interleaved per channel, merged to token_length x query_dims (the mask head's queries, next to
    `link_token_to_query`); without a head that takes them, `transform` and `merge` are not built (no parameter
    without a gradient under DDP). Computed batch-first with matmuls where the official code permutes to
    token-first and uses einsum: the same sums, in another order of float additions."""

    def __init__(self, num_layers: int, embed_dims: int, patch_size: int, token_length: int = 100,
                 lora_dim: int = 16, query_dims: int = 256, scale_init: float = 1e-3, queries: bool = True):
        super().__init__()
        self.num_layers, self.embed_dims, self.token_length = num_layers, embed_dims, token_length
        self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, token_length, lora_dim))
        self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, lora_dim, embed_dims))
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.mlp_token2feat = nn.Linear(embed_dims, embed_dims)
        self.mlp_delta_f = nn.Linear(embed_dims, embed_dims)
        if queries:
            self.transform = nn.Linear(embed_dims, query_dims)
            self.merge = nn.Linear(query_dims * 3, query_dims)
        val = math.sqrt(6.0 / float(3 * patch_size * patch_size + (embed_dims * lora_dim) ** 0.5))
        nn.init.uniform_(self.learnable_tokens_a, -val, val)
        nn.init.uniform_(self.learnable_tokens_b, -val, val)
        nn.init.kaiming_uniform_(self.mlp_delta_f.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.mlp_token2feat.weight, a=math.sqrt(5))

    def tokens(self, layer: int | None = None) -> torch.Tensor:
        if layer is None:
            return self.learnable_tokens_a @ self.learnable_tokens_b
        return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]

    def forward(self, patches: torch.Tensor, layer: int) -> torch.Tensor:
        tokens = self.tokens(layer)
        attn = F.softmax((patches @ tokens.t()) * self.embed_dims ** -0.5, dim=-1)
        delta = attn[..., 1:] @ self.mlp_token2feat(tokens[1:])
        return patches + self.mlp_delta_f(delta + patches) * self.scale

    def queries(self) -> torch.Tensor:
        if not hasattr(self, "merge"):
            raise MethodError("these Rein tokens were built without the query link (the head takes no queries)")
        tokens = self.transform(self.tokens()).permute(1, 2, 0)  # token_length x query_dims x layers
        pooled = torch.cat([F.max_pool1d(tokens, kernel_size=self.num_layers),
                            F.avg_pool1d(tokens, kernel_size=self.num_layers), tokens[:, :, -1:]], dim=-1)
        return self.merge(pooled.flatten(-2, -1))


class AfterBlock:
    """Forward hook on block `layer`: Rein's update of the block output's patch tokens (the last `backbone.patches`
    tokens; class, register or prompt tokens before them pass unchanged)."""

    def __init__(self, reins: LoRAReins, backbone: nn.Module, layer: int):
        self.reins, self.backbone, self.layer = reins, backbone, layer

    def __call__(self, _block, _inputs, output: torch.Tensor) -> torch.Tensor:
        n = self.backbone.patches
        return torch.cat([output[:, :-n], self.reins(output[:, -n:], self.layer)], dim=1)


@METHODS.register("rein")
class ReinMethod(Method):
    """Rein's LoRAReins after every block of a frozen DINOv2 backbone (reins_dinov2.py forward_features: the update
    follows block l and precedes the feature taken at l). Defaults: the config's `reins_config` (token_length 100,
    lora_dim 16, query_dims 256, scale 1e-3). Trainable: the tokens, the two shared MLPs, the scale, and
    `transform` / `merge` when the head takes Rein's queries (2,990,081 parameters on ViT-L, the paper's 2.99M;
    2,530,817 without the query link).

    Differences from the official code: the backbone may have registers or prompts (the update is applied to the
    last H x W tokens, the patches; the official ViT has only a class token); the tokens live in
    `model.method_modules.rein` (official: `backbone.reins`; pretrained.py maps Rein's released files)."""

    name = "rein"
    paper = ("Wei et al., Stronger, Fewer, & Superior: Harnessing Vision Foundation Models for Domain Generalized "
             "Semantic Segmentation, CVPR 2024")
    code = "w1oves/Rein rein/models/backbones/reins.py (LoRAReins), reins_dinov2.py, heads/rein_mask2former.py"
    defaults = {"token_length": 100, "lora_dim": 16, "query_dims": 256, "scale_init": 0.001, "link_queries": True}

    def build(self, model: nn.Module) -> None:
        """`link_queries` (Rein's link_token_to_query, on in its configs): on a Mask2Former head, the tokens become
        its queries (rein_mask2former.py: the learned query embeddings removed, the query features a linear map of
        Rein's queries); `rein-mask2former` is that head from the start."""
        backbone = vit_of(model)
        freeze(backbone)
        o = self.options
        head = model.head
        link = bool(getattr(head, "takes_queries", False)) or (
            o["link_queries"] and getattr(head, "mask_classification", False))
        if link and not head.takes_queries:
            head.link_queries()
        if link and head.config.num_queries != o["token_length"]:
            raise OptionError(f"method.rein.token_length={o['token_length']}: Rein's tokens are the head's "
                              f"{head.config.num_queries} queries, so the two must be equal")
        reins = LoRAReins(len(backbone.blocks), backbone.out_channels[0], backbone.patch_size, o["token_length"],
                          o["lora_dim"], o["query_dims"], o["scale_init"], queries=link)
        _modules_of(model)["rein"] = reins
        for layer, block in enumerate(backbone.blocks):
            block.register_forward_hook(AfterBlock(reins, backbone, layer))


# -------------------------------------------------------------------------------------------------------------- VPT

class Prompts(nn.Module):
    """VPT-deep's prompts (KMnP/vpt PromptedTransformer, DEEP, prepend, random init): `prompt_embeddings` (1 x n x C)
    for the first block, `deep_prompt_embeddings` ((depth - 1) x n x C) for the others, each uniform in
    +-sqrt(6 / (3 p^2 + C)) ("xavier_uniform" as the official init says), dropout `dropout` (official default 0)."""

    def __init__(self, depth: int, num_tokens: int, embed_dims: int, patch_size: int, dropout: float = 0.0):
        super().__init__()
        val = math.sqrt(6.0 / float(3 * patch_size * patch_size + embed_dims))
        self.prompt_embeddings = nn.Parameter(torch.empty(1, num_tokens, embed_dims).uniform_(-val, val))
        self.deep_prompt_embeddings = nn.Parameter(torch.empty(depth - 1, num_tokens, embed_dims).uniform_(-val, val))
        self.prompt_dropout = nn.Dropout(dropout)
        self.num_tokens = num_tokens

    def for_block(self, index: int, batch: int) -> torch.Tensor:
        prompts = self.prompt_embeddings[0] if index == 0 else self.deep_prompt_embeddings[index - 1]
        return self.prompt_dropout(prompts.expand(batch, -1, -1))


class BeforeBlock:
    """Forward pre-hook on block `index`: insert (block 0) or replace (the others) the prompts right after the
    `prefix` class and register tokens, as incorporate_prompt / forward_deep_prompt do after the class token."""

    def __init__(self, prompts: Prompts, index: int, prefix: int):
        self.prompts, self.index, self.prefix = prompts, index, prefix

    def __call__(self, _block, inputs):
        x = inputs[0]
        keep = self.prefix if self.index == 0 else self.prefix + self.prompts.num_tokens
        return (torch.cat([x[:, :self.prefix], self.prompts.for_block(self.index, x.shape[0]), x[:, keep:]], 1),)


@METHODS.register("vpt")
class VPTMethod(Method):
    """VPT-deep on a frozen DINOv2 backbone. `num_tokens` defaults to 150: 150 x 1024 x 24 = 3.69M trainable
    parameters on ViT-L, the count of Rein's '+VPT' row (arXiv 2312.04265 v1, Table 3), which lists no token number
    (VPT's own config default is 5, for classification). Differences: DINOv2's register tokens, when present, stay
    before the prompts; the prompts are never projected (VPT's PROJECT -1, its default)."""

    name = "vpt"
    paper = "Jia et al., Visual Prompt Tuning, ECCV 2022 (VPT-deep)"
    code = "KMnP/vpt src/models/vit_prompt/vit.py"
    defaults = {"num_tokens": 150, "dropout": 0.0}

    def build(self, model: nn.Module) -> None:
        backbone = vit_of(model)
        freeze(backbone)
        if not self.options["num_tokens"] >= 1:
            raise OptionError(f"method.vpt.num_tokens={self.options['num_tokens']!r}: give at least 1 prompt token")
        prompts = Prompts(len(backbone.blocks), self.options["num_tokens"], backbone.out_channels[0],
                          backbone.patch_size, self.options["dropout"])
        _modules_of(model)["vpt"] = prompts
        for index, block in enumerate(backbone.blocks):
            block.register_forward_pre_hook(BeforeBlock(prompts, index, 1 + backbone.registers))


# ------------------------------------------------------------------------------------------------------------- LoRA

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


@METHODS.register("lora")
class LoRAMethod(Method):
    """LoRA through the `peft` package on a frozen DINOv2 backbone: `LoraConfig(r=rank, lora_alpha=alpha,
    target_modules=targets)` injected into the ViT (`peft.inject_adapter_in_model`), which wraps each targeted Linear
    (keys `...qkv.base_layer.*`, `...qkv.lora_A.default.weight`, `...qkv.lora_B.default.weight`; B starts at zero, so
    the model starts as the pretrained one) and leaves only the adapters trainable. Defaults: the attention's qkv at
    rank 8, which trains 786,432 parameters on ViT-L, the 0.79M of Rein's '+LoRA' row (arXiv 2312.04265 v1, Table 3;
    the paper lists no other hyper-parameter), alpha 8 (a scaling of 1), no dropout."""

    name = "lora"
    paper = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022 (via the peft package)"
    code = "huggingface/peft tuners/lora (inject_adapter_in_model)"
    defaults = {"rank": 8, "alpha": 8, "dropout": 0.0, "targets": ["qkv"]}

    def build(self, model: nn.Module) -> None:
        backbone = vit_of(model)
        unknown = sorted(set(self.options["targets"]) - set(LORA_TARGETS))
        if unknown or not self.options["targets"]:
            raise OptionError(f"method.lora.targets={self.options['targets']!r}: choose among {list(LORA_TARGETS)}")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise MethodError("method lora needs the peft package: pip install 'segbench[vfm]'") from None
        # frozen by requires_grad only: eval mode would also switch off LoRA's own dropout inside the blocks
        backbone.requires_grad_(False)
        config = LoraConfig(r=self.options["rank"], lora_alpha=self.options["alpha"],
                            lora_dropout=self.options["dropout"], target_modules=list(self.options["targets"]))
        inject_adapter_in_model(config, backbone.vit)
