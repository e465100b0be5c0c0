"""The parameter-efficient methods on a DINOv2 backbone against independent implementations typed here from the
official files: Rein's LoRAReins (w1oves/Rein `rein/models/backbones/reins.py`, applied after every block by
`reins_dinov2.py`), VPT-deep (KMnP/vpt `src/models/vit_prompt/vit.py` incorporate_prompt / forward_deep_prompt),
LoRA through peft; and what each trains."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.methods import Batch, MethodError, build_method
from segbench.models import count_parameters, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


class OfficialLoRAReins(nn.Module):
    """reins.py Reins + LoRAReins as written there (token-first einsums, tensor_split of the class token)."""

    def __init__(self, num_layers, embed_dims, token_length, lora_dim):
        super().__init__()
        self.embed_dims = embed_dims
        self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, token_length, lora_dim))
        self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, lora_dim, embed_dims))
        self.scale = nn.Parameter(torch.tensor(0.001))
        self.mlp_token2feat = nn.Linear(embed_dims, embed_dims)
        self.mlp_delta_f = nn.Linear(embed_dims, embed_dims)
        self.transform = nn.Linear(embed_dims, 256)
        self.merge = nn.Linear(256 * 3, 256)
        self.num_layers = num_layers

    def get_tokens(self, layer):
        if layer == -1:
            return self.learnable_tokens_a @ self.learnable_tokens_b
        return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]

    def forward(self, feats, layer, batch_first=True, has_cls_token=True):
        if batch_first:
            feats = feats.permute(1, 0, 2)
        if has_cls_token:
            cls_token, feats = torch.tensor_split(feats, [1], dim=0)
        tokens = self.get_tokens(layer)
        attn = torch.einsum("nbc,mc->nbm", feats, tokens)
        attn = F.softmax(attn * (self.embed_dims ** -0.5), dim=-1)
        delta_f = torch.einsum("nbm,mc->nbc", attn[:, :, 1:], self.mlp_token2feat(tokens[1:, :]))
        delta_f = self.mlp_delta_f(delta_f + feats)
        feats = feats + delta_f * self.scale
        if has_cls_token:
            feats = torch.cat([cls_token, feats], dim=0)
        if batch_first:
            feats = feats.permute(1, 0, 2)
        return feats

    def return_auto(self):
        tokens = self.transform(self.get_tokens(-1)).permute(1, 2, 0)
        tokens = torch.cat([F.max_pool1d(tokens, kernel_size=self.num_layers),
                            F.avg_pool1d(tokens, kernel_size=self.num_layers),
                            tokens[:, :, -1].unsqueeze(-1)], dim=-1)
        return self.merge(tokens.flatten(-2, -1))


def reins_forward_features(backbone, reins, x):
    """reins_dinov2.py forward_features on segbench's ViT modules: block, then Reins, then the feature at
    out_indices; and Rein's pyramid."""
    tokens, rows, cols = backbone.tokens(x)
    outs = []
    for idx, blk in enumerate(backbone.vit.blocks):
        tokens = reins(blk.forward(tokens), idx, batch_first=True, has_cls_token=True)  # no hooks: no segbench Rein
        if idx in backbone.out_indices:
            outs.append(tokens[:, 1:, :].permute(0, 2, 1).reshape(x.shape[0], -1, rows, cols))
    return [F.interpolate(outs[0], scale_factor=4, mode="bilinear", align_corners=False),
            F.interpolate(outs[1], scale_factor=2, mode="bilinear", align_corners=False), outs[2],
            F.interpolate(outs[3], scale_factor=0.5, mode="bilinear", align_corners=False)]


