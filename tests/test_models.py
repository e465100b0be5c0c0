"""Backbones and heads: shapes, gradients, output strides, IBN placement and weight compatibility
(IBN rules: XingangPan/IBN-Net `ibnnet/resnet_ibn.py`, `ibnnet/modules.py`)."""
from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock as TVBasic, Bottleneck as TVBottleneck, ResNet as TVResNet

import segbench.models as M
from segbench.models.resnet import SPECS as RESNET_SPECS
from segbench.models.ibn import IBN

PAPER_BACKBONES = [f"resnet{d}{s}" for d in (18, 34, 50, 101) for s in ("", "_ibn_a", "_ibn_b")]
RESNETS = sorted(RESNET_SPECS)  # the registered ResNet family (the DINOv2 ViTs have their own tests)
NATIVE_HEADS = ["fcn", "deeplabv3", "deeplabv3plus"]
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BOTTLENECK = {18: False, 34: False, 50: True, 101: True}



pytestmark = pytest.mark.usefixtures("one_thread")


def _depth(name: str) -> int:
    return int(re.search(r"\d+", name).group())


def _torchvision_reference(name: str) -> nn.Module:
    """torchvision ResNet with the same depth/groups as `name` (random weights) whose keys the IBN rules transform."""
    depth = _depth(name)
    block = TVBottleneck if BOTTLENECK[depth] else TVBasic
    kwargs = dict(groups=32, width_per_group=4) if name.startswith("resnext") else {}
    with torch.device("meta"):  # keys and shapes only: no memory, no init time
        return TVResNet(block, list(BLOCKS[depth]), **kwargs)


def test_registry_has_the_official_names():
    assert set(PAPER_BACKBONES) <= set(M.list_backbones())
    assert {"resnext101_ibn_a", "se_resnet101_ibn_a"} <= set(M.list_backbones())
    assert M.list_backbones("*_ibn_b") == ["resnet101_ibn_b", "resnet18_ibn_b", "resnet34_ibn_b", "resnet50_ibn_b"]
    assert set(NATIVE_HEADS) <= set(M.list_heads())
    assert M.list_heads("deeplab*") == [h for h in M.list_heads() if h.startswith("deeplab")]
    with pytest.raises(KeyError, match="valid names"):
        M.create_backbone("resnet51")


def _check_feature_strides(feats, out_channels, size, output_stride):
    """layer1..layer4 sit at strides 4, 8, 16, 32, capped at the requested output stride (each stride-2 op rounds up)."""

    def halve(n: int, times: int) -> int:
        for _ in range(times):
            n = -(-n // 2)
        return n

    assert [f.shape[1] for f in feats] == list(out_channels)
    for f, stride in zip(feats, (4, 8, 16, 32)):
        k = int(math.log2(min(stride, output_stride)))
        assert tuple(f.shape[-2:]) == (halve(size[0], k), halve(size[1], k)), (stride, output_stride, f.shape)


def test_bad_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride"):
        M.create_backbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="output_stride"):
        M.create_model("resnet18", "fcn", output_stride=12)


@functools.lru_cache(maxsize=3)
def _cached_backbone(name: str, output_stride: int) -> nn.Module:
    """Each backbone is built once per output stride and shared by the heads: building dominates the run time."""
    return M.create_backbone(name, output_stride=output_stride)


def _build(backbone: str, head: str, **kwargs) -> nn.Module:
    """create_model's path (HeadSpec.build on the head's default stride), on a shared backbone with cleared grads."""
    spec = M.HEADS.get(head)
    bb = _cached_backbone(backbone, spec.default_output_stride)
    if head == "robustnet-deeplabv3plus":
        bb = copy.deepcopy(bb)  # its builder re-dilates the backbone in place (RobustNet's variants)
    bb.zero_grad(set_to_none=True)
    return spec.build(bb, **kwargs)


# every registered backbone x every registered head (smp-* included when smp is installed), backbone-major order
# (RobustNet's head dilates bottleneck ResNets only: ResNet-18/34 are refused, tests/test_robustnet_head.py)
# The DINOv2 ViTs give a fixed pyramid, so they pair with the heads that take the backbone's own stride; the tiny
# debug ViTs stand for them here (tests/test_models_vit.py checks the real sizes' shapes on the meta device)
# The mask-classification heads (their own loss, no aux head; Rein's takes its queries from the rein method) have
# their own test below and in tests/test_mask2former.py
MASK_HEADS = ("mask2former", "rein-mask2former")
MATRIX = [(b, h) for b in RESNETS for h in M.list_heads()
          if not (h == "robustnet-deeplabv3plus" and b.startswith(("resnet18", "resnet34"))) and h not in MASK_HEADS]
