"""The DINOv2 backbones against DINOv2's and Rein's code typed in here (facebookresearch/dinov2
`dinov2/models/vision_transformer.py`, `dinov2/layers/{attention,block,layer_scale,mlp}.py`; w1oves/Rein
`rein/models/backbones/dino_v2.py` forward, `tools/convert_models/convert_dinov2_large_512x512.py`), on state dicts
the tests write with the official key names: same weights, same image, same features."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segbench.models import create_backbone, create_model
from segbench.models.pretrained import PretrainedWeightsError
from segbench.models.vit import SIZES, DinoV2Backbone, ViTSpec
from segbench.models.vit_weights import convert_rein_p16

pytestmark = pytest.mark.usefixtures("one_thread")


def official_state(dim=64, depth=4, heads=2, grid=8, patch=14, registers=0, seed=0) -> dict:
    """A random state dict with the official DINOv2 keys and shapes (hub/backbones.py, block_chunks=0)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.05: torch.randn(*shape, generator=g) * s  # noqa: E731
    state = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + grid * grid, dim, s=0.2), "mask_token": r(1, dim),
             "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
             "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    if registers:
        state["register_tokens"] = r(1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                      b + "attn.qkv.weight": r(3 * dim, dim, s=0.2), b + "attn.qkv.bias": r(3 * dim),
                      b + "attn.proj.weight": r(dim, dim, s=0.2), b + "attn.proj.bias": r(dim),
                      b + "ls1.gamma": 0.5 + r(dim), b + "norm2.weight": 1 + r(dim), b + "norm2.bias": r(dim),
                      b + "mlp.fc1.weight": r(4 * dim, dim, s=0.2), b + "mlp.fc1.bias": r(4 * dim),
                      b + "mlp.fc2.weight": r(dim, 4 * dim, s=0.2), b + "mlp.fc2.bias": r(dim),
                      b + "ls2.gamma": 0.5 + r(dim)})
    return state