def _randomise(module: nn.Module, seed: int) -> None:
    """Weights away from their init (scale 1e-3 would make the update vanish next to float rounding)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_rein_equals_the_official_lorareins_after_every_block():
    pytest.importorskip("transformers")  # the vfm extra: a head that takes Rein's queries, to compare return_auto
    torch.manual_seed(0)
    model = create_model("vit_debug_p16", "rein-mask2former", num_classes=5)
    method = build_method("rein", {"token_length": 100, "lora_dim": 4})
    method.build(model)
    ours = model.method_modules["rein"]
    _randomise(ours, 1)
    official = OfficialLoRAReins(4, 64, 100, 4)
    official.load_state_dict(ours.state_dict(), strict=True)  # the same parameter names
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    feats = model.backbone(ours_x)
    reference = reins_forward_features(model.backbone, official, theirs_x)
    for a, b in zip(feats, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.queries(), official.return_auto(), rtol=1e-5, atol=1e-6)
    loss, ref_loss = sum((f * f).mean() for f in feats), sum((f * f).mean() for f in reference)
    grads = torch.autograd.grad(loss + ours.queries().sum(), [ours_x, *ours.parameters()])
    ref_grads = torch.autograd.grad(ref_loss + official.return_auto().sum(), [theirs_x, *official.parameters()])
    for (name, _), g, h in zip([("input", None), *ours.named_parameters()], grads, ref_grads):
        torch.testing.assert_close(g, h, rtol=1e-3, atol=1e-3 * h.abs().max().item(), msg=name)


def test_rein_trains_only_its_tokens_and_the_head_and_counts_the_papers_parameters():
    """2,990,081 on ViT-L with the query link (the paper's 2.99M), 2,530,817 without it."""
    with torch.device("meta"):
        model = create_model("dinov2_vitl14_p16", "linear")
        build_method("rein").build(model)
    assert count_parameters(model.method_modules, trainable_only=True) == 2_530_817
    assert count_parameters(model.backbone, trainable_only=True) == 0
    assert count_parameters(model.head, trainable_only=True) == count_parameters(model.head)
    pytest.importorskip("transformers")
    with torch.device("meta"):
        linked = create_model("dinov2_vitl14_p16", "mask2former")
        build_method("rein").build(linked)  # links its tokens to the head's queries, as Rein's configs do
    assert count_parameters(linked.method_modules, trainable_only=True) == 2_990_081
    assert linked.head.takes_queries and not hasattr(linked.head.transformer, "queries_embedder")


def test_the_frozen_backbone_stays_in_eval_mode_and_gets_no_gradient():
    model = create_model("resnet18", "fcn", num_classes=5)
    build_method("frozen").build(model)
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    out = model(torch.randn(2, 3, 32, 32))["out"]
    assert not model.backbone.training and model.head.training
    assert torch.equal(model.backbone.bn1.running_mean, before)  # BatchNorm statistics untouched
    out.sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def official_vpt_deep(backbone, prompt, deep, x):
    """incorporate_prompt + forward_deep_prompt (prompts after the class token, replaced before blocks 1..L-1)."""
    tokens, rows, cols = backbone.tokens(x)
    b, n = x.shape[0], prompt.shape[1]
    hidden = torch.cat((tokens[:, :1, :], prompt.expand(b, -1, -1), tokens[:, 1:, :]), dim=1)
    outs = []
    for i, blk in enumerate(backbone.vit.blocks):
        if i > 0:
            hidden = torch.cat((hidden[:, :1, :], deep[i - 1].expand(b, -1, -1), hidden[:, (1 + n):, :]), dim=1)
        hidden = blk.forward(hidden)  # without the hooks segbench placed
        if i in backbone.out_indices:
            outs.append(hidden[:, 1 + n:].permute(0, 2, 1).reshape(b, -1, rows, cols))
    return outs


def test_vpt_deep_equals_the_official_prompted_forward():
    torch.manual_seed(0)
    model = create_model("vit_debug_p14", "linear", num_classes=5)
    build_method("vpt", {"num_tokens": 3}).build(model)
    prompts = model.method_modules["vpt"]
    val = math.sqrt(6.0 / (3 * 14 * 14 + 64))
    assert prompts.deep_prompt_embeddings.shape == (3, 3, 64) and prompts.prompt_embeddings.abs().max() <= val
    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(3))
    feats = model.backbone(x)
    reference = official_vpt_deep(model.backbone, prompts.prompt_embeddings, prompts.deep_prompt_embeddings, x)
    torch.testing.assert_close(feats[2], reference[2], rtol=1e-4, atol=1e-5)  # the stride-p level, unresampled
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"method_modules.vpt.prompt_embeddings", "method_modules.vpt.deep_prompt_embeddings"} <= trainable
    assert not any(n.startswith("backbone.") for n in trainable)


def test_lora_through_peft_starts_as_the_pretrained_model_and_trains_only_the_adapters():
    peft = pytest.importorskip("peft")  # an extra: pip install 'segbench[vfm]'
    torch.manual_seed(0)
    model = create_model("vit_debug_p14", "linear", num_classes=5).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        before = model(x)["out"]
    build_method("lora", {"rank": 4, "alpha": 8, "targets": ["qkv", "fc2"]}).build(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], before)  # B starts at zero
    backbone_trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert backbone_trainable and all(".lora_A." in n or ".lora_B." in n for n in backbone_trainable)
    assert {n.split(".")[-4] for n in backbone_trainable} == {"qkv", "fc2"}  # ...qkv.lora_A.default.weight
    qkv = model.backbone.vit.blocks[0].attn.qkv
    assert isinstance(qkv, peft.tuners.lora.Linear) and qkv.scaling["default"] == 2.0
    model.train()
    model(torch.randn(2, 3, 56, 56))["out"].sum().backward()
    assert all(p.grad is not None for n, p in model.backbone.named_parameters() if n in backbone_trainable)


@pytest.mark.parametrize("name", ["rein", "vpt", "lora"])
def test_the_vit_methods_refuse_a_resnet_naming_the_backbones_to_use(name):
    with pytest.raises(MethodError, match="use a dinov2_\\* backbone"):
        build_method(name).build(create_model("resnet18", "fcn"))


@pytest.mark.slow
def test_a_study_trains_and_scores_every_parameter_efficient_method_on_a_tiny_vit(tmp_path, capsys):
    """The foundation-model command on the embedded domains with the debug ViT: every method's cell trains (AdamW,
    Rein's no-decay rule) and scores both domains, and the report has one row per method."""
    pytest.importorskip("peft")
    from segbench import run
    from segbench.record import load_records

    code = run.main(["sim->photo", "--backbones", "vit_debug_p16", "--heads", "linear", "--methods",
                     "frozen,full,rein,lora,vpt", "--seeds", "1", "--results", str(tmp_path), "--name", "vfm",
                     "--data-root", str(tmp_path / "data"), "--set", "train.iters=2", "--set", "train.batch_size=2",
                     "--set", "train.optimizer=adamw", "--set", "train.lr=0.0001", "--set", "train.weight_decay=0.05",
                     "--set", "train.no_decay_norms=true", "--set", "model.pretrained=null", "--set", "model.output_stride=null",
                     "--set", "train.workers=0", "--set", "eval.workers=0"])
    assert code == 0, capsys.readouterr().err
    records = load_records(tmp_path / "vfm")
    assert sorted(r["method"]["name"] for r in records) == ["frozen", "full", "lora", "rein", "vpt"]
    assert all(set(r["results"]) == {"sim", "photo"} for r in records)
    assert all(r["config"]["train"]["optimizer"] == "adamw" for r in records)
    table = (tmp_path / "vfm" / "table.md").read_text()
    for method in ("frozen", "full", "rein", "lora", "vpt"):
        assert f"vit_debug_p16 + {method}" in table