MATRIX += [(b, h) for b in ("vit_debug_p14", "vit_debug_p16") for h in M.list_heads()
           if M.HEADS.get(h).output_strides is None and h not in MASK_HEADS]


@pytest.mark.parametrize("backbone,head", MATRIX)
def test_model_shapes_gradients_no_nan(backbone, head):
    torch.manual_seed(0)
    model = _build(backbone, head, num_classes=5, aux=True).train()
    feats = []
    hook = model.backbone.register_forward_hook(lambda mod, inp, outp: feats.extend(outp[-4:]))  # smp: +input, stem
    x = torch.randn(2, 3, 24, 40)  # divisible by neither 32 nor 16; tiny: the matrix dominates the test time
    out = model(x)
    hook.remove()
    assert model.backbone.output_stride == (M.HEADS.get(head).default_output_stride or model.backbone.output_stride)
    padded = tuple(-(-n // model.size_divisor) * model.size_divisor for n in (24, 40))  # smp heads pad to /32
    if backbone.startswith("vit_"):  # Rein's pyramid: the patch grid x4, x2, x1, x0.5
        grid = [n // model.backbone.patch_size for n in padded]
        assert [tuple(f.shape[-2:]) for f in feats] == [tuple(int(n * s) for n in grid) for s in (4, 2, 1, 0.5)]
    else:
        _check_feature_strides(feats, model.backbone.out_channels[-4:], padded, model.backbone.output_stride)
    assert set(out) == {"out", "aux"}
    for v in out.values():
        assert v.shape == (2, 5, 24, 40)
        assert torch.isfinite(v).all()
    # random weights on the logits: a plain sum would cancel through the head's BatchNorm
    loss = sum((v * torch.randn_like(v)).sum() for v in out.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert set(out) == {"out"} and out["out"].shape == (1, 5, 32, 32)


@pytest.mark.parametrize("head,expected", [("fcn", 8), ("deeplabv3", 8), ("deeplabv3plus", 16)])
def test_default_output_stride_per_head(head, expected):
    model = M.create_model("resnet18", head)
    assert model.backbone.output_stride == expected
    assert set(model.train()(torch.randn(2, 3, 32, 32))) == {"out"}  # aux=False: no aux output


def test_fcn_head_is_the_papers():
    head = M.create_model("resnet50", "fcn", num_classes=19).head
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(2048, 512, (3, 3)), (512, 19, (1, 1))]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.1 for m in head.modules())


def test_deeplab_aspp_rates_follow_output_stride():
    for os_, rates in ((16, (6, 12, 18)), (8, (12, 24, 36))):
        head = M.create_model("resnet18", "deeplabv3plus", output_stride=os_).head
        dilations = sorted({m.dilation[0] for m in head.aspp.modules() if isinstance(m, nn.Conv2d)} - {1})
        assert tuple(dilations) == rates
        assert head.low_level[0].out_channels == 48


def test_deeplabv3plus_names_where_it_differs_from_robustnet():
    """RobustNet's DeepR50V3PlusD (shachoi/RobustNet `network/deepv3.py`, variant D16; `network/mynn.py` Upsample and
    initialize_weights) has no dropout in bot_aspp, Kaiming-normal init, align_corners=True and dilation 2 in every
    layer4 conv2. segbench's head differs on each; each difference must hold of the model AND be in the docstring."""
    from segbench.models.heads import DeepLabV3PlusHead
    from segbench.models.segmenter import upsample_to

    with torch.device("meta"):
        model = M.create_model("resnet50", "deeplabv3plus")
    assert model.backbone.output_stride == 16
    assert [block.conv2.dilation for block in model.backbone.layer4] == [(1, 1), (2, 2), (2, 2)]  # RobustNet: all 2
    assert [m.p for m in model.head.modules() if isinstance(m, nn.Dropout)] == [0.5]  # RobustNet: none
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert not torch.allclose(upsample_to(x, (4, 4)), torch.nn.functional.interpolate(x, (4, 4), mode="bilinear",
                                                                                      align_corners=True))
    doc = " ".join(DeepLabV3PlusHead.__doc__.split())
    for stated in ("Dropout(0.5)", "initialize_weights", "align_corners=False", "align_corners=True",
                   "layer4.0.conv2 dilation 1 at OS16", "every layer4 conv2 dilation 2"):
        assert stated in doc, stated


def _norm_layout(model: nn.Module) -> tuple[set, set]:
    ibn = {n for n, m in model.named_modules() if isinstance(m, IBN)}
    inorm = {n for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    return ibn, inorm


def _check_ibn_placement(name: str, bb: nn.Module) -> None:
    blocks = BLOCKS[_depth(name)]
    ibn, inorm = _norm_layout(bb)
    if name.endswith("_ibn_a"):
        expected = {f"layer{s + 1}.{i}.bn1" for s in range(3) for i in range(blocks[s])}
        assert ibn == expected
        assert inorm == {f"{n}.IN" for n in expected}
        for n in expected:
            mod = bb.get_submodule(n)
            planes = bb.get_submodule(n.replace("bn1", "conv1")).out_channels
            assert mod.IN.num_features == planes // 2 and mod.IN.affine and not mod.IN.track_running_stats
            assert isinstance(mod.BN, nn.BatchNorm2d) and mod.BN.num_features == planes - planes // 2
    elif name.endswith("_ibn_b"):
        assert ibn == set()
        assert inorm == {"bn1", f"layer1.{blocks[0] - 1}.IN", f"layer2.{blocks[1] - 1}.IN"}
        assert bb.bn1.num_features == 64 and bb.bn1.affine
        assert bb.layer2[-1].IN.num_features == bb.out_channels[1]
    else:
        assert ibn == set() and inorm == set()


def test_ibn_b_never_in_a_stages_first_block():
    """Official rule (XingangPan/IBN-Net `ibnnet/resnet_ibn.py` ResNet_IBN._make_layer): block 0 gets
    `None if ibn == 'b' else ibn`, block i > 0 gets `None if (ibn == 'b' and i < blocks-1) else ibn`; so a one-block
    IBN-b stage has no post-add IN at all."""
    from segbench.models.resnet import IBN_B, BasicBlock, ResNet

    layers = (1, 2, 1, 1)
    expected = {"bn1"}  # IBN-b's stem IN
    for s, blocks in enumerate(layers):
        for i in range(blocks):
            block_ibn = (None if IBN_B[s] == "b" else IBN_B[s]) if i == 0 else \
                (None if IBN_B[s] == "b" and i < blocks - 1 else IBN_B[s])
            if block_ibn == "b":
                expected.add(f"layer{s + 1}.{i}.IN")
    assert expected == {"bn1", "layer2.1.IN"}
    with torch.device("meta"):
        bb = ResNet(BasicBlock, layers, ibn_cfg=IBN_B)
    assert _norm_layout(bb)[1] == expected


def test_ibn_forward_normalises_first_half_per_instance():
    torch.manual_seed(0)
    layer = IBN(8).train()
    x = torch.randn(3, 8, 5, 5) * 4 + 2
    y = layer(x)
    per_instance = y[:, :4].mean(dim=(2, 3))
    assert torch.allclose(per_instance, torch.zeros_like(per_instance), atol=1e-5)
    per_channel = y[:, 4:].mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel, torch.zeros_like(per_channel), atol=1e-5)
    assert not torch.allclose(y[:, 4:].mean(dim=(2, 3)), torch.zeros(3, 4), atol=1e-3)  # BN half: batch stats


def test_init_follows_official_rule():
    torch.manual_seed(0)
    bb = M.create_backbone("resnet50_ibn_b")
    conv = bb.layer4[0].conv2
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    assert abs(conv.weight.std().item() / math.sqrt(2.0 / n) - 1) < 0.02
    for m in bb.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def _expected_official_keys(name: str) -> dict[str, torch.Size]:
    """The official rules (ibnnet/resnet_ibn.py) applied to a torchvision state dict: the release's key->shape map
    (minus fc)."""
    ref = {k: v.shape for k, v in _torchvision_reference(name).state_dict().items() if not k.startswith("fc.")}
    blocks = BLOCKS[_depth(name)]
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    if "_ibn_a" in name:
        for s in range(3):
            for i in range(blocks[s]):
                p = f"layer{s + 1}.{i}.bn1"
                planes = ref.pop(f"{p}.weight")[0]
                for k in bn_keys[1:]:
                    ref.pop(f"{p}.{k}")
                half = planes // 2
                ref.update({f"{p}.IN.weight": torch.Size([half]), f"{p}.IN.bias": torch.Size([half])})
                for k in bn_keys[:4]:
                    ref[f"{p}.BN.{k}"] = torch.Size([planes - half])
                ref[f"{p}.BN.num_batches_tracked"] = torch.Size([])
    if "_ibn_b" in name:
        for k in bn_keys[2:]:
            ref.pop(f"bn1.{k}")
        for s in range(2):
            last = f"layer{s + 1}.{blocks[s] - 1}"
            ch = ref[f"{last}.bn2.weight" if not BOTTLENECK[_depth(name)] else f"{last}.bn3.weight"]
            ref.update({f"{last}.IN.weight": ch, f"{last}.IN.bias": ch})
    if name.startswith("se_"):
        for s in range(4):
            for i in range(blocks[s]):
                ch = ref[f"layer{s + 1}.{i}.bn3.weight"][0]
                ref[f"layer{s + 1}.{i}.se.fc.0.weight"] = torch.Size([ch // 16, ch])
                ref[f"layer{s + 1}.{i}.se.fc.2.weight"] = torch.Size([ch, ch // 16])
    return ref


@pytest.mark.parametrize("name", RESNETS)
def test_backbone_layout_matches_official(name):
    """IBN placement per the official ibnnet/resnet_ibn.py, the release's exact key->shape map, no dilation at OS 32.

    Structure only, so on the meta device (free); the smp-unet/smp-fpn matrix cells run every backbone at OS 32."""
    with torch.device("meta"):
        bb = M.create_backbone(name)
    _check_ibn_placement(name, bb)
    ours = {k: v.shape for k, v in bb.state_dict().items()}
    assert ours == _expected_official_keys(name)
    assert bb.output_stride == 32
    assert {n for n, m in bb.named_modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)} == set()


@pytest.mark.parametrize("name", ["resnet18_ibn_b", "resnet50_ibn_a"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_keeps_keys_and_sets_strides(name, output_stride):
    bb = M.create_backbone(name, output_stride=output_stride).eval()
    assert set(bb.state_dict()) == set(M.create_backbone(name).state_dict())
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 96))
    assert bb.output_stride == output_stride
    _check_feature_strides(feats, bb.out_channels, (64, 96), output_stride)


def test_ibn_key_examples_resnet50():
    a = M.create_backbone("resnet50_ibn_a").state_dict()
    assert {"layer1.0.bn1.IN.weight", "layer1.0.bn1.BN.running_mean", "layer3.5.bn1.IN.bias"} <= set(a)
    assert "layer4.0.bn1.running_mean" in a and not any(k.startswith("layer4") and ".IN." in k for k in a)
    b = M.create_backbone("resnet50_ibn_b").state_dict()
    assert {"bn1.weight", "bn1.bias", "layer1.2.IN.weight", "layer2.3.IN.weight"} <= set(b)
    assert "bn1.running_mean" not in b and not any(k.startswith(("layer3", "layer4")) and ".IN." in k for k in b)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_plain_backbone_loads_torchvision_weights_and_matches(depth):
    torch.manual_seed(depth)
    dilate = [False, True, True] if BOTTLENECK[depth] else None  # torchvision cannot dilate BasicBlock
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None, **({"replace_stride_with_dilation": dilate} if dilate else {}))
    tv.eval()
    ours = M.create_backbone(f"resnet{depth}", output_stride=8 if dilate else 32).eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    # make running stats non-trivial so the comparison also covers them
    for k, v in state.items():
        if k.endswith("running_var"):
            v.uniform_(0.5, 2.0)
        elif k.endswith("running_mean"):
            v.normal_(0, 0.1)
    tv.load_state_dict(state, strict=False)
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        t = tv.layer4(tv.layer3(tv.layer2(tv.layer1(t))))
        o = ours(x)[3]
    assert o.shape == t.shape
    assert torch.allclose(o, t, atol=1e-5, rtol=1e-4)


# torchvision's published sizes (`ResNet50_Weights.IMAGENET1K_V1.meta["num_params"]` etc., torchvision model docs),
# each with its 1000-class fc: (depth, groups, width_per_group) -> parameters
TORCHVISION_NUM_PARAMS = {
    (18, 1, 64): 11_689_512, (34, 1, 64): 21_797_672, (50, 1, 64): 25_557_032, (101, 1, 64): 44_549_160,
    (50, 32, 4): 25_028_904, (101, 32, 8): 88_791_336, (50, 1, 128): 68_883_240, (101, 64, 4): 83_455_272,
}


def _resnet_params(depth: int, groups: int = 1, width_per_group: int = 64, se_reduction: int | None = None,
                   ibn: str | None = None, classes: int = 0) -> int:
    """Parameters of a torchvision-layout ResNet counted by hand: bias-free convs, 2 per norm channel, bias-free SE fcs.

    IBN-a's IN(half, affine) + BN(rest) holds 2 per channel like the BN it replaces, and IBN-b's stem IN(64, affine)
    like the stem BN: only IBN-b's post-add IN (last block of layer1 and of layer2) adds parameters."""
    n = 3 * 64 * 7 * 7 + 2 * 64  # stem conv1 + bn1
    inplanes, expansion = 64, 4 if BOTTLENECK[depth] else 1
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
        out = planes * expansion
        for i in range(blocks):
            if BOTTLENECK[depth]:
                w = planes * width_per_group // 64 * groups
                n += inplanes * w + 9 * w * w // groups + w * out + 2 * (w + w + out)
            else:
                n += 9 * inplanes * planes + 9 * planes * planes + 2 * (planes + planes)
            if se_reduction:
                n += 2 * out * (out // se_reduction)
            if i == 0 and (stage > 0 or inplanes != out):  # downsample: 1x1 conv + BN
                n += inplanes * out + 2 * out
            if ibn == "b" and stage < 2 and i == blocks - 1:
                n += 2 * out
            inplanes = out
    return n + classes * (inplanes + 1)


def test_parameter_rule_reproduces_torchvision_published_sizes():
    """The hand count must be right before it judges segbench: plain, wide and grouped ResNets as published."""
    for (depth, groups, width), published in TORCHVISION_NUM_PARAMS.items():
        assert _resnet_params(depth, groups, width, classes=1000) == published, (depth, groups, width)


@pytest.mark.parametrize("name", RESNETS)
def test_count_parameters_matches_hand_count(name):
    """Every backbone's size from the rules above (no classifier); on the meta device, so free."""
    kwargs = dict(groups=32, width_per_group=4) if name.startswith("resnext") else {}
    expected = _resnet_params(_depth(name), se_reduction=16 if name.startswith("se_") else None,
                              ibn=name[-1] if "_ibn_" in name else None, **kwargs)
    with torch.device("meta"):
        bb = M.create_backbone(name)
    assert M.count_parameters(bb) == expected
    bb.layer4.requires_grad_(False)
    layer4 = sum(p.numel() for p in bb.layer4.parameters())
    assert layer4 > 0 and M.count_parameters(bb, trainable_only=True) == expected - layer4


def test_cli_lists_backbones_with_counts(capsys):
    from segbench.models.cli import main

    assert main(["resnet18*", "--heads", "fcn"]) == 0
    text = capsys.readouterr().out
    for name in ("resnet18", "resnet18_ibn_a", "resnet18_ibn_b", "fcn"):
        assert name in text
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[2:] if line.strip()}
    assert rows["resnet18"] == rows["resnet18_ibn_a"] == f"{_resnet_params(18) / 1e6:.2f}"
    assert "resnet50" not in text.split("head")[0]
    assert main(["nothing*"]) == 2  # a pattern that matches nothing is a bad input (errors.py)


def test_cli_says_which_official_weights_are_in_the_hub_cache_and_where(tmp_path, monkeypatch, capsys):
    """`segbench models` names each backbone's ImageNet file, whether it is where the study will look, and where."""
    from segbench.models.cli import main
    from segbench.models.pretrained import cache_path, imagenet_url

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    present = cache_path(imagenet_url("resnet18_ibn_b"))
    present.parent.mkdir(parents=True)
    present.write_bytes(b"weights")
    assert main(["resnet18*", "--heads", "fcn"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[3:] for line in text.splitlines() if line.startswith("resnet18")}
    assert rows["resnet18_ibn_b"] == [present.name, "yes"]
    assert rows["resnet18"] == [cache_path(imagenet_url("resnet18")).name, "no"]
    assert rows["resnet18_ibn_a"][1] == "no" and rows["resnet18_ibn_a"][0].startswith("resnet18_ibn_a-")
    assert str(tmp_path / "hub" / "checkpoints") in text and "TORCH_HOME" in text


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50_ibn_a", "vit_debug_p16"])
def test_the_mask2former_head_trains_and_predicts_on_each_backbone_family(backbone):
    """Its training outputs feed its own loss, every trainable parameter gets a gradient, and inference gives
    per-pixel scores at the input size; an aux head is refused (it supervises every decoder layer itself)."""
    pytest.importorskip("transformers")
    from segbench.engine.train import model_loss

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="set model.aux false"):
        _build(backbone, "mask2former", num_classes=5, aux=True)
    model = _build(backbone, "mask2former", num_classes=5, aux=False).train()
    out = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, 5, (2, 64, 64))
    target[:, :8] = 255
    loss = model_loss(model, out, target, aux_weight=0.4)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 80))
    assert set(out) == {"out"} and out["out"].shape == (1, 5, 48, 80)