def official_features(state, x, patch, heads, out_indices, registers=0, antialias=False, offset=0.1):
    """DINOv2's forward typed from the official code: prepare_tokens_with_masks (interpolate_pos_encoding), the
    blocks (x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x)))), patch tokens of the blocks in out_indices, unnormed."""
    b, _, h, w = x.shape
    dim = state["cls_token"].shape[-1]
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat((state["cls_token"].expand(b, -1, -1), tokens), dim=1)
    pos = state["pos_embed"].float()
    n = pos.shape[1] - 1
    w0, h0 = h // patch, w // patch  # the official names: x.shape[2], x.shape[3] are passed as (w, h)
    if not (tokens.shape[1] - 1 == n and w0 == h0 and w0 * w0 == n):
        m = int(math.sqrt(n))
        kwargs = {"scale_factor": ((w0 + offset) / m, (h0 + offset) / m)} if offset else {"size": (w0, h0)}
        patch_pos = F.interpolate(pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                  antialias=antialias, **kwargs)
        assert (w0, h0) == patch_pos.shape[-2:]
        pos = torch.cat((pos[:, :1], patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)
    tokens = tokens + pos
    if registers:
        tokens = torch.cat((tokens[:, :1], state["register_tokens"].expand(b, -1, -1), tokens[:, 1:]), dim=1)
    outs = []
    for i in range(len({k.split(".")[1] for k in state if k.startswith("blocks.")})):
        p = f"blocks.{i}."
        y = F.layer_norm(tokens, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (dim // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        tokens = tokens + state[p + "ls1.gamma"] * F.linear(y, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        y = F.layer_norm(tokens, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        tokens = tokens + state[p + "ls2.gamma"] * y
        if i in out_indices:
            outs.append(tokens[:, 1 + registers:].permute(0, 2, 1).reshape(b, -1, h // patch, w // patch))
    return outs


def rein_pyramid(outs):
    """Rein's DinoVisionTransformer.forward: x4, x2, x1, x0.5 bilinear (align_corners False)."""
    return [F.interpolate(outs[0], scale_factor=4, mode="bilinear", align_corners=False),
            F.interpolate(outs[1], scale_factor=2, mode="bilinear", align_corners=False), outs[2],
            F.interpolate(outs[3], scale_factor=0.5, mode="bilinear", align_corners=False)]


def _debug_backbone(tmp_path, registers=0, grid=8, patch=14):
    backbone = DinoV2Backbone(SIZES["debug"], patch_size=patch, grid=grid, registers=registers)
    state = official_state(grid=grid, patch=patch, registers=registers)
    path = tmp_path / "dinov2_debug_pretrain.pth"
    torch.save(state, path)
    from segbench.models.vit_weights import load_dinov2

    load_dinov2(backbone, "vit_debug_p14", path)
    return backbone.eval(), state


@pytest.mark.parametrize("size", [(112, 112), (84, 126), (70, 154)])  # the native 8 x 8 grid, and two others
@pytest.mark.parametrize("registers", [0, 4])
def test_features_equal_dinov2s_forward_on_an_official_state_dict(tmp_path, size, registers):
    """At the native grid and at other sizes, where the official position interpolation (offset 0.1 without
    antialiasing for the plain models, exact size with antialiasing for the register ones) differs from timm's."""
    backbone, state = _debug_backbone(tmp_path, registers)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = backbone(x)
        theirs = rein_pyramid(official_features(state, x, 14, 2, (0, 1, 2, 3), registers,
                                                antialias=bool(registers), offset=0.0 if registers else 0.1))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [f.shape[-1] for f in ours] == [size[1] // 14 * 4, size[1] // 14 * 2, size[1] // 14, size[1] // 28]


def rein_convert(weight, grid=32):
    """tools/convert_models/convert_dinov2_large_512x512.py load_backbone, as written (ViT-L, 37 -> 32, 14 -> 16);
    convert_dinov2_large_1024x1024.py is the same script with size=(64, 64)."""
    weight["pos_embed"] = torch.cat(
        (weight["pos_embed"][:, :1, :],
         F.interpolate(weight["pos_embed"][:, 1:, :].reshape(1, 37, 37, 1024).permute(0, 3, 1, 2), size=(grid, grid),
                       mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, grid * grid, 1024)), dim=1)
    weight["patch_embed.proj.weight"] = F.interpolate(weight["patch_embed.proj.weight"].float(), size=(16, 16),
                                                      mode="bicubic", align_corners=False)
    return weight


@pytest.mark.parametrize("grid", [32, 64])
def test_the_p16_conversion_equals_reins_script(grid):
    g = torch.Generator().manual_seed(2)
    state = {"pos_embed": torch.randn(1, 1370, 1024, generator=g),
             "patch_embed.proj.weight": torch.randn(1024, 3, 14, 14, generator=g),
             "cls_token": torch.randn(1, 1, 1024, generator=g)}
    ours = convert_rein_p16(dict(state), grid=grid)
    theirs = rein_convert(dict(state), grid)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["pos_embed"].shape == (1, grid * grid + 1, 1024) and ours["patch_embed.proj.weight"].shape[-1] == 16


def test_a_p16_backbone_loads_an_official_patch14_file_through_reins_conversion(tmp_path):
    """`vit_debug_p16` takes an official-format patch-14 file converted Rein's way, and then computes the official
    forward on the converted weights (a 512-like native grid, so no position interpolation)."""
    state = official_state(grid=8, patch=14)
    path = tmp_path / "dinov2.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)  # a wrapped, prefixed file
    backbone = create_backbone("vit_debug_p16", pretrained=path).eval()
    converted = convert_rein_p16(dict(state), grid=8, patch=16)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(backbone(x), rein_pyramid(official_features(converted, x, 16, 2, (0, 1, 2, 3)))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_timm_files_load_too(tmp_path):
    """timm's layout (no mask_token; registers as reg_token with the class position folded in) gives the same
    backbone as the official file."""
    official = official_state(registers=4)
    timm_state = {k: v for k, v in official.items() if k not in ("mask_token", "register_tokens")}
    timm_state["reg_token"] = official["register_tokens"]
    timm_state["cls_token"] = official["cls_token"] + official["pos_embed"][:, :1]
    timm_state["pos_embed"] = official["pos_embed"][:, 1:]
    torch.save(official, tmp_path / "official.pth")
    torch.save(timm_state, tmp_path / "timm.pth")
    a = DinoV2Backbone(SIZES["debug"], registers=4, grid=8)
    b = DinoV2Backbone(SIZES["debug"], registers=4, grid=8)
    from segbench.models.vit_weights import load_dinov2

    load_dinov2(a, "x", tmp_path / "official.pth")
    load_dinov2(b, "x", tmp_path / "timm.pth")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_file_of_another_size_names_the_file_the_keys_and_the_fix(tmp_path):
    path = tmp_path / "vitb.pth"
    torch.save(official_state(dim=32), path)
    with pytest.raises(PretrainedWeightsError, match=r"vitb\.pth does not fit backbone 'vit_debug_p14' "
                                                     r"\(other shapes: .*ViT-S/B/L/g"):
        create_backbone("vit_debug_p14", pretrained=path)
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(PretrainedWeightsError, match="cannot locate exactly one DINOv2 ViT"):
        create_backbone("vit_debug_p14", pretrained=path)
    with pytest.raises(PretrainedWeightsError, match="names ResNet weights.*'dinov2'"):
        create_backbone("vit_debug_p14", pretrained="imagenet")


def test_registered_sizes_have_the_official_shapes():
    """ViT-S/B/L/g as the official hub builds them: width, depth, parameter count (without mask_token)."""
    counts = {"dinov2_vits14": 22.06e6, "dinov2_vitb14": 86.58e6, "dinov2_vitl14": 304.37e6,
              "dinov2_vitg14": 1136.48e6}
    from segbench.models import count_parameters

    for name, expected in counts.items():
        with torch.device("meta"):
            backbone = create_backbone(name, output_stride=None)
        assert count_parameters(backbone) == pytest.approx(expected, rel=2e-3), name
    with torch.device("meta"):
        p16 = create_backbone("dinov2_vitl14_p16", output_stride=None)
        p16_1024 = create_backbone("dinov2_vitl14_p16_1024", output_stride=None)
    assert p16.vit.pos_embed.shape == (1, 1025, 1024) and p16.vit.patch_embed.proj.weight.shape[-1] == 16
    assert p16_1024.vit.pos_embed.shape == (1, 4097, 1024) and p16_1024.patch_size == 16


def test_a_vit_runs_under_the_linear_head_at_any_size_and_refuses_a_resnet_stride():
    """Any head takes the ViT's own pyramid when model.output_stride is null; a ResNet's dilated stride is refused."""
    model = create_model("vit_debug_p16", "linear", num_classes=5).train()
    out = model(torch.randn(2, 3, 70, 100))["out"]
    assert out.shape == (2, 5, 70, 100)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert create_model("vit_debug_p16", "fcn")(torch.randn(1, 3, 64, 64))["out"].shape == (1, 19, 64, 64)
    with pytest.raises(ValueError, match=r"fixed pyramid .* must be null or 32, got 8"):
        create_model("vit_debug_p16", "fcn", output_stride=8)


def test_activation_checkpointing_gives_the_same_features_and_gradients():
    torch.manual_seed(0)
    plain = create_backbone("vit_debug_p14", output_stride=None).train()
    checkpointed = create_backbone("vit_debug_p14", output_stride=None).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.checkpointing = True
    x = torch.randn(1, 3, 56, 56)
    a, b = plain(x), checkpointed(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    sum(f.sum() for f in a).backward(), sum(f.sum() for f in b).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
