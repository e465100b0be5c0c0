"""`robustnet-deeplabv3plus` against RobustNet's DeepR50V3PlusD rebuilt here from its source (shachoi/RobustNet
`network/deepv3.py` DeepV3Plus and _AtrousSpatialPyramidPoolingModule, `network/mynn.py` Upsample and
initialize_weights): torchvision's ResNet-50 dilated the way its variants D16 / D do, and the decoder typed in."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segbench.models import create_model


def robustnet_upsample(x, size):  # mynn.Upsample
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def cbr(cin, cout, k, dilation=1):
    return [nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ReferenceASPP(nn.Module):
    def __init__(self, in_dim, output_stride, rates=(6, 12, 18)):
        super().__init__()
        rates = {8: [2 * r for r in rates], 16: list(rates), 32: [r // 2 for r in rates]}[output_stride]
        self.features = nn.ModuleList([nn.Sequential(*cbr(in_dim, 256, 1))] +
                                      [nn.Sequential(*cbr(in_dim, 256, 3, r)) for r in rates])
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(*cbr(in_dim, 256, 1))

    def forward(self, x):
        out = robustnet_upsample(self.img_conv(self.img_pooling(x)), x.shape[2:])
        for f in self.features:
            out = torch.cat((out, f(x)), 1)
        return out


class ReferenceDeepV3Plus(nn.Module):
    """torchvision's ResNet-50 as RobustNet's `variant` loop leaves it, and RobustNet's decoder."""

    def __init__(self, num_classes, output_stride):
        super().__init__()
        resnet = torchvision.models.resnet50()
        self.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        dilate = {16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}, 32: {}}[output_stride]
        for layer, d in dilate.items():
            for n, m in getattr(self, layer).named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        self.aspp = ReferenceASPP(2048, output_stride)
        self.bot_fine = nn.Sequential(*cbr(256, 48, 1))
        self.bot_aspp = nn.Sequential(*cbr(1280, 256, 1))
        self.final1 = nn.Sequential(*cbr(304, 256, 3), *cbr(256, 256, 3))
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, 1, bias=True))

    def forward(self, x):
        low_level = self.layer1(self.layer0(x))
        x_deep = self.layer4(self.layer3(self.layer2(low_level)))
        dec0_up = robustnet_upsample(self.bot_aspp(self.aspp(x_deep)), low_level.shape[2:])
        dec0 = torch.cat([self.bot_fine(low_level), dec0_up], 1)
        return robustnet_upsample(self.final2(self.final1(dec0)), x.shape[2:])


def segbench_state_for_reference(model) -> dict:
    """segbench's keys in RobustNet's names: the backbone's are torchvision's, the head's RobustNet's own."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            for stem, ref in (("conv1.", "layer0.0."), ("bn1.", "layer0.1.")):
                key = ref + key[len(stem):] if key.startswith(stem) else key
        else:
            key = key[len("head."):]
        state[key] = value
    return state


@pytest.mark.parametrize("output_stride", [16, 8])
def test_the_network_is_robustnets_deepv3plus(output_stride):
    """Same weights, same input: the logits of segbench's network equal the reference's, and every state-dict key of
    the reference (RobustNet's names) is filled from segbench's, so none is missing or extra."""
    torch.manual_seed(0)
    model = create_model("resnet50", "robustnet-deeplabv3plus", num_classes=5, output_stride=output_stride).eval()
    with torch.no_grad():  # running statistics away from 0/1, so BatchNorm's eval path matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    reference = ReferenceDeepV3Plus(5, output_stride).eval()
    reference.load_state_dict(segbench_state_for_reference(model), strict=True)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        ours, theirs = model(x)["out"], reference(x)
    assert ours.shape == (1, 5, 65, 97)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_layer4_of_the_plain_deeplabv3plus_keeps_torchvisions_dilation():
    """The other head is left alone: RobustNet's rule applies to this head's backbone only."""
    plain = create_model("resnet50", "deeplabv3plus")
    robust = create_model("resnet50", "robustnet-deeplabv3plus")
    assert [b.conv2.dilation for b in plain.backbone.layer4] == [(1, 1), (2, 2), (2, 2)]
    assert [b.conv2.dilation for b in robust.backbone.layer4] == [(2, 2), (2, 2), (2, 2)]
    assert not any(isinstance(m, nn.Dropout) for m in robust.head.modules())


def test_decoder_is_initialised_like_robustnet():
    """initialize_weights: Kaiming-normal (fan-in, gain sqrt(2)) convs, zero biases, BatchNorm 1 / 0. The std of
    final1's first conv (256 x 304 x 3 x 3 draws) must be sqrt(2 / fan_in) within 2%."""
    torch.manual_seed(0)
    head = create_model("resnet50", "robustnet-deeplabv3plus").head
    conv = head.final1[0]
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    assert torch.count_nonzero(head.final2[0].bias) == 0
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_a_basic_block_backbone_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="BasicBlock.*ResNet-50/101"):
        create_model("resnet18", "robustnet-deeplabv3plus")
